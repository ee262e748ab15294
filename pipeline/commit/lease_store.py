"""Where a lease lives: one object with versioned, conditional writes, on local disk or S3. No Ray.

:class:`Store` is what pipeline/commit/lease.py needs, and the ledger's ``_ledger/_epoch``
(pipeline/commit/ledger_index.py): read (content and version, never from a client's cache), create if absent, replace if
still at a version, delete if still at a version; a failed condition answers ``None`` (or, for delete, leaves the
object). Locally every write holds an ``flock`` of the object's folder and the version is the content's SHA-256; on S3
they are conditional requests (``If-None-Match: *``, ``If-Match`` on PutObject and DeleteObject) and the version is the
ETag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import pyarrow.fs as pafs
from fsspec.asyn import sync

from pipeline.commit.ledger_files import fsspec_of

__all__ = ["Store", "lease_store"]


class Store(Protocol):
    """One lease object with versioned conditional writes; ``None`` means the condition failed."""

    def read(self) -> tuple[bytes, str] | None: ...
    def create(self, data: bytes) -> str | None: ...
    def replace(self, data: bytes, version: str) -> str | None: ...
    def delete(self, version: str) -> None: ...


def lease_store(filesystem: pafs.FileSystem, path: str) -> Store:
    """The lease object at ``path`` of ``filesystem`` (a local folder, or S3 through s3fs)."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return _LocalLease(path)
    s3 = fsspec_of(filesystem)
    if s3 is not None and any(cls.__name__ == "S3FileSystem" for cls in type(s3).__mro__):  # s3fs, or a subclass
        return _S3Lease(s3, path)
    raise ValueError(
        f"no atomic create-if-absent for a lease on {type(filesystem).__name__}; outputs must be a local folder or s3://"
    )


class _LocalLease:
    """The lease as a local file; every write holds an ``flock`` of its folder."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.made_folder = False  # the output folder did not exist: a run that wrote nothing removes it again

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = os.path.dirname(self.path)
        while True:
            if not os.path.isdir(folder):
                os.makedirs(folder, exist_ok=True)
                self.made_folder = True
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # a holder that made the folder removes it on release: lock the folder that is there now
                current = os.stat(folder).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)  # releases the flock

    def read(self) -> tuple[bytes, str] | None:
        return self._read()  # no lock: writes replace or link whole files, so a read sees one version whole

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def create(self, data: bytes) -> str | None:
        with self._locked():
            tmp = f"{self.path}.{uuid.uuid4().hex[:12]}.tmp"
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, self.path)  # atomic, and fails if the lease exists
                except FileExistsError:
                    return None
            finally:
                os.unlink(tmp)
            return hashlib.sha256(data).hexdigest()

    def replace(self, data: bytes, version: str) -> str | None:
        with self._locked():
            found = self._read()
            if found is None or found[1] != version:
                return None
            tmp = f"{self.path}.{uuid.uuid4().hex[:12]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return hashlib.sha256(data).hexdigest()

    def delete(self, version: str) -> None:
        with self._locked():
            found = self._read()
            if found is not None and found[1] == version:
                os.unlink(self.path)
            if self.made_folder:  # under the lock: a driver waiting for it locks the folder anew (_locked)
                with contextlib.suppress(OSError):  # not empty: the run wrote something
                    os.rmdir(os.path.dirname(self.path))


class _S3Lease:
    """The lease as an S3 object; conditional PUT/DELETE through s3fs's botocore client."""

    def __init__(self, s3: Any, path: str) -> None:
        self.s3 = s3
        self.bucket, self.key = path.split("/", 1)

    def read(self) -> tuple[bytes, str] | None:
        try:
            response = self.s3.call_s3("get_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        body = response["Body"]
        data = sync(self.s3.loop, body.read)
        body.close()
        return data, str(response["ETag"])

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")  # a missing bucket raises FileNotFoundError: no lease can exist

    def replace(self, data: bytes, version: str) -> str | None:
        try:
            return self._put(data, IfMatch=version)
        except FileNotFoundError:
            return None  # the lease is gone

    def delete(self, version: str) -> None:
        """Delete the lease if it is still ``version``: ``If-Match`` on DeleteObject, which AWS S3 evaluates
        (412 Precondition Failed on another ETag, 409 Conflict if a PUT races it; it needs s3:GetObject as well
        as s3:DeleteObject); a 412 or 409 means another run holds it now, and it stays."""
        try:
            self.s3.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except FileNotFoundError:
            return
        except OSError as err:
            if not _precondition_failed(err):
                raise

    def _put(self, data: bytes, **condition: str) -> str | None:
        try:
            response = self.s3.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except FileExistsError:
            return None  # If-None-Match: the lease exists
        except OSError as err:
            if _precondition_failed(err):
                return None  # If-Match: another version
            raise
        return str(response["ETag"])


def _precondition_failed(err: OSError) -> bool:
    """Whether s3fs's error is a failed condition: 412, or 409 ConditionalRequestConflict (22 = EINVAL, s3fs's
    code for 412)."""
    return "Precondition" in str(err) or "ConditionalRequestConflict" in str(err) or err.errno == 22
