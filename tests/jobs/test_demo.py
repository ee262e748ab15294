"""`make demo` (jobs.demo) runs end to end: pipeline rows, summary, query hints, dense-vs-sparse table."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from jobs.demo import main
from sparsevlm.tiny.video_qa import FAMILIES


@pytest.mark.usefixtures("pipeline_ray")
def test_demo_runs_the_pipeline_and_the_comparison(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    main(["--videos", "2", "--samples", "2", "--presets", "video-25", "--s3", "--report", str(report)])
    out = capsys.readouterr().out
    assert out.startswith("The bundled model is a tiny Video-LLaVA") and "It cannot caption" in out
    assert all(f"  {family:<9} e.g. " in out for family in FAMILIES)
    assert "synthetic_00.mp4" in out and "how many objects are there?" in out
    assert "summary: RunSummary(" in out and "processed=3" in out
    assert "s3://demo-results/run/" in out
    assert "prefill FLOPs ratio" in out and "video-25" in out
    assert out.rstrip().splitlines()[-2] == f"run report page: {report.as_uri()}"  # it ends with the page
    run_id = out.split("summary: RunSummary(run_id='")[1].split("'")[0]
    assert f"<title>Run {run_id}: ok</title>" in report.read_text()
    table = out.split("summary: RunSummary(")[0]
    real = [line.split() for line in table.splitlines() if line.startswith("decord_flipping_a_pancake.mkv")]
    assert real and all(_no_repeat(words) for words in real)  # it loops there without the guard


def _no_repeat(words: list[str]) -> bool:
    """No word follows itself (the guard cut every answer where it began to repeat)."""
    return all(a != b for a, b in itertools.pairwise(words))


def test_demo_rejects_unknown_presets() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--presets", "video-11"])
