"""The shadow sample's maths: a deterministic, nested sample; answer agreement; Wilson intervals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.quality import agreement_summary, exact_agreement, in_shadow_sample, token_f1, wilson_interval

ROOT = Path(__file__).resolve().parents[2]
KEYS = [(f"video{v:04d}-0123456789abcdef", s) for v in range(500) for s in range(20)]  # 10,000 segments


def _sample(fraction: float) -> set[tuple[str, int]]:
    return {(k, s) for k, s in KEYS if in_shadow_sample(k, s, fraction)}


def test_the_sample_has_about_its_fraction_and_grows_by_adding_segments() -> None:
    small, default = _sample(0.01), _sample(0.02)
    # Binomial(10,000, 0.02): mean 200, sd 14; the bounds are 5 sd either side.
    assert 130 <= len(default) <= 270
    assert 50 <= len(small) <= 150
    assert small < default  # a larger fraction keeps every segment a smaller one picked
    assert _sample(0.0) == set() and len(_sample(1.0)) == len(KEYS)
    assert in_shadow_sample("k", None, 1.0)  # a whole-video row (no segment index) can be sampled too


def test_the_sample_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from pipeline.quality import in_shadow_sample as s;"
        "print(sorted(i for i in range(2000) if s('video-0123456789abcdef', i, 0.02)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    here = sorted(i for i in range(2000) if in_shadow_sample("video-0123456789abcdef", i, 0.02))
    assert done.stdout.strip() == str(here) and here


def test_a_fraction_outside_0_1_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"shadow fraction must be in \[0, 1\], got 1.5"):
        in_shadow_sample("k", 0, 1.5)


def test_agreement_ignores_case_punctuation_and_spacing_only() -> None:
    assert exact_agreement("A red circle.", "a  red, circle")
    assert not exact_agreement("a red circle", "a circle red")
    assert token_f1("a red circle", "a circle red") == 1.0
    # common words: "a", "circle" = 2; precision 2/3, recall 2/4 -> F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    assert token_f1("a red circle", "a blue circle moves") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("red", "") == 0.0 and token_f1("red", "blue") == 0.0
    assert token_f1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)  # repeated words count as often


@pytest.mark.parametrize(
    ("successes", "samples", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),  # by hand: centre (0.8 + z²/20) / (1 + z²/10) = 0.7168, half-width 0.2266
        (10, 10, 0.7225, 1.0),
        (0, 10, 0.0, 0.2775),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(successes: int, samples: int, low: float, high: float) -> None:
    assert wilson_interval(successes, samples) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="samples must be an int >= 1, got 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"successes must be in \[0, 3\], got 4"):
        wilson_interval(4, 3)


def test_agreement_summary_per_task_in_the_run_record_form() -> None:
    rows = [("caption", True)] * 8 + [("caption", False)] * 2 + [("qa", True)] * 3
    summary = agreement_summary(rows)
    assert list(summary) == ["caption", "qa"]
    caption = summary["caption"]
    assert (caption["samples"], caption["agreement"]) == (10, 0.8)
    assert (caption["ci_low"], caption["ci_high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert summary["qa"]["agreement"] == 1.0 and summary["qa"]["ci_high"] == 1.0
    assert agreement_summary([]) == {}
