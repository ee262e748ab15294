"""Reading input objects: which storage errors are worth retrying, and a bounded local copy. No Ray here.

Object-storage clients raise many types for one failure: botocore's ``ClientError`` (with the HTTP status and
S3 error code), s3fs's translation of it into an ``OSError`` subclass (the ``ClientError`` kept as its
``__cause__``), botocore's and aiohttp's connection errors, plain ``TimeoutError``. :func:`storage_failure`
reads through them to one answer:

- transient (5xx, throttling, timeouts, dropped connections): raise :class:`TransientIOError`; the decode
  stage's Ray tasks retry exactly this type (``retry_exceptions`` in ``pipeline/build.py``), a bounded number
  of times, on top of the client's own retries with backoff inside each attempt;
- permanent (403 / 401 AccessDenied, 404 NoSuchKey / NoSuchBucket, other 4xx): an answer a retry would not
  change; the decode stage turns it into an error row and the run goes on.

`s3_filesystem` and `arrow_filesystem` build the filesystems of a run from its endpoint and options.
`open_local_copy` gives the decoders a local path for an object: a temporary copy, streamed in chunks, stopped
past ``max_bytes`` and past the deadline, whose failures come out classified (an error row, or a retry).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import fsspec
import pyarrow.fs as pafs

from pipeline.error_lines import short_error
from pipeline.stages.video import (
    DEFAULT_MAX_BYTES,
    AccessDenied,
    DecodeError,
    MissingMedia,
    SourceChanged,
    StorageRefused,
    TooLarge,
    check_deadline,
)

__all__ = [
    "TransientIOError",
    "arrow_filesystem",
    "http_status",
    "local_path",
    "open_local_copy",
    "s3_filesystem",
    "storage_failure",
]

# S3 error codes that mean "later", whatever the status (some stores send throttling as 400 or 403).
_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "503",
        "500",
    }
)
# errno values of an I/O failure that another attempt may not see (s3fs maps 5xx to EIO, EBUSY, EREMOTEIO).
_RETRY_ERRNOS = frozenset(
    {errno.EIO, errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE}
    | {getattr(errno, "EREMOTEIO", errno.EIO)}
)

Failure = Literal["transient", "denied", "missing", "refused"]


def s3_filesystem(endpoint_url: str | None, options: Mapping[str, Any]) -> Any:
    """An s3fs filesystem for ``endpoint_url`` (None: AWS) with extra s3fs ``options`` (credentials among
    them), without a listing cache: the ledger lists markers that other processes write during the run. Keys are
    literal (``?``, ``#``, ``?versionId=``: pipeline/stages/s3_keys.py)."""
    from pipeline.stages.s3_keys import LiteralKeyS3FileSystem  # s3fs is imported only by runs that use S3

    settings = {"use_listings_cache": False, **options}
    if endpoint_url:
        settings["endpoint_url"] = endpoint_url
    return LiteralKeyS3FileSystem(**settings)


def arrow_filesystem(uri: str, s3: Any = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path of ``uri``: a local path or file:// URI when ``s3`` is None, else
    an s3:// URI read through the fsspec filesystem ``s3`` (one set of endpoint and credential options)."""
    if s3 is None:  # a plain path is a path: "#", "?", "%41", spaces and any other character are literal
        return pafs.LocalFileSystem(), local_path(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(s3)), uri.removeprefix("s3://").rstrip("/")


def local_path(location: str) -> str:
    """The absolute local path of a plain path (taken literally) or of a ``file://`` URI (percent-decoded)."""
    if location.startswith("file://"):
        return os.path.abspath(unquote(urlsplit(location).path))
    return os.path.abspath(os.path.expanduser(location))


class TransientIOError(OSError):
    """A storage request failed in a way another attempt may not (5xx, throttling, a dropped connection);
    the decode task that raises it is retried by Ray (bounded by ``PipelineConfig.io_retries``)."""


def storage_failure(err: BaseException) -> Failure | None:
    """Classify an exception raised by a storage client.

    Returns:
        ``"transient"`` (retry), ``"denied"`` (401/403), ``"missing"`` (404 or FileNotFoundError),
        ``"refused"`` (another 4xx), or None when ``err`` is not recognisably a storage failure.
    """
    status, code = http_status(err)
    if code in _RETRY_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return "transient"
    if status in (401, 403):
        return "denied"
    if status == 404:
        return "missing"
    if status is not None and 400 <= status < 500:
        return "refused"
    for cause in _chain(err):
        if _connection_failure(cause):
            return "transient"
    if isinstance(err, PermissionError):
        return "denied"
    if isinstance(err, FileNotFoundError):
        return "missing"
    if isinstance(err, OSError) and err.errno in _RETRY_ERRNOS:
        return "transient"
    return None


def http_status(err: BaseException) -> tuple[int | None, str | None]:
    """``(HTTP status, S3 error code)`` of the first botocore ``ClientError`` in ``err``'s cause chain."""
    for cause in _chain(err):
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and ("Error" in response or "ResponseMetadata" in response):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            return (int(status) if status is not None else None), (str(code) if code is not None else None)
    return None, None


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _connection_failure(err: BaseException) -> bool:
    if isinstance(err, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - botocore is a dependency of s3fs
        return False
    if isinstance(err, (BotoConnectionError, HTTPClientError)):
        return True
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, (ClientConnectionError, ClientPayloadError))


# ---------------------------------------------------------------------------------------------------------
# A bounded local copy of an object


@contextlib.contextmanager
def open_local_copy(
    uri: str,
    filesystem: Any = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    chunk_bytes: int = 8 * 2**20,
    tmp_dir: str | None = None,
    deadline: float | None = None,
    etag: str | None = None,
) -> Iterator[str]:
    """Yield a local path for `uri`, streaming remote objects into a temporary file chunk by chunk.

    Local paths and file:// URIs are yielded as they are. Other URIs (s3://...) are copied through
    `filesystem` (an fsspec filesystem, e.g. `s3fs.S3FileSystem(endpoint_url=...)`; default
    `fsspec.filesystem(scheme)`) into a temp file that keeps the extension and is deleted on exit. Never holds
    the whole object in memory.

    Args:
        uri: Local path, file:// URI or any fsspec URI.
        filesystem: fsspec filesystem for remote URIs.
        max_bytes: Raise `TooLarge` before downloading a larger object (None disables).
        chunk_bytes: Copy buffer size.
        tmp_dir: Directory for the temporary copy (default: the system temp dir).
        deadline: From `deadline_after`; a copy still running past it stops with `Timeout`.
        etag: The ETag the listing saw (no quotes): the copy is of that version or raises `SourceChanged`
            (s3fs reads every range of an open object with ``IfMatch`` on the ETag of its own HEAD, which is
            compared with this one first).
    """
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        local = unquote(parts.path) if parts.scheme == "file" else uri
        if not os.path.isfile(local):
            raise MissingMedia(f"{uri}: no such file")
        yield local
        return
    fs = filesystem if filesystem is not None else fsspec.filesystem(parts.scheme)
    try:
        nbytes = int(fs.size(uri))
    except Exception as err:
        mapped = _storage_error(uri, err)
        if mapped is None:
            raise
        raise mapped from err
    if max_bytes is not None and nbytes > max_bytes:
        raise TooLarge(f"{uri}: {nbytes} bytes exceed max_bytes={max_bytes}; raise max_bytes to process it")
    suffix = PurePosixPath(parts.path).suffix
    suffix = suffix if len(suffix) <= 16 else ""  # an object key's "extension" may be too long for a file name
    fd, local = tempfile.mkstemp(suffix=suffix, prefix="decode-", dir=tmp_dir)
    try:
        try:
            with os.fdopen(fd, "wb") as dst, fs.open(uri, "rb", block_size=chunk_bytes) as src:
                opened = str(getattr(src, "details", {}).get("ETag") or "").strip('"')
                if etag and opened and opened != etag:
                    raise SourceChanged(
                        f"{uri}: changed after it was listed (ETag {etag} -> {opened}); its rows would name the "
                        "listed version, so none are kept: a rerun processes the new version"
                    )
                _copy_bounded(src, dst, chunk_bytes, max_bytes, uri, deadline)
        except DecodeError:
            raise
        except Exception as err:
            if type(err).__name__ == "FileExpired" or http_status(err)[0] == 412:  # IfMatch failed mid-copy
                raise SourceChanged(
                    f"{uri}: changed while it was read ({short_error(err)}); a rerun processes the new version"
                ) from err
            mapped = _storage_error(uri, err)
            if mapped is None:
                raise
            raise mapped from err
        yield local
    finally:
        os.unlink(local)


def _copy_bounded(
    src: Any, dst: Any, chunk_bytes: int, max_bytes: int | None, uri: str, deadline: float | None
) -> None:
    """Copy in chunks, stopping with `TooLarge` past ``max_bytes`` (an object that grew after its size was
    read) and with `Timeout` past the deadline."""
    copied = 0
    while chunk := src.read(chunk_bytes):
        check_deadline(uri, deadline)
        copied += len(chunk)
        if max_bytes is not None and copied > max_bytes:
            raise TooLarge(f"{uri}: more than max_bytes={max_bytes} bytes; raise max_bytes to process it")
        dst.write(chunk)


def _storage_error(uri: str, err: BaseException) -> Exception | None:
    """The error to raise for a failed read of ``uri``: retried (`TransientIOError`), an error row
    (`AccessDenied`, `MissingMedia`, `StorageRefused`), or None to re-raise ``err`` as it is."""
    kind = storage_failure(err)
    status, code = http_status(err)
    err_text = short_error(err) if status is None else f"HTTP {status} {code or ''}".strip() + f", {short_error(err)}"
    if kind == "transient":
        return TransientIOError(f"{uri}: {err_text}")
    if kind == "denied":
        return AccessDenied(f"{uri}: access denied ({err_text}); grant the run's credentials read access to it")
    if kind == "missing":
        return MissingMedia(f"{uri}: no such object")
    if kind == "refused":
        return StorageRefused(f"{uri}: the storage refused the request ({err_text})")
    return None
