"""Long videos: 32 frames compressed to the 8-frame budget against 8 uniformly sampled frames.

Each clip has 32 frames and a brief event: one object is on screen only between the frames a uniform
8-frame sampling takes (:func:`sparsevlm.tiny.video_qa.make_sample` with ``brief_between=8``). Asked "is
there a <that object>?" (answer yes) and about an absent object (answer no), four runs answer the same
questions:

* ``dense-8``: the 8 uniformly sampled frames, dense (the native cost, the reference of the ratios);
* ``uniform-8``: the same 8 frames under the long preset's budget (its fraction of 8 frames' tokens);
* ``long-32``: all 32 frames under the long preset (``video-long``: temporal merging, text-guided pruning
  and recycling into 8 frames' worth of tokens, positions renumbered into that range);
* ``dense-32``: all 32 frames, dense (what seeing everything costs without compression).

Accuracy is the first answer token's argmax, per question kind; costs are the prefill FLOPs (the model's
formula, relative to ``dense-8``) and the measured prefill CPU time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.config import SparseConfig
from sparsevlm.patch import apply_patch, last_stats
from sparsevlm.tiny.inputs import encode_prompts
from sparsevlm.tiny.video_qa import make_sample, uniform_frame_indices

LONG_FRAMES = 32
NATIVE_FRAMES = 8


@dataclass(frozen=True)
class LongItem:
    """One question about one long clip."""

    frames: np.ndarray  # uint8 [32, S, S, 3]
    question: str
    answer: str
    kind: str  # "brief" (the object of the brief event, answer yes) or "absent" (answer no)


def long_items(seed: int, videos: int) -> list[LongItem]:
    """Two questions per clip: the brief object's presence and an absent object's."""
    items = []
    for i in range(videos):
        sample = make_sample("test", seed * 100_000 + 50_000 + i, num_frames=LONG_FRAMES, brief_between=NATIVE_FRAMES)
        for qa in sample.questions:
            if qa.family == "presence":
                kind = "brief" if qa.answer == "yes" else "absent"
                items.append(LongItem(sample.frames, qa.question, qa.answer, kind))
    return items


def long_runs(preset: str) -> dict[str, tuple[SparseConfig, bool]]:
    """Run name -> (config, all 32 frames?)."""
    long = SparseConfig.preset(preset)
    if long.target_fraction is None:
        raise ValueError(f"preset {preset!r} has no target fraction; use a long-video preset such as video-long")
    # The same equivalent-token budget on 8 frames: the plain text-guided method at the long preset's fraction.
    uniform = SparseConfig(prune_layers=long.prune_layers, target_fraction=long.target_fraction, name="uniform-8")
    dense = SparseConfig.preset("dense")
    return {
        "dense-8": (dense, False),
        "uniform-8": (uniform, False),
        "long-32": (long, True),
        "dense-32": (dense, True),
    }


def run_long(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    items: list[LongItem],
    preset: str = "video-long",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Every run of :func:`long_runs` on the same items.

    Returns:
        ``{"results": [row per run], "items": n}``; a row has accuracy overall and per kind, equivalent
        tokens, the FLOPs ratio and time ratio against ``dense-8`` and the median prefill ms per item.
    """
    patch: int = getattr(model.config.vision_config, "patch_size")  # noqa: B009 (config union type)
    answer_ids = torch.tensor([tokenizer(" " + it.answer, add_special_tokens=False)["input_ids"][0] for it in items])
    sampled = uniform_frame_indices(LONG_FRAMES, NATIVE_FRAMES)
    rows = []
    for name, (config, all_frames) in long_runs(preset).items():
        apply_patch(model, config)
        predictions, flops, equivalent, ms = [], [], [], []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            frames = [it.frames if all_frames else it.frames[sampled] for it in batch]
            enc = encode_prompts(tokenizer, [it.question for it in batch], frames, patch)
            began = time.perf_counter()
            with torch.no_grad():
                logits = model(**enc, logits_to_keep=1).logits[:, -1]
            ms.append(1000 * (time.perf_counter() - began) / len(batch))
            predictions.append(logits.argmax(-1))
            for stats in last_stats(model):
                flops.append(stats.prefill_flops)
                equivalent.append(stats.equivalent_tokens)
        correct = (torch.cat(predictions) == answer_ids).tolist()
        by_kind = {
            kind: statistics.mean(c for c, it in zip(correct, items, strict=True) if it.kind == kind)
            for kind in ("brief", "absent")
        }
        rows.append(
            {
                "run": name,
                "frames": LONG_FRAMES if all_frames else NATIVE_FRAMES,
                "config": config.name,
                "accuracy": statistics.mean(correct),
                "accuracy_brief": by_kind["brief"],
                "accuracy_absent": by_kind["absent"],
                "equivalent_tokens": statistics.mean(equivalent),
                "prefill_flops": statistics.mean(flops),
                "prefill_ms": statistics.median(ms),
            }
        )
    reference = rows[0]
    for row in rows:
        row["flops_ratio"] = row["prefill_flops"] / reference["prefill_flops"]
        row["time_ratio"] = row["prefill_ms"] / reference["prefill_ms"]
    return {"items": len(items), "preset": preset, "results": rows}
