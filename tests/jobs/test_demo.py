"""`make demo` (jobs.demo) runs end to end and prints answers and costs."""

from __future__ import annotations

import pytest

from jobs.demo import DemoArgs, main, parse_args


def test_demo_prints_answers_and_costs(capsys: pytest.CaptureFixture[str]) -> None:
    main(DemoArgs(model=None, samples=2, presets=["video-10"]))
    out = capsys.readouterr().out
    assert "preset" in out and "video-10" in out and "dense" in out
    assert "prefill FLOPs ratio" in out


def test_demo_rejects_unknown_presets() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        parse_args(["--presets", "video-11"])
