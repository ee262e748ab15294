"""`python -m jobs.benchmark long`: 32 frames under the 8-frame budget vs 8 uniform frames (tiny size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from sparsevlm.bench.long import long_items, long_runs


def test_items_ask_about_the_brief_object_and_an_absent_one() -> None:
    items = long_items(seed=0, videos=3)
    assert [it.kind for it in items].count("brief") == 3 and [it.kind for it in items].count("absent") == 3
    assert all(it.frames.shape[0] == 32 for it in items)
    assert {it.answer for it in items if it.kind == "brief"} == {"yes"}


def test_the_uniform_run_gets_the_long_presets_budget() -> None:
    runs = long_runs("video-long")
    assert runs["uniform-8"][0].target_fraction == runs["long-32"][0].target_fraction
    assert runs["long-32"][0].budget_frames == 8 and runs["long-32"][1] and not runs["uniform-8"][1]
    with pytest.raises(ValueError, match="has no target fraction"):
        long_runs("video-rank")


@pytest.mark.slow  # 9 s here (2 cores): the long-video benchmark at its tiny size
def test_long_command(tmp_path: Path) -> None:
    out = tmp_path / "long.json"
    main(["long", "--out", str(out), "--videos", "2", "--batch-size", "4"])
    rows = {r["run"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"dense-8", "uniform-8", "long-32", "dense-32"}
    assert rows["dense-8"]["flops_ratio"] == 1.0
    assert rows["dense-32"]["flops_ratio"] > 3  # four times the frames
    assert rows["long-32"]["equivalent_tokens"] <= 0.3 * rows["dense-8"]["equivalent_tokens"]
    assert rows["uniform-8"]["equivalent_tokens"] == pytest.approx(0.25 * 520, rel=0.05)
