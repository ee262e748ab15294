"""`make demo` (jobs.demo) runs end to end: pipeline rows, summary, query hints, dense-vs-sparse table."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from jobs.demo import main
from sparsevlm.tiny.video_qa import FAMILIES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 10 s here (2 cores): the demo's Ray run and comparison
@pytest.mark.usefixtures("pipeline_ray")
def test_demo_runs_the_pipeline_and_the_comparison(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # where `make demo` runs, and where its printed commands are meant to be typed
    work = tmp_path / "demo"
    main(["--videos", "2", "--samples", "2", "--presets", "video-25", "--s3", "--keep", str(work)])
    out = capsys.readouterr().out
    assert out.startswith("The bundled model is a tiny Video-LLaVA") and "It cannot caption" in out
    assert all(f"  {family:<9} e.g. " in out for family in FAMILIES)
    assert "synthetic_00.mp4" in out and "how many objects are there?" in out
    assert "  model    bundled:tiny-synthetic (sha256:" in out and "RunSummary(" not in out
    assert "  videos   3 seen, 0 already done, 3 processed (0 failed, 0 partial)" in out
    assert "s3://demo-results/run/" in out and f"a copy is in {work / 'results'}" in out
    assert "prefill FLOPs ratio" in out and "video-25" in out
    table = out.split("\nrun ")[0]  # the rows, before the summary block
    real = [line.split() for line in table.splitlines() if line.startswith("decord_flipping_a_pancake.mkv")]
    assert real and all(_no_repeat(words) for words in real)  # it loops there without the guard

    # It ends with where its output stays and commands that read it: each one works after the demo ended.
    tail = out.rstrip().split(f"the demo's videos and results stay in {work}; read the results")[1]
    commands = [line.strip()[2:] for line in tail.splitlines() if line.strip().startswith("$ ")]
    assert len(commands) == 3 and not any(c.startswith("duckdb ") for c in commands)  # no CLI the venv lacks
    for command in commands[:2]:
        done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stderr[-1500:]}"
        assert "caption" in done.stdout
    page = Path(commands[2].split()[1])
    assert page.is_file() and "<title>Run " in page.read_text() and "bundled:tiny-synthetic" in page.read_text()


def _no_repeat(words: list[str]) -> bool:
    """No word follows itself (the guard cut every answer where it began to repeat)."""
    return all(a != b for a, b in itertools.pairwise(words))


def test_demo_rejects_unknown_presets() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--presets", "video-11"])
