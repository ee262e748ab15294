"""`python -m jobs.benchmark syncs`: the JSON it writes shows a batch-independent prefill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main


@pytest.mark.slow  # 6 s here (2 cores): two presets at two batch sizes
def test_syncs_command_counts_each_preset_and_batch(tmp_path: Path) -> None:
    out = tmp_path / "syncs.json"
    main(["syncs", "--out", str(out), "--batches", "2", "3", "--presets", "dense", "video-25"])
    rows = json.loads(out.read_text())["results"]
    assert [(r["preset"], r["batch"]) for r in rows] == [("dense", 2), ("dense", 3), ("video-25", 2), ("video-25", 3)]
    for preset in ("dense", "video-25"):
        counts = {r["batch"]: r["syncs"] for r in rows if r["preset"] == preset}
        assert counts[2] == counts[3] > 0  # batch 1 has no padding: transformers checks the mask once less
