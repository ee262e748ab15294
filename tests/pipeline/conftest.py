"""Session fixtures of the pipeline tests: a saved tiny Video-LLaVA, test videos with a broken one, local Ray."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    """One local Ray for the session: 2 CPUs, no dashboard, loopback only, a short temp dir (unix sockets)."""
    for name, value in {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(name, value)
    import ray
    import ray.data

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
