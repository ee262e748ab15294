"""What a sparse prefill decides before and between its decoder layers, as plain functions of the config and
the host-side token counts: each row's pruning schedule, the frame reduction before the LLM, the context
check, random scores for the ``random`` baseline. No transformers modules.
"""

from __future__ import annotations

import math

import torch

from sparsevlm.cluster import tiebreak_keys
from sparsevlm.config import SparseConfig
from sparsevlm.pooling import spatial_pool
from sparsevlm.recycle import temporal_merge_batch
from sparsevlm.sequence import FrameReduction, Layout, visual_indices
from sparsevlm.stats import PrefillRecorder


def frame_reduction(cfg: SparseConfig) -> FrameReduction | None:
    """What happens to the video frames before the first decoder layer: temporal merging, pooling or nothing.

    Each takes ``[G, T, P, D]`` frames of ``G`` videos and returns new features and the ``[G, T, P]`` survivors.
    """
    if cfg.temporal_merge is not None:
        threshold = cfg.temporal_merge

        def merge(frames: torch.Tensor, least: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cap = max_merged(cfg, frames.shape[1:])
            tokens, keep, _ = temporal_merge_batch(frames, cfg.segment_threshold, threshold, cap, least)
            return tokens, keep

        return merge
    if cfg.spatial_pool is not None:
        fraction = cfg.spatial_pool

        def pool(frames: torch.Tensor, least: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            g, t = frames.shape[:2]
            result = spatial_pool(frames.flatten(0, 1), fraction)  # frames pool independently
            return result.tokens.view(frames.shape), result.keep.view(g, t, -1)

        return pool
    return None


def max_merged(cfg: SparseConfig, shape: torch.Size) -> int | None:
    """How many of a ``[T, P, D]`` video's tokens temporal merging may remove under ``cfg.merge_floor``."""
    if cfg.merge_floor is None or cfg.target_fraction is None:
        return None
    frames, per_frame = int(shape[0]), int(shape[1])
    reference = (cfg.budget_frames or frames) * per_frame
    return max(0, frames * per_frame - math.ceil(cfg.merge_floor * cfg.target_fraction * reference))


def row_schedules(
    cfg: SparseConfig, num_layers: int, n_visual: tuple[int, ...], n_input: list[int], tokens_per_frame: int | None
) -> list[dict[int, int | None]]:
    """Each row's ``{layer: keep}`` schedule (rows without visual tokens: none), computed once per distinct
    (visual count, reference) pair."""
    cache: dict[tuple[int, int], dict[int, int | None]] = {}
    out = []
    for m, n in zip(n_visual, n_input, strict=True):
        ref = cfg.budget_frames * tokens_per_frame if cfg.budget_frames and tokens_per_frame else n
        if (m, ref) not in cache:
            cache[m, ref] = cfg.schedule(num_layers, m, ref) if m > 0 else {}
        out.append(cache[m, ref])
    return out


def check_context(widest: int, context: int, reserve: int) -> None:
    """Refuse a prefill whose ``widest`` row (plus ``reserve`` new tokens) would pass ``max_position_embeddings``.

    Pruning only lowers positions (compact) or keeps them (original), so checking the sequence entering the
    first layer checks every layer.
    """
    if widest + reserve > context:
        raise ValueError(
            f"the prompt reaches position {widest + reserve - 1} with {reserve} new tokens, beyond the model's "
            f"context of {context} tokens (max_position_embeddings); use fewer frames, a preset with "
            "compact positions and a frame budget (video-long), or fewer new tokens"
        )


def layer_seed(seed: int, layer: int) -> int:
    """The seed of one pruning layer's random draws (the ``random`` baseline's scores, the clustering's
    tie-break keys): a prime stride keeps the (seed, layer) pairs of any realistic model apart."""
    return seed * 1_000_003 + layer


def step_keep_counts(pruned: list[bool], keep: list[int | None], n_visual: tuple[int, ...]) -> list[int]:
    """Visual tokens each row keeps at one pruning step (host ints): its schedule's count, at most what it has,
    where the step prunes the row; all of them where it does not.

    Args:
        pruned: per row, whether this layer is a pruning step of its schedule.
        keep: per row, the schedule's count (None where the step does not prune the row).
        n_visual: per row, the visual tokens present.
    """
    return [min(k, n) if p and k is not None else n for p, k, n in zip(pruned, keep, n_visual, strict=True)]


def keep_at_most_distinct(keep: list[int | None], distinct: list[int]) -> list[int | None]:
    """Keep counts capped by each row's distinct (non-repeating) visual tokens, at least 1 (``repeats="never"``:
    a step keeps no repeat of the previous frame)."""
    return [k if k is None else max(1, min(k, d)) for k, d in zip(keep, distinct, strict=True)]


def rater_counts(layout: Layout, record: PrefillRecorder) -> list[int]:
    """Raters per row (host ints): fixed for the whole prefill, so counted once and kept by the recorder."""
    if record.rater_counts is None:
        record.rater_counts = layout.rater.sum(1).tolist()
    return record.rater_counts


def random_scores(present: torch.Tensor, n_visual: tuple[int, ...], seed: int) -> torch.Tensor:
    """``[B, L]`` random scores of the visual tokens: row ``b`` gets the first ``n_visual[b]`` draws of a
    generator seeded with ``seed`` (:func:`sparsevlm.cluster.tiebreak_keys`: the same draw alone or in a batch)."""
    table = tiebreak_keys(list(n_visual), seed, present.device)  # [B, max n_visual]
    if table.shape[1] == 0:  # no visual token in any row
        return torch.full(present.shape, float("-inf"), device=present.device)
    slot = visual_indices(present).clamp(0, table.shape[1] - 1)  # [B, L]; non-visual slots are masked below
    return torch.where(present, table.gather(1, slot), float("-inf"))
