"""The token layout of a batch while it is being pruned, and the attention masks that go with it.

Rows are packed to the left-padded form that ``generate`` uses: after pruning, rows may differ in length
(rank mode, different prompt lengths), so every pruning step rebuilds the batch from its surviving tokens
and re-pads it on the left, for all rows at once (one scatter per field, no per-row Python). The token
counts that shape the new tensors (each row's length and visual count) are kept on the host beside the
tensors, so a rebuild needs no device-to-host synchronisation. Pure tensor code: no transformers modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from sparsevlm.transfer import to_device

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
        lengths: real tokens per row (host ints, ``valid.sum(1)``).
        n_visual: visual tokens per row (host ints, ``visual.sum(1)``).
        weight: ``[B, L]`` float32, how many tokens each token stands for in attention (a merged token weighs
            its members: ``SparseConfig.weigh_merged``; 1 elsewhere), or None when every token weighs one.
    """

    hidden: torch.Tensor
    position_ids: torch.Tensor
    valid: torch.Tensor
    visual_index: torch.Tensor
    rater: torch.Tensor
    lengths: tuple[int, ...]
    n_visual: tuple[int, ...]
    weight: torch.Tensor | None = None

    def key_bias(self) -> torch.Tensor | None:
        """``[B, L]`` ``log(weight)``, what attention adds to its logits on each key, or None (all zero)."""
        return None if self.weight is None else self.weight.log()

    @property
    def visual(self) -> torch.Tensor:
        """``[B, L]`` bool: visual tokens present (original or merged)."""
        return self.valid & (self.visual_index != TEXT)

    @property
    def padded(self) -> bool:
        """True when some row is shorter than the batch (known on the host)."""
        return min(self.lengths) < self.hidden.shape[1]

    def with_hidden(self, hidden: torch.Tensor) -> Layout:
        return replace(self, hidden=hidden)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]``: the tokens of ``x`` (``[B, L, D]``) at the sequence positions ``index`` (``[B, N]`` long),
    row by row."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def visual_indices(visual: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` long: each visual token's index among its row's visual tokens (``0..n_b - 1``, in sequence
    order), ``TEXT`` at every other token; ``visual`` is ``[B, L]`` bool."""
    return torch.where(visual, visual.long().cumsum(1) - 1, TEXT)


def last_positions(valid: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """``[B]``: the position id of each row's last real token (``valid`` and ``position_ids`` are ``[B, L]``;
    a row without real tokens gives its first column's)."""
    last = valid.long().cumsum(1).argmax(1)  # [B]: the first column where the count of real tokens peaks
    return position_ids.gather(1, last[:, None]).squeeze(1)


@dataclass(frozen=True)
class Inserted:
    """Tokens to insert into each row right after its last surviving visual token.

    Attributes:
        hidden: ``[B, C, D]``; rows with fewer than ``C`` tokens are padded.
        position_ids: ``[B, C]`` their positions (ignored when the rebuild is compact).
        counts: tokens inserted per row (host ints).
        weight: ``[B, C]`` how many tokens each inserted token stands for, or None (one each).
    """

    hidden: torch.Tensor
    position_ids: torch.Tensor
    counts: list[int]
    weight: torch.Tensor | None = None


def rebuild(
    layout: Layout, deleted: torch.Tensor, n_deleted: list[int], inserted: Inserted | None = None, compact: bool = False
) -> Layout:
    """Drop tokens of every row, insert merged tokens after each row's last surviving visual token, re-pad.

    Args:
        layout: the batch.
        deleted: ``[B, L]`` bool, the tokens to drop: visual tokens only (the new ``n_visual`` counts them out);
            ``n_deleted`` their count per row.
        inserted: merged tokens to insert, or None.
        compact: renumber each row's positions consecutively from its first position (paper v1 code).

    Returns:
        The new left-padded layout; a row keeps its surviving tokens in order.
    """
    b, length = layout.hidden.shape[:2]
    device = layout.hidden.device
    counts = inserted.counts if inserted is not None else [0] * b
    lengths = tuple(n - m + c for n, m, c in zip(layout.lengths, n_deleted, counts, strict=True))
    new_len = max(lengths)
    keep = layout.valid & ~deleted  # [B, L]
    rank = keep.long().cumsum(1) - 1  # [B, L]: index among the row's survivors
    pad = new_len - to_device(lengths, device)  # [B]
    at = to_device(counts, device)  # [B] tokens inserted per row
    # Insert after the last surviving visual token: survivors ranked at or after it shift by the insertion.
    survivor_visual = keep & (layout.visual_index != TEXT)
    after = torch.where(survivor_visual, rank, -1).amax(1) + 1  # [B]: rank of the first token after it
    dest = pad[:, None] + rank + torch.where(rank >= after[:, None], at[:, None], 0)  # [B, L]
    dest = torch.where(keep, dest, new_len)  # dropped tokens go to a spare column that is cut off

    width = inserted.hidden.shape[1] if inserted is not None else 0
    slot = torch.arange(width, device=device)[None, :]
    target = torch.where(slot < at[:, None], pad[:, None] + after[:, None] + slot, new_len)  # [B, C] inserted

    def place(values: torch.Tensor, fill: float | int | bool, extra: torch.Tensor) -> torch.Tensor:
        """``values`` ``[B, L, ...]`` moved to ``dest`` and ``extra`` ``[B, C, ...]`` to ``target``, re-padded."""
        out = values.new_full((b, new_len + 1, *values.shape[2:]), fill)
        trailing = [1] * (values.dim() - 2)
        out.scatter_(1, dest.view(b, length, *trailing).expand_as(values), values)
        if width:
            out.scatter_(1, target.view(b, width, *trailing).expand_as(extra), extra.to(values.dtype))
        return out[:, :new_len]

    flags = torch.ones(b, width, dtype=torch.bool, device=device)
    hidden = place(layout.hidden, 0.0, inserted.hidden if inserted is not None else layout.hidden[:, :0])
    positions = place(
        layout.position_ids, 0, inserted.position_ids if inserted is not None else layout.position_ids[:, :0]
    )
    valid = place(keep, False, flags)
    visual_index = place(layout.visual_index, TEXT, layout.visual_index.new_full((b, width), MERGED))
    rater = place(layout.rater & keep, False, ~flags)
    weight = None
    if layout.weight is not None or (inserted is not None and inserted.weight is not None):
        kept_weight = layout.weight if layout.weight is not None else torch.ones(b, length, device=device)
        extra = inserted.weight if inserted is not None and inserted.weight is not None else flags.float()
        weight = place(kept_weight, 1.0, extra)  # padding weighs one: its keys are masked anyway
    if compact:
        first = positions.gather(1, pad.clamp_max(new_len - 1)[:, None])  # [B, 1] each row's first position
        positions = torch.where(valid, first + torch.arange(new_len, device=device)[None, :] - pad[:, None], 0)
    n_vis = tuple(v - m + c for v, m, c in zip(layout.n_visual, n_deleted, counts, strict=True))
    return Layout(hidden, positions, valid, visual_index, rater, lengths, n_vis, weight)


def build_attention_mask(
    kv_valid: torch.Tensor,
    q_len: int,
    implementation: str,
    dtype: torch.dtype,
    padded: bool,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """A causal padding mask for queries that are the last ``q_len`` entries of the keys.

    Every query may also attend to itself, so padded query rows are never fully masked (no NaN). With
    ``key_bias`` (``[B, K]``, added to every query's logit on that key: ``log`` of a merged token's weight, so
    that a key standing for ``w`` tokens takes the attention share of ``w`` copies of itself) the mask is an
    additive float mask whatever the implementation.

    Args:
        kv_valid: ``[B, K]`` bool, which keys are real tokens.
        q_len: number of queries.
        implementation: the attention implementation (``"eager"`` needs an additive float mask, the others
            take a bool mask).
        dtype: the float dtype of an additive mask.
        padded: whether any key is padding (known on the host; saves a device-to-host synchronisation).
        key_bias: ``[B, K]`` float logit offsets of the keys, or None.

    Returns:
        ``[B, 1, q_len, K]`` mask, or None when sdpa can use its own causal path (no padding, no key bias, and
        either one query or as many queries as keys).
    """
    b, k = kv_valid.shape
    if implementation == "sdpa" and not padded and q_len in (1, k) and key_bias is None:
        return None
    device = kv_valid.device
    q_at = torch.arange(k - q_len, k, device=device)  # [q]: key index of each query
    k_at = torch.arange(k, device=device)  # [K]
    allowed = (k_at[None, :] <= q_at[:, None])[None] & kv_valid[:, None, :]  # [B, q, K]
    allowed = allowed | (k_at[None, :] == q_at[:, None])[None]
    if key_bias is not None:
        bias = key_bias.to(dtype)[:, None, :].expand(b, q_len, k)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    if implementation == "eager":
        mask = torch.zeros(b, q_len, k, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return allowed[:, None]


def frame_index(visual_index: torch.Tensor, tokens_per_frame: int | None) -> torch.Tensor:
    """``[..., L]`` frame of each visual token; a merged cluster token (or any other token) takes the frame of
    the visual token before it (0 before the first)."""
    frame = torch.where(visual_index >= 0, visual_index // (tokens_per_frame or 1), -1)
    at = torch.arange(frame.shape[-1], device=frame.device).expand_as(frame)
    source = torch.where(frame >= 0, at, 0).cummax(dim=-1).values  # forward fill, vectorised
    return frame.gather(-1, source).clamp_min(0)


FrameReduction = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def reduce_frames(
    layout: Layout,
    tokens_per_frame: int,
    reduce: FrameReduction,
    compact: bool = False,
    room: list[int] | None = None,
) -> Layout:
    """Reduce the video frames of every row before the LLM, rows with the same frame count together.

    Args:
        layout: the batch before the first decoder layer.
        tokens_per_frame: visual tokens of one frame.
        reduce: ``[G, T, P, D]`` frames and ``[G]`` the fewest tokens each video must lose -> (``[G, T, P, D]``
            new features, ``[G, T, P]`` bool tokens that survive), e.g. temporal merging
            (:func:`sparsevlm.recycle.temporal_merge_batch`) or spatial pooling
            (:func:`sparsevlm.pooling.spatial_pool`).
        compact: renumber positions consecutively (``positions="compact"``).
        room: per row, the most visual tokens it may keep (to stay inside the model's context); None: no limit.

    A row whose visual tokens are not whole frames is left as it is, with a warning. One device-to-host
    transfer reads how many tokens survive in each row.
    """
    b, length, d = layout.hidden.shape
    device = layout.hidden.device
    hidden = layout.hidden.clone()
    deleted = torch.zeros(b, length, dtype=torch.bool, device=device)
    order = (~layout.visual).to(torch.int8).argsort(dim=1, stable=True)  # [B, L] visual positions first
    groups: dict[int, list[int]] = {}
    for row, n in enumerate(layout.n_visual):
        if n == 0 or n % tokens_per_frame:
            if n:
                logger.warning(
                    "row %d: %d visual tokens are not whole frames of %d; frames left unreduced",
                    row,
                    n,
                    tokens_per_frame,
                )
            continue
        groups.setdefault(n, []).append(row)
    for n, rows in groups.items():
        index = to_device(rows, device)
        positions = order[index, :n]  # [G, n]
        frames = hidden[index[:, None], positions]  # [G, n, D]
        least = [max(0, n - room[row]) if room is not None else 0 for row in rows]
        shaped = frames.view(len(rows), n // tokens_per_frame, tokens_per_frame, d)
        tokens, keep = reduce(shaped, to_device(least, device))
        hidden[index[:, None], positions] = tokens.reshape(len(rows), n, d).to(hidden.dtype)
        deleted[index[:, None], positions] = ~keep.reshape(len(rows), n)
    n_deleted = deleted.sum(1).tolist() if groups else [0] * b
    return rebuild(layout.with_hidden(hidden), deleted, n_deleted, compact=compact)
