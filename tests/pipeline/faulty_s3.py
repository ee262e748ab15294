"""A fault-injecting HTTP proxy in front of the test S3 server, on 127.0.0.1 only.

Requests pass through to the moto server unchanged, except those for an object with a fault: they get the
chosen HTTP status and an S3 error document instead, the first ``times`` requests (or all of them). Status
200 is a swallowed request: an empty ``DeleteResult`` that deletes nothing, which is what a DeleteObjects
request whose keys were all refused looks like to s3fs (it ignores per-key errors). Every request's path is
counted, so a test can tell how often a client (and Ray) really retried. A fault path ending in ``*`` covers
every object whose path starts with the rest (the part files of an output, whose names hold hashes).
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "ServiceUnavailable"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    status: int
    times: int | None  # None: every request
    method: str | None  # None: every method


class FaultyS3:
    """The proxy's state: faults by object path (``/bucket/key``) and the count of requests per path."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: dict[str, Fault] = {}
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.url = ""

    def fail(self, path: str, status: int, times: int | None = None, method: str | None = None) -> None:
        """Answer requests for ``/bucket/key`` (or every key below ``/bucket/prefix*``) with ``status``: the
        next ``times`` ones, or all (None); only those with HTTP ``method`` if given."""
        with self.lock:
            self.faults[path] = Fault(status, times, method)

    def take_fault(self, path: str, method: str) -> int | None:
        with self.lock:
            self.requests[path] += 1
            fault = self.faults.get(path) or next(
                (f for p, f in self.faults.items() if p.endswith("*") and path.startswith(p[:-1])), None
            )
            if fault is None or fault.times == 0 or fault.method not in (None, method):
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault.status


def _handler(state: FaultyS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status = state.take_fault(unquote(urlsplit(self.path).path), self.command)
            if status is not None:
                code = _CODES.get(status, str(status))
                error = f"<Error><Code>{code}</Code><Message>injected {status}</Message></Error>".encode()
                if status == 200:
                    error = b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>'

                payload = b"" if self.command == "HEAD" else error
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(error) if self.command != "HEAD" else 0))
                self.end_headers()
                self.wfile.write(payload)
                return
            upstream = http.client.HTTPConnection(*state.upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            # A HEAD answer's length is the object's size (botocore reads it), not that of the empty body.
            head_length = response.getheader("Content-Length", "0")
            self.send_header("Content-Length", head_length if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    return Handler


@contextmanager
def faulty_s3(upstream: str) -> Iterator[FaultyS3]:
    """Run the proxy in a thread for the block; yields its state (``.url`` is the endpoint to use)."""
    state = FaultyS3(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
