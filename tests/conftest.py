"""Shared fixtures: real test videos, a local S3-compatible server, a saved tiny model, local Ray."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"

# Set before any test module imports Ray: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import, and
# without "0" it moves 127.0.0.1 to the machine's network address (environment.md §4). `make test` exports
# the same; this keeps a bare `pytest` on loopback too.
for _name, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

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


# Three containers and codecs: Matroska/H.264 (10.4 s), AVI/MPEG-4 Part 2 (6.6 s), WebM/VP9 (5.0 s).
PIPELINE_CLIPS = ("decord_flipping_a_pancake.mkv", "mmaction2_test.avi", "gradio_video_sample.webm")
BROKEN_CLIP = "broken_truncated.mp4"


@pytest.fixture(scope="session")
def pipeline_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Video-LLaVA (the bundled trained one if present, else untrained) saved as a checkpoint dir."""
    import torch

    from sparsevlm.tiny.loading import load_tiny

    torch.manual_seed(0)
    model, tokenizer, _ = load_tiny()
    path = tmp_path_factory.mktemp("pipeline-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pipeline_videos(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with three real clips and one MP4 cut after 20 kB (its index is missing: CorruptMedia)."""
    folder = tmp_path_factory.mktemp("videos")
    for name in PIPELINE_CLIPS:
        shutil.copy(assets / name, folder / name)
    (folder / BROKEN_CLIP).write_bytes((assets / "moviepy_fire2.mp4").read_bytes()[:20_000])
    return folder


@pytest.fixture(scope="session")
def pipeline_ray() -> Iterator[None]:
    """One local Ray for the session: 2 CPUs, 4 stand-in accelerators, no dashboard, loopback only, a short temp
    dir (unix sockets)."""
    import ray
    import ray.data

    from pipeline.harness.standin import STAND_IN_RESOURCE

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        num_cpus=2,
        resources={
            STAND_IN_RESOURCE: 4
        },  # stand-in accelerators (pipeline/harness/standin.py) for the tests that use them
        include_dashboard=False,
        _temp_dir=temp_dir,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def standin_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in of the ``LanguageBind/Video-LLaVA-7B-hf`` checkpoint folder (see ``tests/standin_7b.py``)."""
    from tests.standin_7b import build_standin

    return build_standin(tmp_path_factory.mktemp("standin-7b"))
