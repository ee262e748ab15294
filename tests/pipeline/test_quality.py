"""The shadow sample's pure parts: which segments it samples, how answers compare, the intervals, the tally."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.observability.quality import (
    QUALITY_SCHEMA,
    Z_95,
    QualityTally,
    mean_interval,
    normalise_answer,
    quality_rows,
    shadow_sampled,
    token_f1,
    wilson_interval,
)
from tests.pipeline.ledgers import segment


def test_the_sample_is_a_hash_of_the_key_and_the_segment() -> None:
    keys = [(f"video{v:05d}-0123456789abcdef", i) for v in range(2000) for i in range(10)]
    picked = [k for k in keys if shadow_sampled(*k, 0.02)]
    assert picked == [k for k in keys if shadow_sampled(*k, 0.02)]  # a rerun samples the same
    # independent: the first 8 bytes of sha256("<key>/<index>") as a fraction
    expected = [
        (key, i) for key, i in keys if int(hashlib.sha256(f"{key}/{i}".encode()).hexdigest()[:16], 16) < 0.02 * 2**64
    ]
    assert picked == expected
    assert abs(len(picked) - 400) < 100  # 20,000 x 0.02; the binomial's sd is 20
    assert set(picked) <= {k for k in keys if shadow_sampled(*k, 0.1)}  # a larger fraction samples a superset
    assert not any(shadow_sampled(*k, 0.0) for k in keys[:100]) and all(shadow_sampled(*k, 1.0) for k in keys[:100])


def test_answers_are_compared_after_squad_normalisation() -> None:
    assert normalise_answer("  The RED, circle!  ") == "red circle"
    assert normalise_answer("an apple a day") == "apple day"
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)  # precision 2/2, recall 2/3
    assert token_f1("red red circle", "red circle circle") == pytest.approx(2 / 3)  # shared with multiplicity
    assert token_f1("", "") == 1.0 and token_f1("red", "") == 0.0 and token_f1("red", "blue") == 0.0


def test_the_wilson_interval_solves_its_quadratic() -> None:
    for successes, n in [(8, 10), (0, 5), (5, 5), (37, 120), (1, 1)]:
        p = successes / n
        # independent: the p with (p_hat - p)^2 = z^2 p (1 - p) / n, the roots of a quadratic in p
        a = 1 + Z_95**2 / n
        roots = sorted(np.roots([a, -(2 * p + Z_95**2 / n), p * p]).real)
        low, high = wilson_interval(successes, n)
        assert (low, high) == pytest.approx((max(0.0, roots[0]), min(1.0, roots[1])), abs=1e-9)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook example
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)


def test_the_mean_interval_is_the_wider_of_the_normal_and_the_wilson_interval() -> None:
    for values in (np.array([0.2, 0.9, 0.5, 0.75, 1.0, 0.0, 0.6]), np.array([0.0, 1.0] * 20 + [0.5])):
        low, high = mean_interval(values.sum(), (values**2).sum(), len(values))
        half = Z_95 * values.std(ddof=1) / math.sqrt(len(values))
        wilson = wilson_interval(values.sum(), len(values))
        normal = (max(0.0, values.mean() - half), min(1.0, values.mean() + half))
        assert (low, high) == pytest.approx((min(normal[0], wilson[0]), max(normal[1], wilson[1])))
    assert high == pytest.approx(normal[1])  # 0/1 values: the normal interval is the wider one
    # All ones: no spread, so the Wilson interval of 2 successes in 2 (not a certain (1, 1)).
    assert mean_interval(2.0, 2.0, 2) == pytest.approx(wilson_interval(2, 2))
    assert mean_interval(2.0, 2.0, 2)[0] == pytest.approx(0.342, abs=1e-3)
    close = np.full(50, 0.8)  # 50 equal values: the Wilson interval of 40 in 50
    assert mean_interval(close.sum(), (close**2).sum(), 50) == pytest.approx(wilson_interval(40, 50))
    assert mean_interval(0.3, 0.09, 1) == (0.0, 1.0)  # one value says nothing of the spread


def sampled_rows() -> pa.Table:
    """Two segments of one video, each with a caption and a qa row; three have a dense answer, one failed."""
    table = pa.concat_tables([segment("v", 0, False), segment("v", 1, True)])
    # answers: v-0-0 (caption), v-0-1 (qa), v-1-0 (caption), v-1-1 (qa)
    dense = ["V-0-0.", "something else", "v-1-0 extra words", None]
    errors = [None, None, None, "RuntimeError"]
    table = table.append_column("shadow_answer", pa.array(dense, pa.string()))
    table = table.append_column("shadow_error", pa.array(errors, pa.string()))
    table = table.append_column("shadow_ms", pa.array([10.0, 10.0, 10.0, None], pa.float64()))
    return table.append_column("model_ms", pa.array([5.0] * 4, pa.float64()))


def test_quality_rows_and_their_tally() -> None:
    staged = sampled_rows()
    quality = quality_rows(staged)
    assert quality.schema.equals(QUALITY_SCHEMA) and quality.schema.metadata == {b"quality_schema_version": b"1"}
    got = [(r["segment_index"], r["task"], r["exact_match"], r["agreement"]) for r in quality.to_pylist()]
    # "v-0-0" and "V-0-0." normalise alike ("v00"); "v10" vs "v10 extra words": precision 1, recall 1/3
    assert got == [(0, "caption", True, 1.0), (0, "qa", False, 0.0), (1, "caption", False, pytest.approx(0.5))]
    tally = QualityTally.from_rows(staged, quality)
    assert tally == QualityTally(
        caption_samples=2,
        caption_sum=pytest.approx(1.5),
        caption_squares=pytest.approx(1.25),
        qa_samples=1,
        qa_agreed=0,
        failed=1,
        dense_ms=30.0,
        model_ms=20.0,
    )
    assert tally.prompts == 4
    agreement = tally.agreement()
    assert agreement["caption"]["samples"] == 2 and agreement["caption"]["agreement"] == 0.75
    assert (agreement["caption"]["ci_low"], agreement["caption"]["ci_high"]) == pytest.approx(
        mean_interval(1.5, 1.25, 2), abs=1e-4
    )
    assert agreement["qa"] == {
        "samples": 1,
        "agreement": 0.0,
        "ci_low": 0.0,
        "ci_high": round(wilson_interval(0, 1)[1], 4),
    }
    assert (tally + tally).agreement()["caption"]["samples"] == 4
    assert tally.cost(answers=40) == {
        "prompts": 4,
        "failed": 1,
        "answers_share": 0.1,
        "dense_s": 0.03,
        "model_time_share": 0.6,
    }
    assert QualityTally().agreement() == {}


def test_rows_without_a_sample_have_no_quality_rows() -> None:
    staged = segment("v", 0, True)
    for name, type_ in (("shadow_answer", pa.string()), ("shadow_error", pa.string())):
        staged = staged.append_column(name, pa.nulls(staged.num_rows, type_))
    for name in ("shadow_ms", "model_ms"):
        staged = staged.append_column(name, pa.nulls(staged.num_rows, pa.float64()))
    quality = quality_rows(staged)
    assert quality.num_rows == 0 and quality.schema.equals(QUALITY_SCHEMA)
    assert QualityTally.from_rows(staged, quality) == QualityTally()
