"""Per-sample statistics of a sparsified prefill.

The token arithmetic they follow (equivalent tokens, prefill FLOPs, recycling counts) is in
:mod:`sparsevlm.token_counts`, torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sparsevlm.token_counts import equivalent_tokens, prefill_flops

__all__ = ["PrefillRecorder", "PruneRecord", "SampleStats", "dense_stats"]

if TYPE_CHECKING:
    from sparsevlm.sequence import Layout


@dataclass
class SampleStats:
    """What happened to one batch row during the last prefill.

    Attributes:
        visual_tokens_in: visual tokens entering the language model.
        visual_tokens_per_layer: visual tokens entering each decoder layer.
        equivalent_tokens: mean over layers of the visual count after each layer.
        kept_indices: pruning layer -> sorted 1-D LongTensor of the original visual-token indices kept there
            (recycled cluster tokens are not in it).
        scores: pruning layer -> 1-D float tensor, the score of each visual token present at that layer.
        raters: 1-D LongTensor, positions (in the row's input sequence) of the rater text tokens.
        prefill_flops: FLOPs of this prefill by the formula.
        dense_prefill_flops: the same formula for the unpruned sequence.
        seq_len_per_layer: this row's tokens (padding excluded) entering each layer. A layer's KV cache holds
            the batch's padded length there, the longest row's count (equal to this one at batch 1).
        recycled_indices: pruning layer -> original visual indices merged into cluster tokens there.
        clusters: pruning layer -> number of merged cluster tokens added there.
        removed_by_merge: visual tokens removed by temporal (cross-frame) merging before the LLM.
        removed_by_pruning: net visual tokens removed inside the LLM (pruned minus recycled clusters added).
        reduced_kept: original visual indices that survive the frame reduction before the LLM (temporal merging
            or spatial pooling; each stands for the tokens merged into it); None when no reduction ran.
    """

    visual_tokens_in: int
    visual_tokens_per_layer: list[int]
    equivalent_tokens: float
    kept_indices: dict[int, torch.Tensor]
    scores: dict[int, torch.Tensor]
    raters: torch.Tensor
    prefill_flops: float
    dense_prefill_flops: float
    seq_len_per_layer: list[int] = field(default_factory=list)
    recycled_indices: dict[int, torch.Tensor] = field(default_factory=dict)
    clusters: dict[int, int] = field(default_factory=dict)
    removed_by_merge: int = 0
    removed_by_pruning: int = 0
    reduced_kept: torch.Tensor | None = None

    @property
    def flops_ratio(self) -> float:
        """Sparse over dense prefill FLOPs."""
        return self.prefill_flops / self.dense_prefill_flops if self.dense_prefill_flops else 1.0


@dataclass
class PruneRecord:
    """One pruning layer's decisions for the whole batch, on the device until the prefill ends."""

    visual_index: torch.Tensor  # [B, L] of the layout that was pruned
    present: torch.Tensor  # [B, L] bool: the visual tokens scored there
    scores: torch.Tensor  # [B, L]
    kept: torch.Tensor  # [B, L] bool
    recycled: torch.Tensor  # [B, L] bool: deleted tokens merged into cluster tokens
    clusters: list[int]  # cluster tokens added per row
    pruned: list[bool]  # rows this layer pruned


class PrefillRecorder:
    """Collects the per-row statistics of one prefill.

    Token counts come from the layouts' host-side counts; the per-token decisions (kept, recycled, scores,
    raters) stay on the device while the prefill runs and are read back once, in :meth:`finish`, a few
    transfers per pruning layer whatever the batch size.
    """

    def __init__(self, batch: int, raters: torch.Tensor, input_lens: list[int]) -> None:
        self.batch = batch
        self.input_lens = input_lens  # tokens of each row before any merging or pruning (the dense cost)
        self.raters = raters
        self.seq_lens: list[list[int]] = [[] for _ in range(batch)]
        self.visual: list[list[int]] = [[] for _ in range(batch)]
        self.layers: dict[int, PruneRecord] = {}
        self.merged: list[int] = [0] * batch
        self.reduced_index: torch.Tensor | None = None  # [B, L] visual_index after the frame reduction
        self.rater_counts: list[int] | None = None  # raters per row, read once when first needed

    def reduced(self, layout: Layout, n_visual: list[int]) -> None:
        """The frames were reduced before the LLM: record what survived."""
        self.reduced_index = torch.where(layout.visual, layout.visual_index, -1)
        self.merged = [n - m for n, m in zip(n_visual, layout.n_visual, strict=True)]

    def enter(self, layout: Layout) -> None:
        for row in range(self.batch):
            self.seq_lens[row].append(layout.lengths[row])
            self.visual[row].append(layout.n_visual[row])

    def pruned(self, layer: int, record: PruneRecord) -> None:
        self.layers[layer] = record

    def finish(self, layout: Layout, n_visual: list[int], config: Any) -> list[SampleStats]:
        """The rows' statistics: one transfer per recorded tensor, then host-side (numpy) work per row."""
        raters = self.raters.numpy(force=True)
        reduced = self.reduced_index.numpy(force=True) if self.reduced_index is not None else None
        layers: dict[int, tuple[np.ndarray, np.ndarray, PruneRecord]] = {}
        for layer, rec in self.layers.items():
            stacked = torch.stack([rec.visual_index, rec.present.long(), rec.kept.long(), rec.recycled.long()])
            layers[layer] = (stacked.numpy(force=True), rec.scores.detach().float().numpy(force=True), rec)
        stats = []
        for row in range(self.batch):
            kept: dict[int, torch.Tensor] = {}
            scores: dict[int, torch.Tensor] = {}
            recycled: dict[int, torch.Tensor] = {}
            clusters: dict[int, int] = {}
            for layer, (flags, layer_scores, rec) in layers.items():
                if not rec.pruned[row]:
                    continue
                index, present = flags[0, row], flags[1, row].astype(bool)
                scores[layer] = torch.from_numpy(layer_scores[row, present].copy())
                kept[layer] = _originals(index, flags[2, row].astype(bool))
                if rec.clusters[row]:
                    recycled[layer] = _originals(index, flags[3, row].astype(bool))
                    clusters[layer] = rec.clusters[row]
            after = [*self.visual[row][1:], layout.n_visual[row]]
            dense_len = self.input_lens[row]
            stats.append(
                SampleStats(
                    visual_tokens_in=n_visual[row],
                    visual_tokens_per_layer=self.visual[row],
                    equivalent_tokens=equivalent_tokens(after),
                    kept_indices=kept,
                    scores=scores,
                    raters=torch.from_numpy(np.flatnonzero(raters[row])),
                    prefill_flops=prefill_flops(self.seq_lens[row], config.hidden_size, config.intermediate_size),
                    dense_prefill_flops=prefill_flops(
                        [dense_len] * len(self.seq_lens[row]), config.hidden_size, config.intermediate_size
                    ),
                    seq_len_per_layer=self.seq_lens[row],
                    recycled_indices=recycled,
                    clusters=clusters,
                    removed_by_merge=self.merged[row],
                    removed_by_pruning=n_visual[row] - self.merged[row] - layout.n_visual[row],
                    reduced_kept=_originals(reduced[row], reduced[row] >= 0) if reduced is not None else None,
                )
            )
        return stats


def _originals(visual_index: np.ndarray, chosen: np.ndarray) -> torch.Tensor:
    """Sorted original visual indices of the chosen tokens (merged cluster tokens left out)."""
    index = visual_index[chosen]
    return torch.from_numpy(np.sort(index[index >= 0]))


def dense_stats(config: Any, visual: torch.Tensor, attention_mask: torch.Tensor | None) -> list[SampleStats]:
    """Statistics of an unpruned prefill (the dense preset); one read of the row counts."""
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(visual)
    n_visual, n_valid = torch.stack([(visual & valid).sum(1), valid.sum(1)]).tolist()
    stats = []
    for n_vis, n in zip(n_visual, n_valid, strict=True):
        lens = [n] * config.num_hidden_layers
        flops = prefill_flops(lens, config.hidden_size, config.intermediate_size)
        stats.append(
            SampleStats(
                visual_tokens_in=n_vis,
                visual_tokens_per_layer=[n_vis] * config.num_hidden_layers,
                equivalent_tokens=float(n_vis),
                kept_indices={},
                scores={},
                raters=torch.zeros(0, dtype=torch.long),
                prefill_flops=flops,
                dense_prefill_flops=flops,
                seq_len_per_layer=lens,
            )
        )
    return stats
