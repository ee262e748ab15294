"""`python -m jobs.benchmark shots`: the decode cost of segmenting by shots against fixed segments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main


def test_the_shots_benchmark_reports_both_modes_per_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shots.json"
    main(["shots", "--out", str(out), "--real", "1", "--repeats", "1", "--frame-size", "32"])
    report = json.loads(out.read_text())
    (clip,) = report["clips"]
    assert clip["video"] == "decord_flipping_a_pancake.mkv" and clip["decoder"] == "decord"
    assert clip["fixed_segments"] == clip["shot_segments"] == 1  # 10.3 s, one take
    assert clip["shots_cpu_s"] > 0 and clip["fixed_cpu_s"] > 0
    assert clip["ratio"] == pytest.approx(clip["shots_cpu_s"] / clip["fixed_cpu_s"])
    assert report["shots"]["threshold"] == 40.0 and report["total"]["minutes"] == pytest.approx(10.333 / 60, abs=1e-3)
    assert "shots_cpu_s" in capsys.readouterr().out
