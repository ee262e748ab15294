"""The maths of the shadow dense sample (issue #29, item 1): which segments, how alike, how sure. No I/O, no Ray.

A run with a shadow fraction answers a small, deterministic sample of its segments with the ``dense``
configuration as well as with its own preset, and reports per task how often the two answers agree. This
module holds the parts of that which need no model and no storage:

* :func:`in_shadow_sample`: whether a segment is in the sample, from a hash of its ledger key and index, so a
  rerun (or another worker) picks the same segments, and a larger fraction keeps every segment a smaller one
  picked;
* :func:`exact_agreement` and :func:`token_f1`: how alike a sparse and a dense answer are;
* :func:`wilson_interval` and :func:`agreement_summary`: the agreement per task with its 95 % interval, in the
  form of the run record's ``"quality"`` key;
* :data:`QUALITY_SCHEMA`: the declared columns of the quality table.

Not wired into the pipeline yet: the model stage, the commit path and the run record do not use it.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

from pipeline.bm25 import tokenize

__all__ = [
    "QUALITY_SCHEMA",
    "QUALITY_SCHEMA_VERSION",
    "agreement_summary",
    "exact_agreement",
    "in_shadow_sample",
    "token_f1",
    "wilson_interval",
]

QUALITY_SCHEMA_VERSION = "1"
QUALITY_SCHEMA = pa.schema(
    [
        pa.field("ledger_key", pa.string(), nullable=False),  # the video version and config key of the result row
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32()),
        pa.field("segment_start_s", pa.float64()),
        pa.field("segment_end_s", pa.float64()),
        pa.field("task", pa.string(), nullable=False),
        pa.field("question", pa.string()),
        pa.field("sparse_preset", pa.string(), nullable=False),
        pa.field("sparse_answer", pa.string(), nullable=False),
        pa.field("dense_answer", pa.string(), nullable=False),
        pa.field("exact_agreement", pa.bool_(), nullable=False),
        pa.field("token_f1", pa.float64(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"quality_schema_version": QUALITY_SCHEMA_VERSION},
)

# z of a two-sided 95 % interval: the normal distribution's 0.975 quantile.
Z_95 = 1.959963984540054


def in_shadow_sample(ledger_key: str, segment_index: int | None, fraction: float) -> bool:
    """Whether the segment is in the shadow sample of size ``fraction`` (0 = none, 1 = every segment).

    The segment's SHA-256 (of ``"<ledger_key>/<segment_index>"``; a whole-video row's index is None) is read as
    a number in [0, 1), and the segment is sampled when it is below ``fraction``: the same segments on every
    rerun, on every worker and in every Python process (no ``hash()`` salt), and a larger fraction samples a
    superset of a smaller one's segments.

    Raises:
        ValueError: ``fraction`` outside [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"shadow fraction must be in [0, 1], got {fraction}")
    digest = hashlib.sha256(f"{ledger_key}/{segment_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def exact_agreement(sparse: str, dense: str) -> bool:
    """Whether two answers say the same words: equal after lower-casing and dropping punctuation and spacing."""
    return tokenize(sparse) == tokenize(dense)


def token_f1(sparse: str, dense: str) -> float:
    """The F1 of the two answers' words as bags (SQuAD's answer F1): 1.0 for the same words in any order.

    Words are those of :func:`pipeline.bm25.tokenize`. Two empty answers agree (1.0); one empty answer
    shares nothing (0.0).
    """
    a, b = Counter(tokenize(sparse)), Counter(tokenize(dense))
    if not a and not b:
        return 1.0
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def wilson_interval(successes: int, samples: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / samples`` (Wilson 1927; 95 % with the default z).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or ``samples`` successes,
    which is where a small shadow sample of a good preset lands.

    Raises:
        ValueError: ``samples`` < 1, or ``successes`` outside [0, samples].
    """
    if samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples}")
    if not 0 <= successes <= samples:
        raise ValueError(f"successes must be in [0, {samples}], got {successes}")
    p = successes / samples
    denominator = 1 + z * z / samples
    center = (p + z * z / (2 * samples)) / denominator
    half = z * math.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def agreement_summary(rows: Iterable[tuple[str, bool]]) -> dict[str, dict[str, float | int]]:
    """Per task, the samples, the fraction that agree and its 95 % Wilson interval.

    Args:
        rows: (task, exact agreement) per sampled answer.

    Returns:
        ``{task: {"samples": N, "agreement": A, "ci_low": L, "ci_high": H}}`` with A, L, H in [0, 1], tasks in
        sorted order; empty when there are no rows (the run record then leaves the key empty).
    """
    counts: dict[str, list[int]] = {}
    for task, agree in rows:
        tally = counts.setdefault(task, [0, 0])
        tally[0] += int(agree)
        tally[1] += 1
    summary: dict[str, dict[str, float | int]] = {}
    for task in sorted(counts):
        agreed, samples = counts[task]
        low, high = wilson_interval(agreed, samples)
        summary[task] = {"samples": samples, "agreement": agreed / samples, "ci_low": low, "ci_high": high}
    return summary
