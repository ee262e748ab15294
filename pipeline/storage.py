"""Which storage errors are worth retrying. No Ray here.

Object-storage clients raise many types for one failure: botocore's ``ClientError`` (with the HTTP status and
S3 error code), s3fs's translation of it into an ``OSError`` subclass (the ``ClientError`` kept as its
``__cause__``), botocore's and aiohttp's connection errors, plain ``TimeoutError``. :func:`storage_failure`
reads through them to one answer:

- transient (5xx, throttling, timeouts, dropped connections): raise :class:`TransientIOError`; the decode
  stage's Ray tasks retry exactly this type (``retry_exceptions`` in ``pipeline/build.py``), a bounded number
  of times, on top of the client's own retries with backoff inside each attempt;
- permanent (403 / 401 AccessDenied, 404 NoSuchKey / NoSuchBucket, other 4xx): an answer a retry would not
  change; the decode stage turns it into an error row and the run goes on.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Literal

__all__ = ["TransientIOError", "http_status", "storage_failure"]

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
