"""Pure tensor functions of SparseVLM's token recycling (DPC-KNN merging) and cross-frame merging.

The deleted visual tokens with the best scores are clustered by density-peak clustering over k nearest
neighbours (DPC-KNN, as in the paper code's ``cluster_and_merge``; batched in :mod:`sparsevlm.cluster`) and
each cluster becomes one token, the plain mean of its members (paper Sec. 3.3; the code averages, the paper
text says "sum"). :func:`recycle_rows` does this for every row of a batch at once, and a row alone gets what it
gets in any batch. Before the LLM, :func:`temporal_merge_batch` merges tokens that stay the same across frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsevlm.cluster import cluster_means, dpc_knn, tiebreak_keys
from sparsevlm.sequence import gather_tokens
from sparsevlm.token_counts import recycle_counts
from sparsevlm.transfer import to_device


@dataclass(frozen=True)
class RecycledRows:
    """Recycling of every row of a padded batch, in the batch's own token positions.

    Attributes:
        tokens: ``[B, C, D]`` merged tokens (``C = max C_b``; rows with fewer clusters are padded).
        counts: ``C_b`` per row (host ints).
        cluster_valid: ``[B, C]`` bool, ``c < C_b``.
        members: ``[B, R]`` sequence position of each recycled token (``R = max n_r``).
        member_valid: ``[B, R]`` bool.
        assign: ``[B, R]`` cluster of each recycled token.
        centres: ``[B, C]`` sequence position of each cluster's centre token.
    """

    tokens: torch.Tensor
    counts: list[int]
    cluster_valid: torch.Tensor
    members: torch.Tensor
    member_valid: torch.Tensor
    assign: torch.Tensor
    centres: torch.Tensor

    def member_mask(self, like: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool (the shape and device of ``like``): the sequence positions of the recycled tokens."""
        return torch.zeros_like(like, dtype=torch.bool).scatter_(1, self.members, self.member_valid)

    def weights(self, weight: torch.Tensor | None) -> torch.Tensor:
        """``[B, C]`` how many tokens each merged token stands for: the sum of its members' ``weight`` (``[B, L]``
        by sequence position; None: one each), 0 on padding clusters."""
        member = (
            torch.ones_like(self.members, dtype=torch.float32) if weight is None else weight.gather(1, self.members)
        )
        member = member * self.member_valid
        out = torch.zeros(self.tokens.shape[:2], dtype=torch.float32, device=self.tokens.device)
        return out.scatter_add_(1, self.assign, member)

    def earliest(self, key: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` sequence position of each cluster's member with the smallest ``key`` (``[B, L]``)."""
        member_key = key.gather(1, self.members).float().masked_fill(~self.member_valid, float("inf"))  # [B, R]
        clusters = torch.arange(self.tokens.shape[1], device=key.device)
        mine = self.assign[:, :, None] == clusters[None, None, :]  # [B, R, C]
        first = torch.where(mine, member_key[:, :, None], float("inf")).argmin(dim=1)  # [B, C]
        return self.members.gather(1, first)


def recycle_rows(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    deleted: torch.Tensor,
    n_deleted: list[int],
    recycle_ratio: float,
    cluster_ratio: float,
    seed: int,
    times: torch.Tensor | None = None,
    time_weight: float = 0.0,
) -> RecycledRows | None:
    """Recycle the best-scored deleted tokens of every row into merged tokens, with no host synchronisation.

    Args:
        hidden: ``[B, L, D]`` the pruning layer's output; scores: ``[B, L]`` scores of the visual tokens.
        deleted: ``[B, L]`` bool, the deleted tokens; ``n_deleted`` their count per row (host ints).
        seed: seeds the clustering's tie-break keys (the same keys for a row alone or in a batch).
        times: ``[B, L]`` frame index of each token, or None.

    Returns:
        The merged tokens and their provenance, or None when no row recycles anything.
    """
    plan = [recycle_counts(n, recycle_ratio, cluster_ratio) for n in n_deleted]
    n_members = [r for r, _ in plan]
    counts = [c for _, c in plan]
    width, max_c = max(n_members, default=0), max(counts, default=0)
    if width == 0:
        return None
    device = hidden.device
    order = scores.masked_fill(~deleted, float("-inf")).argsort(dim=1, descending=True, stable=True)
    members = order[:, :width]  # [B, R] best-scored deleted tokens first
    member_valid = torch.arange(width, device=device)[None, :] < to_device(n_members, device)[:, None]
    points = gather_tokens(hidden, members)  # [B, R, D]
    member_times = times.gather(1, members) if times is not None else None
    clusters = dpc_knn(
        points,
        member_valid,
        to_device(counts, device),
        max_c,
        tiebreak_keys(n_members, seed, device),
        member_times,
        time_weight,
    )
    tokens = cluster_means(points, member_valid, clusters.assign, max_c)
    return RecycledRows(
        tokens=tokens,
        counts=counts,
        cluster_valid=clusters.centre_valid,
        members=members,
        member_valid=member_valid,
        assign=clusters.assign,
        centres=members.gather(1, clusters.centres),
    )


def frame_similarity(frames: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of same-position tokens between consecutive frames.

    Args:
        frames: ``[..., T, P, D]`` visual tokens of one video (or a batch of videos), ``P`` tokens per frame.

    Returns:
        ``[..., T - 1]``: entry ``t`` compares frame ``t + 1`` with frame ``t``.
    """
    x = torch.nn.functional.normalize(frames.float(), dim=-1)
    return (x[..., 1:, :, :] * x[..., :-1, :, :]).sum(-1).mean(-1)


def segment_starts(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[..., T]`` bool: frames that start a segment (frame 0, and every frame less similar than ``threshold``
    to the one before it), from the ``[..., T - 1]`` similarities of :func:`frame_similarity`."""
    first = torch.ones(*similarity.shape[:-1], 1, dtype=torch.bool, device=similarity.device)
    return torch.cat([first, similarity < threshold], dim=-1)


def temporal_merge_batch(
    frames: torch.Tensor,
    segment_threshold: float,
    merge_threshold: float,
    max_merged: int | None = None,
    min_merged: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge tokens that stay the same across frames, for a batch of videos with the same frame count.

    Frames are segmented where consecutive frames are less similar than ``segment_threshold`` (a shot
    change); merging never crosses a segment boundary. Inside a segment, each position has a survivor (first
    the segment's first frame); a later frame's token at that position whose cosine similarity to the
    survivor is at least ``merge_threshold`` is merged into it (running mean weighted by how many tokens each
    stands for) and dropped; otherwise it is kept and becomes the position's survivor for the frames after it.
    So static regions collapse to one token per segment, while frames that change keep their tokens: the
    budget goes where frames differ.

    With ``max_merged``, the most similar tokens merge first: a free pass ranks every merge by its similarity
    (ties by frame, then position), and a second pass lets only the best ``max_merged`` of them merge. A token
    held back becomes its position's survivor, so the second pass can only merge fewer, never more. With
    ``min_merged`` (a video that must fit a context), the most similar tokens below the threshold merge too
    until that many have merged (``max_merged`` still caps it); such a video is one segment (shots may merge),
    and only its first frame never merges.
    Both passes loop over frames, never over videos, and read nothing back to the host.

    Args:
        frames: ``[G, T, P, D]`` visual tokens of ``G`` videos.
        segment_threshold: consecutive-frame similarity under which a new segment starts.
        merge_threshold: token similarity at or above which a token merges into its survivor.
        max_merged: at most this many tokens of each video merge away (None: no cap).
        min_merged: ``[G]`` at least this many tokens of each video merge away, if the segments allow it.

    Returns:
        ``(tokens, keep, weight)``: ``[G, T, P, D]`` features, survivors replaced by the mean of what merged
        into them; ``[G, T, P]`` bool, the tokens that survive; ``[G, T, P]`` how many original tokens each
        survivor stands for (0 for merged ones).
    """
    if max_merged is not None and max_merged < 0:
        raise ValueError(f"max_merged must be >= 0 or None, got {max_merged}")
    g, t = frames.shape[:2]
    if t > 1:
        starts = segment_starts(frame_similarity(frames), segment_threshold)  # [G, T]
    else:
        starts = torch.ones(g, t, dtype=torch.bool, device=frames.device)
    tokens, keep, weight, similarity = _merge_pass(frames, starts, merge_threshold)
    if max_merged is None and min_merged is None:
        return tokens, keep, weight
    merged = ~keep
    count = merged.flatten(1).sum(1)  # [G] merges of the free pass
    if min_merged is not None:
        # A video that must lose more than its free pass merged may merge across shots: one segment.
        whole = (min_merged > count)[:, None] & (torch.arange(t, device=frames.device)[None, :] > 0)
        starts = starts & ~whole
        keep, similarity = _merge_pass(frames, starts, merge_threshold)[1::2]
        merged = ~keep
        count = torch.maximum(merged.flatten(1).sum(1), min_merged)
    if max_merged is not None:
        count = count.clamp_max(max_merged)
    # Rank by similarity to the survivor: the free pass's merges first (they pass the threshold), then the
    # most similar of the rest (ties by frame, then position); segment starts (-inf) never merge.
    order = similarity.flatten(1).argsort(dim=1, descending=True, stable=True)  # [G, T*P]
    at = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, at)
    allowed = (rank < count[:, None]).view_as(merged) & (similarity > float("-inf"))
    return _merge_pass(frames, starts, merge_threshold, allowed, forced=allowed & ~merged)[:3]


def _merge_pass(
    frames: torch.Tensor,
    starts: torch.Tensor,
    merge_threshold: float,
    allowed: torch.Tensor | None = None,
    forced: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One merging pass of :func:`temporal_merge_batch` over ``[G, T, P, D]`` frames with ``[G, T]`` segment
    starts (only ``allowed`` ``[G, T, P]`` tokens may merge, if given; ``forced`` ones merge whatever their
    similarity). Returns tokens, keep, weight and each token's similarity to the survivor it was compared with
    (``-inf`` for the first frame of a segment)."""
    g, t, p, d = frames.shape
    device = frames.device
    x = frames.float().clone().view(g, t * p, d)
    keep = torch.ones(g, t, p, dtype=torch.bool, device=device)
    weight = torch.ones(g, t * p, device=device)
    similarity = torch.full((g, t, p), float("-inf"), device=device)
    columns = torch.arange(p, device=device)[None, :]  # [1, P]
    owner = torch.zeros(g, p, dtype=torch.long, device=device)  # survivor frame per position
    for f in range(1, t):
        start = starts[:, f, None]  # [G, 1]
        owner = torch.where(start, f, owner)
        slot = owner * p + columns  # [G, P] the survivor's flat index
        survivor = x.gather(1, slot[..., None].expand(g, p, d))  # [G, P, D]
        current = frames[:, f].float()
        sim = torch.nn.functional.cosine_similarity(current, survivor, dim=-1)  # [G, P]
        similarity[:, f] = torch.where(start, float("-inf"), sim)
        similar = sim >= merge_threshold
        if forced is not None:
            similar |= forced[:, f]
        similar &= ~start
        if allowed is not None:
            similar &= allowed[:, f]
        w = weight.gather(1, slot)  # [G, P]
        mean = (survivor * w[..., None] + current) / (w + 1)[..., None]
        x.scatter_(1, slot[..., None].expand(g, p, d), torch.where(similar[..., None], mean, survivor))
        weight.scatter_(1, slot, torch.where(similar, w + 1, w))
        keep[:, f] = ~similar
        weight[:, f * p : (f + 1) * p] = torch.where(similar, 0.0, 1.0)
        owner = torch.where(similar, owner, f)
    tokens = x.view(g, t, p, d).to(frames.dtype)
    return tokens, keep, weight.view(g, t, p), similarity
