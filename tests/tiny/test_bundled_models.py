"""Choosing a bundled model by name, and the fidelity benchmark's checks of --model and --seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.benchmark import main
from sparsevlm.bench.fidelity import benchmark_questions
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
    assert "must be positive, got 0" in capsys.readouterr().err
