"""`make demo` (jobs.demo) runs end to end: pipeline rows, summary, query hints, dense-vs-sparse table."""

from __future__ import annotations

import pytest

from jobs.demo import main


@pytest.mark.usefixtures("pipeline_ray")
def test_demo_runs_the_pipeline_and_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--videos", "2", "--samples", "2", "--presets", "video-25", "--s3"])
    out = capsys.readouterr().out
    assert "synthetic_00.mp4" in out and "how many objects are there?" in out
    assert "summary: RunSummary(" in out and "processed=3" in out
    assert "s3://demo-results/run/" in out
    assert "prefill FLOPs ratio" in out and "video-25" in out


def test_demo_rejects_unknown_presets() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--presets", "video-11"])
