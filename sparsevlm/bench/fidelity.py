"""Fidelity of sparsified Video-LLaVA against dense, on the synthetic video QA task, at equal budgets.

For each method and budget (and optionally at fixed schedules: the same prune layers and counts for every
text-guided or random method), on the same questions: does the sparse model give the dense answer
(``agreement``), how far is its first answer token distribution from dense (``kl``, dense || sparse), how much
of the question's evidence survives the first pruning step (``evidence_recall``), and, when the model was
trained on the task, its accuracy and retention (% of dense accuracy). Costs come from ``last_stats``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.baselines import method_config, schedule_config, schedule_methods
from sparsevlm.config import SparseConfig
from sparsevlm.patch import apply_patch, last_stats
from sparsevlm.tiny.inputs import encode_prompts
from sparsevlm.tiny.video_qa import QA, VideoSample, evidence_token_indices, make_sample

BUDGETS = (0.50, 0.25, 0.10, 0.05)
FIDELITY_METHODS = ("sparsevlm", "sparsevlm-text", "sparsevlm-xf", "sparsevlm-xf-text", "fastv", "random", "pool")


@dataclass(frozen=True)
class Question:
    """One benchmark item: a video, one of its questions, and the evidence as visual-token indices."""

    sample: VideoSample
    qa: QA
    evidence: np.ndarray  # [E] visual-token indices


@dataclass
class FidelityRow:
    method: str
    budget: float | None  # None on a fixed-schedule row
    schedule: str | None  # "LAYERS:KEEPS" on a fixed-schedule row
    agreement: float
    kl: float
    evidence_recall: float | None
    accuracy: float | None
    family_accuracy: dict[str, float] | None  # accuracy per question family
    retention: float | None
    equivalent_tokens: float
    equivalent_fraction: float
    prefill_flops_ratio: float
    prefill_ms: float


def benchmark_questions(seed: int, count: int, split: str = "test") -> list[Question]:
    """``count`` questions, one per video, cycling through the question families."""
    items = []
    for i in range(count):
        sample = make_sample(split, seed * 100_000 + i)
        qa = sample.questions[i % len(sample.questions)]
        items.append(Question(sample, qa, evidence_token_indices(qa.evidence)))
    return items


@dataclass
class _Run:
    log_probs: torch.Tensor  # [N, V] first answer token
    kept_first: list[set[int] | None]
    equivalent: list[float]
    fraction: list[float]
    flops_ratio: list[float]
    ms_per_sample: list[float]


def _run(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    items: list[Question],
    config: SparseConfig,
    batch_size: int,
) -> _Run:
    apply_patch(model, config)
    patch: int = getattr(model.config.vision_config, "patch_size")  # noqa: B009 (config union type)
    log_probs, kept, equiv, fraction, flops, ms = [], [], [], [], [], []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        enc = encode_prompts(tokenizer, [q.qa.question for q in batch], [q.sample.frames for q in batch], patch)
        began = time.perf_counter()
        with torch.no_grad():
            logits = model(**enc, logits_to_keep=1).logits[:, -1].float()  # [B, V]
        ms.append(1000 * (time.perf_counter() - began) / len(batch))
        log_probs.append(logits.log_softmax(-1))
        for stats in last_stats(model):
            first = min(stats.kept_indices) if stats.kept_indices else None
            kept.append(None if first is None else set(stats.kept_indices[first].tolist()))
            equiv.append(stats.equivalent_tokens)
            fraction.append(stats.equivalent_tokens / stats.visual_tokens_in)
            flops.append(stats.flops_ratio)
    return _Run(torch.cat(log_probs), kept, equiv, fraction, flops, ms)


def run_fidelity(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    items: list[Question],
    trained: bool,
    methods: tuple[str, ...] = FIDELITY_METHODS,
    budgets: tuple[float, ...] = BUDGETS,
    batch_size: int = 8,
    schedules: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Dense and every method at every budget on the same questions, then each of ``methods`` that can run it
    (:func:`sparsevlm.baselines.schedule_methods`) at each schedule (see :func:`sparsevlm.baselines.parse_schedule`).

    Returns:
        ``{"dense": {...}, "results": [row, ...]}``; accuracy fields are None for an untrained model.
    """
    answer_ids = [tokenizer(" " + q.qa.answer, add_special_tokens=False)["input_ids"][0] for q in items]
    truth = torch.tensor(answer_ids)
    dense = _run(model, tokenizer, items, SparseConfig.preset("dense"), batch_size)
    dense_acc = float((dense.log_probs.argmax(-1) == truth).float().mean()) if trained else None
    runs: list[tuple[str, float | None, str | None, SparseConfig]] = [
        (method, budget, None, method_config(method, budget)) for method in methods for budget in budgets
    ]
    runs += [
        (method, None, schedule, schedule_config(method, schedule))
        for schedule in schedules
        for method in schedule_methods(schedule)
        if method in methods
    ]
    results = []
    for method, budget, schedule, config in runs:
        run = _run(model, tokenizer, items, config, batch_size)
        row = _row(method, budget, schedule, run, dense, items, truth if trained else None, dense_acc)
        results.append(asdict(row))
    return {
        "dense": {
            "accuracy": dense_acc,
            "prefill_ms": statistics.median(dense.ms_per_sample),
            "samples": len(items),
        },
        "results": results,
    }


def _row(
    method: str,
    budget: float | None,
    schedule: str | None,
    run: _Run,
    dense: _Run,
    items: list[Question],
    truth: torch.Tensor | None,
    dense_acc: float | None,
) -> FidelityRow:
    """One method's run against dense; ``truth`` is None for an untrained model (no accuracy)."""
    pred, dense_pred = run.log_probs.argmax(-1), dense.log_probs.argmax(-1)
    kl = (dense.log_probs.exp() * (dense.log_probs - run.log_probs)).sum(-1)  # [N]
    recalls = [
        len(kept & set(q.evidence.tolist())) / len(q.evidence)
        for q, kept in zip(items, run.kept_first, strict=True)
        if kept is not None and len(q.evidence)
    ]
    accuracy = float((pred == truth).float().mean()) if truth is not None else None
    families = None
    if truth is not None:
        correct = (pred == truth).tolist()
        names = sorted({q.qa.family for q in items})
        families = {
            name: statistics.mean(ok for q, ok in zip(items, correct, strict=True) if q.qa.family == name)
            for name in names
        }
    retention = 100 * accuracy / dense_acc if accuracy is not None and dense_acc else None
    return FidelityRow(
        method=method,
        budget=budget,
        schedule=schedule,
        agreement=float((pred == dense_pred).float().mean()),
        kl=float(kl.mean()),
        evidence_recall=statistics.mean(recalls) if recalls else None,
        accuracy=accuracy,
        family_accuracy=families,
        retention=retention,
        equivalent_tokens=statistics.mean(run.equivalent),
        equivalent_fraction=statistics.mean(run.fraction),
        prefill_flops_ratio=statistics.mean(run.flops_ratio),
        prefill_ms=statistics.median(run.ms_per_sample),
    )
