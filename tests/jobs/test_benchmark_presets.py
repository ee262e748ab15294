"""`python -m jobs.benchmark presets`: the preset cost table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main


def test_presets_table_on_the_video_llava_7b_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "presets.json"
    main(["presets", "--out", str(out)])
    rows = {r["preset"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["dense"]["flops_ratio"] == 1.0
    for name, fraction in [("video-50", 0.5), ("video-25", 0.25), ("video-10", 0.10), ("video-5", 0.05)]:
        assert abs(rows[name]["fraction"] - fraction) <= 0.02
        assert rows[name]["flops_ratio"] < 1.0
    # Fewer tokens, fewer FLOPs.
    ratios = [rows[n]["flops_ratio"] for n in ("video-50", "video-25", "video-10", "video-5")]
    assert ratios == sorted(ratios, reverse=True)
    assert "video-10" in capsys.readouterr().out


def test_presets_skips_presets_the_layout_cannot_run(tmp_path: Path) -> None:
    out = tmp_path / "presets.json"
    main(["presets", "--layers", "4", "--visual", "520", "--hidden", "128", "--ffn", "384", "--out", str(out)])
    names = [r["preset"] for r in json.loads(out.read_text())["results"]]
    assert "llava-64" not in names  # prunes at layer 15
    assert "video-10" in names
