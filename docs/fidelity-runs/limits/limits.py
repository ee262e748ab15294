"""What limits every scorer on the hard split: a dev-seed investigation (seed 0 only, never a reporting seed).

Not part of the product: it patches the pruning step of a loaded ``tiny-deep`` from the outside to ask two
questions the benchmark's rows cannot answer.

1. **The ceiling of any scorer at a schedule.** ``+oracle`` ranks the question's own evidence tokens first (the
   rest at random) at every pruning step: no text-guided scorer can keep more of the evidence.
2. **The softmax share.** Pruning removes keys from every later softmax, so whatever survives takes a larger share
   of the attention than it had in the dense model. ``+oraclemass`` gives each surviving non-evidence visual
   token's key ``+ log(deleted / kept non-evidence tokens)`` so the background keeps its dense share (ToMe's
   proportional attention, with the oracle's knowledge of what is background); ``+mass`` does the same without
   the oracle: each deleted visual token's weight goes to its most similar surviving visual token (cosine of the
   layer's output hidden states) and every surviving key gets ``+ log(weight)``.

Every row also prints the evidence recall after each pruning step. Modifiers: ``+fastv``, ``+random`` (the
baselines, no recycling or cross-frame ranking), ``+norecycle``, ``+paper`` (the paper's unweighted recycling,
the presets' before 2026-12-05). Prefill only (one answer token), as the benchmark.

    python docs/fidelity-runs/limits/limits.py hard 128 video-25+oracle video-25+oracle+oraclemass ... > out.txt
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import sparsevlm.bench.fidelity as F
import sparsevlm.modeling as M
from sparsevlm.config import SparseConfig
from sparsevlm.sequence import build_attention_mask
from sparsevlm.tiny.loading import load_tiny

STATE: dict[str, Any] = {"modes": set(), "evidence": [], "layout": None, "weight": None, "recall": {}}


def oracle_scores(attention: torch.Tensor, rater_valid: torch.Tensor) -> torch.Tensor:
    """In place of ``visual_scores``: the evidence tokens of each row first, the rest in random order."""
    layout = STATE["layout"]
    index = layout.visual_index  # [B, L]
    table = torch.zeros(index.shape[0], 521)
    for row, evidence in enumerate(STATE["evidence"]):
        table[row, evidence] = 1.0
    hit = table.gather(1, index.clamp(min=0)) * (index >= 0)
    return hit + 0.5 * torch.rand(hit.shape)


def prune(
    self: Any, layer_idx: int, layer: Any, hidden_in: torch.Tensor, keys: torch.Tensor, layout: Any, *a: Any
) -> Any:
    """The product's pruning step, with the oracle's scores and the similarity weight bookkeeping around it."""
    STATE["layout"] = layout
    new = PRUNE(self, layer_idx, layer, hidden_in, keys, layout, *a)
    if "mass" not in STATE["modes"] or new is None:
        return new
    weight = STATE["weight"]  # [B, 520]: how many original visual tokens each one stands for
    features = torch.nn.functional.normalize(layout.hidden.float(), dim=-1)
    for row in range(layout.hidden.shape[0]):
        old, kept_index = layout.visual_index[row], new.visual_index[row]
        kept = (old >= 0) & torch.isin(old, kept_index[kept_index >= 0])
        deleted = (old >= 0) & ~kept
        if deleted.any() and kept.any():
            nearest = (features[row][deleted] @ features[row][kept].T).argmax(1)
            weight[row].index_add_(0, old[kept][nearest], weight[row][old[deleted]])
            weight[row][old[deleted]] = 0
    return new


def mask_and_rope(self: Any, layout: Any) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
    """The product's mask (its own weights included) with this script's key offsets added to the visual keys."""
    index = layout.visual_index
    original = index >= 0
    key_bias = layout.key_bias()
    if key_bias is None:
        key_bias = torch.zeros(layout.valid.shape)
    if "mass" in STATE["modes"]:
        weight = STATE["weight"].gather(1, index.clamp(min=0)).where(original, torch.ones(()))
        key_bias = key_bias + weight.clamp_min(1e-6).log()
    if "oraclemass" in STATE["modes"]:
        key_bias = key_bias.clone()
        for row, evidence in enumerate(STATE["evidence"]):
            background = original[row] & ~torch.isin(index[row], evidence)
            kept, total = int(background.sum()), 520 - len(evidence)
            if 0 < kept < total:
                key_bias[row, background] += math.log(total / kept)
    length = layout.hidden.shape[1]
    mask = build_attention_mask(layout.valid, length, "eager", layout.hidden.dtype, layout.padded, key_bias)
    return mask, self.rotary_emb(layout.hidden, layout.position_ids)


PRUNE = M.SparseLlamaModel._prune
M.SparseLlamaModel._prune = prune  # type: ignore[method-assign]
M.SparseLlamaModel._mask_and_rope = mask_and_rope  # type: ignore[method-assign]
VISUAL_SCORES = M.visual_scores
LAST_STATS = F.last_stats


def noting_stats(model: Any) -> Any:
    """``last_stats``, also noting each row's evidence recall after every pruning step."""
    stats = LAST_STATS(model)
    for evidence, sample in zip(STATE["evidence"], stats, strict=True):
        wanted = set(evidence.tolist())
        if not wanted:  # a "no" binding question has no evidence (the benchmark's recall skips it too)
            continue
        for layer, kept in sample.kept_indices.items():
            share = len(wanted & set(kept.tolist())) / len(wanted)
            STATE["recall"].setdefault(layer, []).append(share)
    return stats


F.last_stats = noting_stats


def main() -> None:
    split, samples, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    model, tokenizer, _ = load_tiny("tiny-deep")
    items = F.benchmark_questions(0, samples, question_split=split)
    evidence = {id(q.sample.frames): torch.as_tensor(q.evidence) for q in items}
    encode = F.encode_prompts

    def encode_and_note(tok: Any, questions: list[str], frames: list[Any], patch: int) -> dict[str, torch.Tensor]:
        STATE["evidence"] = [evidence[id(f)] for f in frames]
        STATE["weight"] = torch.ones(len(frames), 520)  # a new prefill: every visual token stands for itself
        return encode(tok, questions, frames, patch)

    F.encode_prompts = encode_and_note
    truth = torch.tensor([tokenizer(" " + q.qa.answer, add_special_tokens=False)["input_ids"][0] for q in items])
    dense = F._run(model, tokenizer, items, SparseConfig.preset("dense"), 16)
    dense_accuracy = float((dense.log_probs.argmax(-1) == truth).float().mean())
    print(f"{split} split, dev seed 0, {samples} questions; dense accuracy {dense_accuracy:.3f}")
    for name in names:
        base, *mods = name.split("+")
        STATE["modes"] = set(mods)
        torch.manual_seed(0)  # the oracle's tie-break draws are each row's own, whatever ran before it
        config = SparseConfig.preset(base).replace(name=name)
        if "paper" in mods:  # the paper's unweighted recycling (the presets' before 2026-12-05)
            config = config.replace(recycle_ratio=0.3, cluster_ratio=0.1, weigh_merged=False)
        plain = {"recycle_ratio": 0.0, "static_threshold": None, "recycle_time_weight": 0.0, "weigh_merged": False}
        if "fastv" in mods or "random" in mods:
            config = config.replace(method="fastv" if "fastv" in mods else "random", **plain)
        if "oracle" in mods:
            config = config.replace(static_threshold=None)
        if "norecycle" in mods:
            config = config.replace(recycle_ratio=0.0, weigh_merged=False)
        M.visual_scores = oracle_scores if "oracle" in mods else VISUAL_SCORES
        STATE["recall"] = {}
        run = F._run(model, tokenizer, items, config, 16)
        recall: dict[int, list[float]] = STATE["recall"]
        row = F._row("x", None, None, name, run, dense, items, truth, dense_accuracy)
        steps = " / ".join(f"{statistics.mean(v):.2f}" for _, v in sorted(recall.items()))
        families = ", ".join(f"{k} {v:.2f}" for k, v in (row.family_accuracy or {}).items())
        print(
            f"{name:34s} equivalent {row.equivalent_tokens:5.1f}  retention {row.retention:5.1f}  "
            f"recall after each step {steps}  ({families})",
            flush=True,
        )


if __name__ == "__main__":
    main()
