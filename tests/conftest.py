"""Fixtures shared across the test tree: real test videos and a local S3-compatible server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"

# Dummy credentials: moto accepts any, but botocore refuses to sign requests without some.
S3_KEY = "testing"
S3_SECRET = "testing"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The folder of real test videos (see tests/assets/SOURCES.md)."""
    return ASSETS


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (random free port) for the whole session; yields its endpoint URL.

    Credentials and the region are set in the environment only while the fixture is active, and requests to
    loopback bypass any proxy. Clients should still pass `key=S3_KEY, secret=S3_SECRET` explicitly.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()
