"""infra/gpu-train-tiny.sh on a CPU (TRAIN_DEVICE=cpu) at a tiny size: both variants train and come back packed,
in pieces that rebuild the two checkpoints with their own flags."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sparsevlm.tiny import CHECKPOINT_DIR

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "gpu-train-tiny.sh"


@pytest.mark.slow  # two 4-layer training processes with loader processes: about 20 s
def test_two_variants_train_side_by_side_and_come_back_packed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(tmp_path / "none"), "TRAIN_DEVICE": "cpu"}
    common = ["--max-steps", "1", "--batch-size", "2", "--val-videos", "2", "--test-videos", "2"]
    common += ["--warm-fraction", "0", "--warm-frames", "8", "--loader-workers", "1", "--eval-every-minutes", "100"]
    result = subprocess.run(
        [str(SCRIPT), str(out), str(CHECKPOINT_DIR), "1", "--look-layers 1", "--look-layers 1,2", *common],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pieces = sorted(out.glob("runs.tar.gz.*"))
    assert pieces and all(p.stat().st_size <= 15 * 2**20 for p in pieces)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in pieces)), mode="r:gz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    for run, layers in (("a", "1"), ("b", "1,2")):
        folder = tmp_path / "back" / "runs" / run
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["final"] and metrics["steps"] == 1
        assert metrics["train_config"]["look_layers"] == layers and metrics["train_config"]["device"] == "cpu"
        assert (folder / "model.safetensors").is_file() and (folder / "train.log").is_file()
