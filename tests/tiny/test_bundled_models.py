"""Choosing a bundled model by name, and the fidelity benchmark's checks of --model and --seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from sparsevlm.bench.fidelity import FIDELITY_METHODS, benchmark_questions
from sparsevlm.tiny import BUNDLED_MODELS, CHECKPOINT_DIR, DEEP_CHECKPOINT_DIR
from sparsevlm.tiny.loading import load_tiny


def test_bundled_names_are_the_checkpoint_directories() -> None:
    assert BUNDLED_MODELS == {"tiny": CHECKPOINT_DIR, "tiny-deep": DEEP_CHECKPOINT_DIR}
    if (CHECKPOINT_DIR / "config.json").is_file():
        model, _, trained = load_tiny("tiny")
        assert trained and model.config.text_config.num_hidden_layers == 4


def test_a_missing_deep_checkpoint_is_an_error_not_a_random_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUNDLED_MODELS, "tiny-deep", Path("/nonexistent/checkpoint_deep"))
    with pytest.raises(FileNotFoundError, match="for model 'tiny-deep'"):
        load_tiny("tiny-deep")
    with pytest.raises(SystemExit, match=r"no Video-LLaVA checkpoint \(config.json\) in /nonexistent"):
        main(["fidelity", "--model", "tiny-deep", "--samples", "1", "--out", "unused.json"])


@pytest.mark.parametrize("seed", ["100", "-1", "123456"])
def test_a_seed_without_test_videos_gets_one_line(seed: str) -> None:
    with pytest.raises(SystemExit, match=rf"--seed must be in \[0, 99\] .*got {seed}$"):
        main(["fidelity", "--seed", seed, "--samples", "1", "--out", "unused.json"])


def test_the_last_seed_has_its_videos() -> None:
    assert len(benchmark_questions(seed=99, count=1)) == 1  # the range the check admits exists
    with pytest.raises(ValueError, match="index must be in"):
        benchmark_questions(seed=100, count=1)  # and the next seed would fail inside the generator


def test_samples_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fidelity", "--samples", "0", "--out", "unused.json"])
    assert "argument --samples: expected an int >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.slow  # 91 s here (2 cores): fidelity on the 16-layer tiny-deep model
@pytest.mark.skipif(not (DEEP_CHECKPOINT_DIR / "config.json").is_file(), reason="no tiny-deep checkpoint here")
def test_fidelity_runs_on_the_deep_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deep.json"
    main(["fidelity", "--model", "tiny-deep", "--samples", "16", "--budgets", "0.1", "--out", str(out)])
    report = json.loads(out.read_text())
    model, _, trained = load_tiny("tiny-deep")
    assert trained and model.config.text_config.num_hidden_layers >= 16  # deep like the real 32-layer LLM
    assert report["model"] == "tiny-deep" and report["dense"]["samples"] == 16
    assert report["dense"]["accuracy"] >= 0.8  # trained to ~0.99; 16 questions leave room for noise
    rows = report["results"]
    assert [r["method"] for r in rows] == list(FIDELITY_METHODS)
    for r in rows:  # every method at the same budget, measured on the deep layout
        assert abs(r["equivalent_fraction"] - 0.1) <= 0.02, r
        assert 0.0 < r["prefill_flops_ratio"] < 0.2 and r["accuracy"] is not None
    assert "tiny-deep; easy split; 16 questions" in capsys.readouterr().out


@pytest.mark.slow  # 40 s here (2 cores): fidelity on tiny-deep, hard split
@pytest.mark.skipif(not (DEEP_CHECKPOINT_DIR / "config.json").is_file(), reason="no tiny-deep checkpoint here")
def test_fidelity_runs_on_the_deep_model_on_the_hard_split(tmp_path: Path) -> None:
    out = tmp_path / "hard.json"
    flags = ["--split", "hard", "--samples", "10", "--methods", "random", "--budgets", "--presets", "video-5"]
    main(["fidelity", "--model", "tiny-deep", *flags, "--withdraw", "8", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [(r["preset"], r["method"]) for r in report["results"]] == [
        ("video-5", "sparsevlm"),
        ("video-5", "fastv"),
        ("video-5", "random"),
        (None, "withdraw-after-8"),
    ]
    for r in report["results"][:3]:  # the preset and its baselines spend the same budget on the deep layout
        assert abs(r["equivalent_fraction"] - 0.05) <= 0.02, r
    assert set(report["chance_bounds"]) == {"direction_of", "order", "count_of", "striped", "binding", "all"}
