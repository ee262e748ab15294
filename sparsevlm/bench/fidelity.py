"""Fidelity of sparsified Video-LLaVA against dense, on the synthetic video QA task, at equal budgets.

For each method and budget (and optionally at fixed schedules: the same prune layers and counts for every
text-guided or random method), on the same questions: does the sparse model give the dense answer
(``agreement``), how far is its first answer token distribution from dense (``kl``, dense || sparse), how much
of the question's evidence survives the first pruning step (``evidence_recall``), and, when the model was
trained on the task, its accuracy and retention (% of dense accuracy). Costs come from ``last_stats``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.baselines import ComparedMethod, method_config, schedule_config, schedule_methods
from sparsevlm.config import SparseConfig
from sparsevlm.patch import apply_patch, last_stats
from sparsevlm.tiny.hard_qa import QuestionSplit, chance_bound, make_task_sample
from sparsevlm.tiny.inputs import encode_prompts
from sparsevlm.tiny.video_qa import QA, VideoSample, evidence_token_indices

BUDGETS = (0.50, 0.25, 0.10, 0.05)
FIDELITY_METHODS: tuple[ComparedMethod, ...] = (
    "sparsevlm",
    "sparsevlm-text",
    "sparsevlm-xf",
    "sparsevlm-xf-text",
    "fastv",
    "random",
    "pool",
)


@dataclass(frozen=True)
class Question:
    """One benchmark item: a video, one of its questions, and the evidence as visual-token indices."""

    sample: VideoSample
    qa: QA
    evidence: np.ndarray  # [E] visual-token indices


@dataclass
class FidelityRow:
    """One configuration's result on the benchmark's questions (``accuracy`` and the fields after it need a
    trained model)."""

    method: str
    budget: float | None  # None on a fixed-schedule row
    schedule: str | None  # "LAYERS:KEEPS" on a fixed-schedule row
    preset: str | None  # the product preset this row is (or is the baseline of, at its schedule and budget)
    agreement: float
    kl: float
    evidence_recall: float | None
    accuracy: float | None
    standard_error: float | None  # binomial standard error of ``accuracy``: sqrt(a (1 - a) / n)
    family_accuracy: dict[str, float] | None  # accuracy per question family
    retention: float | None
    equivalent_tokens: float
    equivalent_fraction: float
    prefill_flops_ratio: float
    prefill_ms: float


def benchmark_questions(
    seed: int, count: int, split: str = "test", question_split: QuestionSplit = "easy"
) -> list[Question]:
    """``count`` questions, one per video, cycling through each video's questions (on the hard split every
    video asks one of each family, so the families get equal shares)."""
    items = []
    for i in range(count):
        sample = make_task_sample(question_split, split, seed * 100_000 + i)
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
        enc = {k: v.to(model.device) for k, v in enc.items()}
        began = time.perf_counter()
        with torch.no_grad():
            logits = model(**enc, logits_to_keep=1).logits[:, -1].float().cpu()  # [B, V]; .cpu() waits for it
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
    presets: tuple[str, ...] = (),
    withdraw_after: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Dense and every method at every budget on the same questions, then each of ``methods`` that can run it
    (:func:`sparsevlm.baselines.schedule_methods`) at each schedule (see :func:`sparsevlm.baselines.parse_schedule`),
    then each product preset with its baselines (:func:`preset_configs`), then the withdrawal rows: one random
    visual token kept after layer L (:func:`withdrawal_config`), which shows where the model reads the video.

    Returns:
        ``{"dense": {...}, "results": [row, ...]}``; accuracy fields are None for an untrained model.
    """
    answer_ids = [tokenizer(" " + q.qa.answer, add_special_tokens=False)["input_ids"][0] for q in items]
    truth = torch.tensor(answer_ids)
    dense = _run(model, tokenizer, items, SparseConfig.preset("dense"), batch_size)
    dense_acc = float((dense.log_probs.argmax(-1) == truth).float().mean()) if trained else None
    runs: list[tuple[str, float | None, str | None, str | None, SparseConfig]] = [
        (method, budget, None, None, method_config(method, budget)) for method in methods for budget in budgets
    ]
    runs += [
        (method, None, schedule, None, schedule_config(method, schedule))
        for schedule in schedules
        for method in schedule_methods(schedule)
        if method in methods
    ]
    for name in presets:
        runs += [(method, None, None, name, config) for method, config in preset_configs(name)]
    runs += [
        (f"withdraw-after-{layer}", None, f"{layer}:1", None, withdrawal_config(layer)) for layer in withdraw_after
    ]
    results = []
    done: dict[str, _Run] = {}  # a configuration asked for twice (a preset's baselines are another's) runs once
    for method, budget, schedule, preset_name, config in runs:
        same = config.replace(name="")
        run = done.get(same.to_json()) or _run(model, tokenizer, items, config, batch_size)
        done[same.to_json()] = run
        row = _row(method, budget, schedule, preset_name, run, dense, items, truth if trained else None, dense_acc)
        results.append(asdict(row))
    return {
        "dense": {
            "accuracy": dense_acc,
            "prefill_ms": statistics.median(dense.ms_per_sample),
            "samples": len(items),
        },
        "results": results,
    }


def preset_configs(preset: str) -> list[tuple[str, SparseConfig]]:
    """A product preset and, at its own prune layers and equivalent-token target, FastV's and random scoring
    (neither recycles; cross-frame presets' baselines skip the merging): ``[(method, config), ...]``.

    Raises:
        ValueError: an unknown preset, or one that prunes nothing or not by a target fraction.
    """
    config = SparseConfig.preset(preset)
    if config.target_fraction is None or not config.prune_layers:
        raise ValueError(f"preset {preset!r} has no equivalent-token target to compare baselines at")
    plain = config.replace(
        temporal_merge=None,
        merge_floor=None,
        static_threshold=None,
        recycle_ratio=0.0,
        recycle_time_weight=0.0,
        weigh_merged=False,
    )
    return [
        (config.method, config),
        ("fastv", plain.replace(method="fastv", name=f"fastv@{preset}")),
        ("random", plain.replace(method="random", name=f"random@{preset}")),
    ]


def withdrawal_config(layer: int) -> SparseConfig:
    """One random visual token kept after decoder layer ``layer``, none recycled: what the model answers once
    its layers after ``layer`` can no longer read the video."""
    return SparseConfig(
        prune_layers=(layer,), keep_tokens=(1,), method="random", recycle_ratio=0.0, name=f"withdraw-{layer}"
    )


def chance_bounds(items: list[Question], keep_fractions: tuple[float, ...], seed: int = 0) -> dict[str, Any]:
    """Per family: mean evidence tokens and the accuracy that keeping a random share of the visual tokens allows
    by construction (:func:`sparsevlm.tiny.hard_qa.chance_bound`; hard-split families only)."""
    rng = np.random.default_rng(seed)
    per_family: dict[str, list[tuple[float, ...]]] = {}
    for q in items:
        bounds = tuple(chance_bound(q.sample, q.qa, f, rng, draws=400) for f in keep_fractions)
        per_family.setdefault(q.qa.family, []).append((float(len(q.evidence)), *bounds))
    out: dict[str, Any] = {}
    for family, values in sorted(per_family.items()):
        table = np.asarray(values)
        out[family] = {"questions": len(values), "evidence_tokens": float(table[:, 0].mean())}
        out[family] |= {f"random_{f:g}": float(table[:, 1 + k].mean()) for k, f in enumerate(keep_fractions)}
    every = np.asarray([v for values in per_family.values() for v in values])
    out["all"] = {f"random_{f:g}": float(every[:, 1 + k].mean()) for k, f in enumerate(keep_fractions)}
    return out


def _row(
    method: str,
    budget: float | None,
    schedule: str | None,
    preset: str | None,
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
    error = math.sqrt(accuracy * (1 - accuracy) / len(items)) if accuracy is not None else None
    return FidelityRow(
        method=method,
        budget=budget,
        schedule=schedule,
        preset=preset,
        agreement=float((pred == dense_pred).float().mean()),
        kl=float(kl.mean()),
        evidence_recall=statistics.mean(recalls) if recalls else None,
        accuracy=accuracy,
        standard_error=error,
        family_accuracy=families,
        retention=retention,
        equivalent_tokens=statistics.mean(run.equivalent),
        equivalent_fraction=statistics.mean(run.fraction),
        prefill_flops_ratio=statistics.mean(run.flops_ratio),
        prefill_ms=statistics.median(run.ms_per_sample),
    )
