"""`python -m jobs.benchmark speed` at tiny widths (proves the command; measures nothing meaningful)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from sparsevlm.bench.speed import SpeedLayout, block_sizes, full_depth_config, reduced_config
from sparsevlm.config import SparseConfig


def test_presets_run_their_full_depth_schedule_at_reduced_depth() -> None:
    layout = SpeedLayout()
    cfg = full_depth_config("video-10", layout)
    expected = SparseConfig.preset("video-10").schedule(layout.full_depth, layout.n_visual)
    assert cfg.mode == "budget" and cfg.prune_layers == (0, 2, 6, 15) == tuple(expected)
    assert cfg.keep_tokens == tuple(expected.values()) and cfg.layers_of is None  # as written: runs at any depth
    one_step = full_depth_config("video-onestep-10", layout)
    assert one_step.prune_layers == (1,) and one_step.keep_tokens == (86,)


@pytest.mark.slow  # 9 s here (2 cores): prefills in fresh processes
def test_speed_command_tiny(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    main(["speed", "--tiny", "--repeats", "1", "--dtypes", "float32", "--presets", "video-10", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = {r["preset"]: r for r in report["results"]}
    assert set(rows) == {"dense", "video-10"}
    assert rows["dense"]["time_ratio"] == 1.0
    assert rows["video-10"]["kv_ratio"] < 1.0
    assert rows["video-10"]["flops_ratio"] < 1.0
    assert "peak_rss_mib" in rows["video-10"]


def test_a_progressive_schedule_compresses_to_one_reduced_layer_per_block() -> None:
    full = SparseConfig(prune_layers=(0, 2, 6, 15), keep_tokens=(800, 400, 200, 80))
    reduced = reduced_config(full)
    assert reduced.prune_layers == (0, 1, 2, 3) and reduced.keep_tokens == full.keep_tokens
    assert block_sizes(full, 32) == [1, 2, 4, 9, 16]  # layers 0 | 1-2 | 3-6 | 7-15 | 16-31
    assert block_sizes(SparseConfig(prune_layers=(1,), keep_tokens=(86,)), 32) == [2, 30]
    assert block_sizes(SparseConfig.preset("dense"), 32) == [32]
