"""The token layout of a batch while it is being pruned, and the attention masks that go with it.

Rows are packed to the left-padded form that ``generate`` uses: after pruning, rows may differ in length
(rank mode, different prompt lengths), so every pruning step rebuilds each row from its surviving tokens and
re-pads the batch on the left. Pure tensor code: no transformers modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

logger = logging.getLogger(__name__)

# visual_index codes for tokens that are not original visual tokens.
TEXT = -1
MERGED = -2


@dataclass(frozen=True)
class Layout:
    """The current sequence of a batch, left-padded.

    Attributes:
        hidden: ``[B, L, D]`` hidden states.
        position_ids: ``[B, L]`` RoPE positions.
        valid: ``[B, L]`` bool, False on padding.
        visual_index: ``[B, L]`` long: the original visual-token index (0..Lv-1), ``MERGED`` for a recycled
            cluster token, ``TEXT`` for every other token and for padding.
        rater: ``[B, L]`` bool, the rater text tokens.
    """

    hidden: torch.Tensor
    position_ids: torch.Tensor
    valid: torch.Tensor
    visual_index: torch.Tensor
    rater: torch.Tensor

    @property
    def visual(self) -> torch.Tensor:
        """``[B, L]`` bool: visual tokens present (original or merged)."""
        return self.valid & (self.visual_index != TEXT)

    def with_hidden(self, hidden: torch.Tensor) -> Layout:
        return replace(self, hidden=hidden)


@dataclass(frozen=True)
class RowTokens:
    """One row's surviving tokens, unpadded (the fields of :class:`Layout` for a single row)."""

    hidden: torch.Tensor  # [n, D]
    position_ids: torch.Tensor  # [n]
    visual_index: torch.Tensor  # [n]
    rater: torch.Tensor  # [n]


def prune_row(
    layout: Layout,
    row: int,
    deleted: torch.Tensor,
    merged: torch.Tensor | None = None,
    merged_positions: torch.Tensor | None = None,
    compact: bool = False,
) -> RowTokens:
    """Drop some tokens of one row and insert merged tokens right after its last surviving visual token.

    Args:
        layout: the batch.
        row: the row index.
        deleted: ``[M]`` positions (in the padded row) of the tokens to drop.
        merged: ``[C, D]`` merged tokens to insert, or None.
        merged_positions: ``[C]`` their position ids (ignored when ``compact``).
        compact: renumber the row's positions consecutively from its first position (paper v1 code).

    Returns:
        The row's new tokens in order.
    """
    keep = layout.valid[row].clone()
    keep[deleted] = False
    idx = keep.nonzero().squeeze(1)  # [n]
    hidden = layout.hidden[row, idx]
    positions = layout.position_ids[row, idx]
    visual_index = layout.visual_index[row, idx]
    rater = layout.rater[row, idx]
    if merged is not None and merged.shape[0] > 0:
        assert merged_positions is not None
        at = int((visual_index != TEXT).nonzero().max()) + 1
        n_merged = merged.shape[0]
        hidden = torch.cat([hidden[:at], merged.to(hidden.dtype), hidden[at:]])
        positions = torch.cat([positions[:at], merged_positions.to(positions), positions[at:]])
        visual_index = torch.cat([visual_index[:at], visual_index.new_full((n_merged,), MERGED), visual_index[at:]])
        rater = torch.cat([rater[:at], rater.new_zeros(n_merged), rater[at:]])
    if compact:
        positions = positions[0] + torch.arange(positions.shape[0], device=positions.device)
    return RowTokens(hidden, positions, visual_index, rater)


def pack_left(rows: list[RowTokens]) -> Layout:
    """Left-pad rows of different lengths into a :class:`Layout`."""
    length = max(r.hidden.shape[0] for r in rows)
    first = rows[0]
    b, d = len(rows), first.hidden.shape[1]
    hidden = first.hidden.new_zeros(b, length, d)
    positions = first.position_ids.new_zeros(b, length)
    valid = torch.zeros(b, length, dtype=torch.bool, device=first.hidden.device)
    visual_index = first.visual_index.new_full((b, length), TEXT)
    rater = torch.zeros(b, length, dtype=torch.bool, device=first.hidden.device)
    for i, r in enumerate(rows):
        n = r.hidden.shape[0]
        hidden[i, length - n :] = r.hidden
        positions[i, length - n :] = r.position_ids
        valid[i, length - n :] = True
        visual_index[i, length - n :] = r.visual_index
        rater[i, length - n :] = r.rater
    return Layout(hidden, positions, valid, visual_index, rater)


def build_attention_mask(
    kv_valid: torch.Tensor, q_len: int, implementation: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """A causal padding mask for queries that are the last ``q_len`` entries of the keys.

    Every query may also attend to itself, so padded query rows are never fully masked (no NaN).

    Args:
        kv_valid: ``[B, K]`` bool, which keys are real tokens.
        q_len: number of queries.
        implementation: the attention implementation (``"eager"`` needs an additive float mask, the others
            take a bool mask).
        dtype: the float dtype of an additive mask.

    Returns:
        ``[B, 1, q_len, K]`` mask, or None when sdpa can use its own causal path (no padding, and either one
        query or as many queries as keys).
    """
    b, k = kv_valid.shape
    if implementation == "sdpa" and bool(kv_valid.all()) and q_len in (1, k):
        return None
    device = kv_valid.device
    q_at = torch.arange(k - q_len, k, device=device)  # [q]: key index of each query
    k_at = torch.arange(k, device=device)  # [K]
    allowed = (k_at[None, :] <= q_at[:, None])[None] & kv_valid[:, None, :]  # [B, q, K]
    allowed = allowed | (k_at[None, :] == q_at[:, None])[None]
    if implementation == "eager":
        mask = torch.zeros(b, q_len, k, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return allowed[:, None]


def frame_index(visual_index: torch.Tensor, tokens_per_frame: int | None) -> torch.Tensor:
    """``[n]`` frame of each visual token; a merged cluster token takes the frame of the token before it."""
    frame = torch.where(visual_index >= 0, visual_index // (tokens_per_frame or 1), -1)
    at = torch.arange(frame.shape[0], device=frame.device)
    source = torch.where(frame >= 0, at, 0).cummax(dim=0).values  # forward fill, vectorised
    frame = frame[source]
    return frame.clamp_min(0)


def reduce_frames(
    layout: Layout,
    tokens_per_frame: int,
    reduce: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    compact: bool = False,
) -> Layout:
    """Reduce each row's video frames before the LLM, row by row.

    Args:
        layout: the batch before the first decoder layer.
        tokens_per_frame: visual tokens of one frame.
        reduce: ``[T, P, D]`` frames -> (``[T, P, D]`` new features, ``[T, P]`` bool tokens that survive), e.g.
            temporal merging (:func:`sparsevlm.recycle.temporal_merge`) or spatial pooling
            (:func:`sparsevlm.pooling.spatial_pool`).
        compact: renumber positions consecutively (``positions="compact"``).

    A row whose visual tokens are not whole frames is left as it is, with a warning.
    """
    hidden = layout.hidden.clone()
    reduced = Layout(hidden, layout.position_ids, layout.valid, layout.visual_index, layout.rater)
    rows = []
    for row in range(hidden.shape[0]):
        vis_pos = layout.visual[row].nonzero().squeeze(1)
        n = vis_pos.numel()
        if n == 0 or n % tokens_per_frame:
            logger.warning(
                "row %d: %d visual tokens are not whole frames of %d; frames left unreduced", row, n, tokens_per_frame
            )
            rows.append(prune_row(reduced, row, vis_pos[:0]))
            continue
        tokens, keep = reduce(hidden[row, vis_pos].view(n // tokens_per_frame, tokens_per_frame, -1))
        hidden[row, vis_pos] = tokens.reshape(n, -1)
        rows.append(prune_row(reduced, row, vis_pos[~keep.reshape(n)], compact=compact))
    return pack_left(rows)
