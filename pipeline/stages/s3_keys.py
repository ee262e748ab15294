"""An s3fs filesystem that reads object keys literally. No Ray here.

s3fs cuts every path at ``?versionId=`` (``split_path``) and reads the rest as an object version, so the listed
key ``names/x?versionId=1.webm`` would be read from the object ``names/x``, another object. S3 keys may hold
any character; the pipeline pins versions by ETag (pipeline/stages/storage.py), never by a suffix of the key, so this
subclass keeps the whole key.
"""

from __future__ import annotations

import s3fs

__all__ = ["LiteralKeyS3FileSystem"]


class LiteralKeyS3FileSystem(s3fs.S3FileSystem):
    """``s3fs.S3FileSystem`` whose keys are taken as written: ``?``, ``#`` and ``?versionId=`` are key text."""

    def split_path(self, path: str) -> tuple[str, str, str | None]:
        trail = path[len(path.rstrip("/")) :]
        path = self._strip_protocol(path).lstrip("/")
        if "/" not in path:
            return path, "", None
        bucket, key = self._find_bucket_key(path)  # access point and outpost ARNs included
        return bucket, key + trail, None
