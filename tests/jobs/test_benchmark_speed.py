"""`python -m jobs.benchmark speed` at tiny widths (proves the command; measures nothing meaningful)."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.benchmark import main
from sparsevlm.bench.speed import SpeedLayout, full_depth_config


def test_presets_run_their_full_depth_schedule_at_reduced_depth() -> None:
    cfg = full_depth_config("video-10", SpeedLayout())
    assert cfg.mode == "budget" and cfg.prune_layers == (1,) and cfg.keep_tokens == (86,)


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
