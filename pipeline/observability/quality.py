"""The shadow dense sample: how often the sparse answers agree with the unpruned model's. No Ray, no torch.

With ``shadow_fraction`` F > 0, the model stage answers a deterministic sample of segments a second time with
the same weights under the ``dense`` preset (:data:`SHADOW_PRESET`; one more batched ``generate`` in the same
actor, no second model load, :class:`~pipeline.stages.predictor.Predictor`). A segment is sampled when the hash of its
ledger key and index falls below F (:func:`shadow_sampled`), so a rerun samples the same segments, and a
video's segments are sampled independently of the batch they travel in.

The dense answers never reach the results. They ride on the result rows as the internal columns
:data:`SHADOW_COLUMNS` (never written to Parquet) to the commit, which writes them as the quality table
(:data:`QUALITY_SCHEMA`, one Arrow IPC file per committed video, ``_quality/<key>/<run_id>.arrow``) before the
video's marker, and the marker names that file and carries its :class:`QualityTally`; so the quality rows are
committed exactly once with the results they compare (pipeline/commit/ledger.py). Readers:
:func:`pipeline.query.results.open_quality`.

Agreement, per task:

* ``qa``: exact agreement, the normalised answers equal (:func:`normalise_answer`: lower case, no
  punctuation, no articles, single spaces, as SQuAD's exact match); a proportion with a Wilson interval
  (:func:`wilson_interval`).
* ``caption``: the mean token F1 of the normalised captions (:func:`token_f1`, SQuAD's): two captions of one
  clip rarely match word for word, and F1 says how far apart they are; a mean with an interval that is the
  wider of the normal one and the Wilson one of its sum (:func:`mean_interval`). Each quality row has both
  ``exact_match`` and ``token_f1``, so the other measure is one query away.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DEFAULT_SHADOW_FRACTION",
    "QUALITY_DIR",
    "QUALITY_SCHEMA",
    "QUALITY_SCHEMA_VERSION",
    "SHADOW_COLUMNS",
    "SHADOW_PRESET",
    "TALLY_TYPE",
    "Z_95",
    "QualityTally",
    "format_agreement",
    "format_cost",
    "mean_interval",
    "normalise_answer",
    "quality_rows",
    "shadow_sampled",
    "token_f1",
    "wilson_interval",
]

SHADOW_PRESET = "dense"  # the configuration the sample is answered with again
DEFAULT_SHADOW_FRACTION = 0.02  # the jobs' --shadow-fraction (a library PipelineConfig defaults to 0: off)
QUALITY_DIR = "_quality"  # under the output prefix; "_" so that dataset readers of the prefix skip it
QUALITY_SCHEMA_VERSION = "1"
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 % intervals

# Internal columns the model stage appends to every result row (after the ledger's own), for the commit only:
#   shadow_answer  the dense answer of a sampled, answered prompt (null: not sampled, or the dense call failed)
#   shadow_error   the error class of a sampled prompt whose dense call failed (null otherwise)
#   shadow_ms      the prompt's share of its dense generate call's wall time (null: no dense answer)
#   model_ms       the prompt's share of its main generate call's wall time (null: not answered by a call)
SHADOW_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("shadow_answer", pa.string()),
    ("shadow_error", pa.string()),
    ("shadow_ms", pa.float64()),
    ("model_ms", pa.float64()),
)

QUALITY_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("segment_index", pa.int64(), nullable=False),
        pa.field("segment_start_s", pa.float64()),
        pa.field("segment_end_s", pa.float64()),
        pa.field("task", pa.string(), nullable=False),  # "caption" | "qa"
        pa.field("question", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("sparse_preset", pa.string()),  # the main answer's preset; the dense one is SHADOW_PRESET
        pa.field("sparse_answer", pa.string(), nullable=False),  # the result row's answer
        pa.field("dense_answer", pa.string(), nullable=False),
        pa.field("exact_match", pa.bool_(), nullable=False),  # normalise_answer() equal
        pa.field("token_f1", pa.float64(), nullable=False),  # token_f1() of the two answers
        pa.field("agreement", pa.float64(), nullable=False),  # qa: exact_match as 0/1; caption: token_f1
        pa.field("dense_latency_ms", pa.float64()),  # the prompt's share of the dense generate call
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"quality_schema_version": QUALITY_SCHEMA_VERSION},
)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def shadow_sampled(ledger_key: str, segment_index: int, fraction: float) -> bool:
    """Whether a segment belongs to the shadow sample: the first 8 bytes of sha256(``<key>/<index>``) read as a
    number in [0, 1) fall below ``fraction`` (0 samples nothing, 1 everything; a rerun samples the same)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{ledger_key}/{segment_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def normalise_answer(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed (SQuAD's normalisation)."""
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def token_f1(a: str, b: str) -> float:
    """SQuAD's token F1 of two answers after :func:`normalise_answer`: the harmonic mean of the shared tokens'
    (with multiplicity) precision and recall; 1.0 when both are empty, 0.0 when only one is."""
    left, right = normalise_answer(a).split(), normalise_answer(b).split()
    if not left or not right:
        return float(left == right)
    shared = sum((Counter(left) & Counter(right)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(left), shared / len(right)
    return 2 * precision * recall / (precision + recall)


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95 % by default).

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside [0, n].
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(total: float, squares: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """An interval for the mean of ``n`` values in [0, 1] from their sum and sum of squares: the wider of the
    normal interval with the sample standard deviation (clipped to [0, 1]) and the Wilson interval of ``total``
    successes in ``n`` (:func:`wilson_interval`; values in [0, 1] with that mean spread at most as 0/1 values
    do). A few equal values thus claim no certainty: two captions that agree give (0.34, 1), not (1, 1).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"need n >= 1 values, got n={n!r}")
    if n == 1:
        return 0.0, 1.0
    mean = total / n
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = z * math.sqrt(variance / n)
    wilson_low, wilson_high = wilson_interval(total, n, z)
    return min(max(0.0, mean - half), wilson_low), max(min(1.0, mean + half), wilson_high)


@dataclass(frozen=True)
class QualityTally:
    """Sums over quality rows, enough for each task's agreement and interval and for the sample's cost; one per
    committed video (in its ledger record), added up for a run.

    Attributes:
        caption_samples: caption quality rows.
        caption_sum: their ``agreement`` (token F1) summed.
        caption_squares: its squares summed (the interval's spread).
        qa_samples: qa quality rows.
        qa_agreed: those with exact agreement.
        failed: sampled prompts whose dense call failed (no quality row; the results are untouched).
        dense_ms: the dense calls' wall time, summed over the sampled prompts' shares.
        model_ms: the main calls' wall time, summed over every prompt's share (sampled or not).
    """

    caption_samples: int = 0
    caption_sum: float = 0.0
    caption_squares: float = 0.0
    qa_samples: int = 0
    qa_agreed: int = 0
    failed: int = 0
    dense_ms: float = 0.0
    model_ms: float = 0.0

    def __add__(self, other: QualityTally) -> QualityTally:
        return QualityTally(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @classmethod
    def from_rows(cls, staged: pa.Table, quality: pa.Table) -> QualityTally:
        """The tally of one video: its staged rows (with :data:`SHADOW_COLUMNS`) and its quality rows."""
        caption = quality.filter(pc.equal(quality["task"], "caption"))
        qa = quality.filter(pc.equal(quality["task"], "qa"))
        return cls(
            caption_samples=caption.num_rows,
            caption_sum=float(pc.sum(caption["agreement"]).as_py() or 0.0),
            caption_squares=float(pc.sum(pc.multiply(caption["agreement"], caption["agreement"])).as_py() or 0.0),
            qa_samples=qa.num_rows,
            qa_agreed=int(pc.sum(pc.cast(qa["exact_match"], pa.int64())).as_py() or 0),
            failed=staged.num_rows - staged["shadow_error"].null_count,
            dense_ms=float(pc.sum(staged["shadow_ms"]).as_py() or 0.0),
            model_ms=float(pc.sum(staged["model_ms"]).as_py() or 0.0),
        )

    @property
    def prompts(self) -> int:
        """Sampled prompts answered dense, failed ones included."""
        return self.caption_samples + self.qa_samples + self.failed

    def agreement(self) -> dict[str, dict[str, Any]]:
        """Per task with samples: ``{"samples": N, "agreement": A, "ci_low": L, "ci_high": H}`` (A in [0, 1],
        [L, H] its 95 % interval, see the module docstring); no key for a task without samples."""
        found: dict[str, dict[str, Any]] = {}
        if self.caption_samples:
            low, high = mean_interval(self.caption_sum, self.caption_squares, self.caption_samples)
            found["caption"] = _agreement(self.caption_samples, self.caption_sum / self.caption_samples, low, high)
        if self.qa_samples:
            low, high = wilson_interval(self.qa_agreed, self.qa_samples)
            found["qa"] = _agreement(self.qa_samples, self.qa_agreed / self.qa_samples, low, high)
        return found

    def cost(self, answers: int) -> dict[str, Any]:
        """What the sample cost, next to ``answers`` (the run's ok result rows): the dense prompts, their share of
        the answers, the dense generate seconds and their share of all generate time (main plus dense)."""
        total_ms = self.model_ms + self.dense_ms
        return {
            "prompts": self.prompts,
            "failed": self.failed,
            "answers_share": round(self.prompts / answers, 4) if answers else None,
            "dense_s": round(self.dense_ms / 1000, 3),
            "model_time_share": round(self.dense_ms / total_ms, 4) if total_ms > 0 else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def total(cls, tallies: Iterable[dict[str, Any] | None]) -> QualityTally:
        """The sum of ledger records' tallies (``LedgerEntry.quality``; None in records without one)."""
        found = cls()
        for tally in tallies:
            if tally is not None:
                found += cls(**tally)
        return found


TALLY_TYPE = pa.struct(
    [(f.name, pa.int64() if f.type in ("int", int) else pa.float64()) for f in fields(QualityTally)]
)  # the ledger index's column for a record's tally


def format_agreement(agreement: Mapping[str, Mapping[str, Any]]) -> str:
    """The quality line's text for :meth:`QualityTally.agreement` (the run record's ``quality``), e.g.
    ``caption 0.93 [0.88, 0.97] n=12, qa 1.00 [0.79, 1.00] n=15``; empty when there are no samples."""
    return ", ".join(
        f"{task} {a['agreement']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}] n={a['samples']}"
        for task, a in agreement.items()
    )


def format_cost(cost: Mapping[str, Any]) -> str:
    """The sample's cost (the run record's ``shadow``) in words, e.g. ``27 dense prompts (2.1 % of the answers),
    3.2 s, 4.0 % of the model's generate time``."""
    share = cost.get("answers_share")
    time_share = cost.get("model_time_share")
    text = f"{cost.get('prompts', 0)} dense prompts"
    text += f" ({100 * share:.1f} % of the answers)" if share is not None else ""
    text += f", {cost.get('dense_s', 0.0):.1f} s"
    text += f", {100 * time_share:.1f} % of the model's generate time" if time_share is not None else ""
    if cost.get("failed"):
        text += f", {cost['failed']} failed"
    return text


def _agreement(samples: int, agreement: float, low: float, high: float) -> dict[str, Any]:
    return {"samples": samples, "agreement": round(agreement, 4), "ci_low": round(low, 4), "ci_high": round(high, 4)}


def quality_rows(staged: pa.Table) -> pa.Table:
    """The quality rows of a video's staged result rows: one per row with a dense answer (:data:`SHADOW_COLUMNS`),
    with :data:`QUALITY_SCHEMA` (also when there are none)."""
    sampled = staged.filter(pc.is_valid(staged["shadow_answer"]))
    now = dt.datetime.now(dt.UTC)
    rows = []
    for row in sampled.to_pylist():
        sparse, dense = row["answer"] or "", row["shadow_answer"]
        exact = normalise_answer(sparse) == normalise_answer(dense)
        f1 = token_f1(sparse, dense)
        rows.append(
            {
                **{k: row[k] for k in ("video_id", "source_uri", "segment_index", "segment_start_s", "segment_end_s")},
                **{k: row[k] for k in ("task", "question", "model_id", "sparse_preset", "run_id")},
                "sparse_answer": sparse,
                "dense_answer": dense,
                "exact_match": exact,
                "token_f1": f1,
                "agreement": float(exact) if row["task"] == "qa" else f1,
                "dense_latency_ms": row["shadow_ms"],
                "created_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=QUALITY_SCHEMA)
