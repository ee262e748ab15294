"""Pure tensor functions of SparseVLM's token recycling: DPC-KNN clustering and merging.

The deleted visual tokens with the best scores are clustered by density-peak clustering over k nearest
neighbours (DPC-KNN, as in the paper code's ``cluster_and_merge``) and each cluster becomes one token, the
plain mean of its members (paper Sec. 3.3; the code averages, the paper text says "sum").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsevlm.stats import recycle_counts


def pairwise_distance(points: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` float32 Euclidean distances of ``[N, D]`` points, exactly 0 on the diagonal.

    Computed from the Gram matrix of the shifted points in their own dtype: in bf16 the matrix product runs
    at the model's speed (cdist upcasts to float32, ~5x slower on CPU, which made recycling cost several
    percent of a decoder layer); moving the origin to one of the points removes the large components every
    token shares, so the ``|a|^2 + |b|^2 - 2ab`` form does not cancel catastrophically.
    """
    shifted = points - points[:1]  # any point as origin; nearby values subtract exactly, no reduction needed
    gram = (shifted @ shifted.T).float()  # [N, N]
    norms = gram.diagonal()
    dist = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0).sqrt()
    return dist.fill_diagonal_(0.0)


def dpc_knn_cluster(
    points: torch.Tensor,
    num_clusters: int,
    generator: torch.Generator | None = None,
    times: torch.Tensor | None = None,
    time_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with a kNN density.

    ``dist = ||x_i - x_j|| / sqrt(D)``; density ``rho_i = exp(-mean of the squared distances to the k
    nearest points)`` with ``k = num_clusters`` (self included), plus ``U(0, 1) * 1e-6`` tie-break noise;
    ``delta_i`` = distance to the nearest denser point (the largest distance for the densest one); the
    ``num_clusters`` points with the largest ``rho * delta`` are centres and every point joins its nearest
    centre.

    Args:
        points: ``[N, D]`` features.
        num_clusters: ``C`` with ``1 <= C <= N``.
        generator: seeds the tie-break noise (CPU generator); None uses the global RNG.
        times: ``[N]`` frame index of each point, for a distance that takes time into account.
        time_weight: ``w`` in ``dist = sqrt(dist_features^2 + (w * |t_i - t_j|)^2)``; 0 ignores time.

    Returns:
        ``(assign, centres)``: ``[N]`` cluster id of each point, ``[C]`` index of each cluster's centre.
    """
    n, d = points.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")
    dist = pairwise_distance(points) / d**0.5  # [N, N]
    device = dist.device
    if times is not None and time_weight > 0:
        gap = (times[:, None] - times[None, :]).abs().float().to(device) * time_weight  # [N, N]
        dist = (dist**2 + gap**2).sqrt()
    knn = dist.topk(num_clusters, dim=-1, largest=False).values  # [N, k]
    noise = torch.rand(n, generator=generator).to(device) * 1e-6
    density = (-(knn**2).mean(dim=-1)).exp() + noise  # [N]
    denser = density[None, :] > density[:, None]  # [N, N]: j is denser than i
    parent_dist = torch.where(denser, dist, dist.max()).min(dim=-1).values  # [N]
    centres = (parent_dist * density).topk(num_clusters).indices  # [C]
    assign = dist[:, centres].argmin(dim=-1)  # [N]
    assign[centres] = torch.arange(num_clusters, device=device)
    return assign, centres


def merge_clusters(points: torch.Tensor, assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of each cluster's members.

    Args:
        points: ``[N, D]``; assign: ``[N]`` cluster ids in ``[0, C)``.

    Returns:
        ``[C, D]`` in the dtype of ``points``: the sums come from a one-hot matrix product in that dtype (the
        product accumulates in float32; no float32 copy of the points), divided in float32.
    """
    clusters = torch.arange(num_clusters, device=points.device)
    onehot = (assign[None, :] == clusters[:, None]).to(points.dtype)  # [C, N], exact in any float dtype
    counts = onehot.float().sum(dim=1).clamp_min(1)
    return ((onehot @ points).float() / counts[:, None]).to(points.dtype)


@dataclass(frozen=True)
class Recycled:
    """The outcome of recycling one row's deleted tokens.

    Attributes:
        tokens: ``[C, D]`` merged tokens.
        members: ``[n_r]`` indices (into the deleted set) of the recycled tokens.
        assign: ``[n_r]`` cluster id of each recycled token.
        centres: ``[C]`` index (into the deleted set) of each cluster's centre token (its density peak,
            the most representative member).
    """

    tokens: torch.Tensor
    members: torch.Tensor
    assign: torch.Tensor
    centres: torch.Tensor

    def earliest(self, order: torch.Tensor) -> torch.Tensor:
        """``[C]`` index (into the deleted set) of each cluster's member that comes first in ``order``.

        Args:
            order: ``[M]`` a sort key per deleted token (e.g. its position id).
        """
        key = order[self.members].float()  # [n_r]
        clusters = torch.arange(self.tokens.shape[0], device=key.device)
        masked = torch.where(self.assign[:, None] == clusters[None, :], key[:, None], float("inf"))  # [n_r, C]
        return self.members[masked.argmin(dim=0)]


def recycle_deleted(
    deleted: torch.Tensor,
    deleted_scores: torch.Tensor,
    recycle_ratio: float,
    cluster_ratio: float,
    generator: torch.Generator | None = None,
    times: torch.Tensor | None = None,
    time_weight: float = 0.0,
) -> Recycled | None:
    """Recycle the best-scored deleted tokens into a few merged tokens.

    Args:
        deleted: ``[M, D]`` features of the deleted tokens (the pruning layer's output hidden states).
        deleted_scores: ``[M]`` their scores.
        times: ``[M]`` frame index of each deleted token (cross-frame recycling), or None.
        time_weight: weight of the frame distance in the clustering distance.

    Returns:
        The merged tokens and their provenance, or None when nothing is recycled.
    """
    n_recycled, n_clusters = recycle_counts(deleted.shape[0], recycle_ratio, cluster_ratio)
    if n_recycled == 0:
        return None
    members = deleted_scores.topk(n_recycled).indices  # [n_r], best first
    member_times = times[members] if times is not None else None
    assign, centres = dpc_knn_cluster(deleted[members], n_clusters, generator, member_times, time_weight)
    tokens = merge_clusters(deleted[members], assign, n_clusters)
    return Recycled(tokens=tokens, members=members, assign=assign, centres=members[centres])


def frame_similarity(frames: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of same-position tokens between consecutive frames.

    Args:
        frames: ``[T, P, D]`` visual tokens of one video, ``P`` tokens per frame.

    Returns:
        ``[T - 1]``: entry ``t`` compares frame ``t + 1`` with frame ``t``.
    """
    x = torch.nn.functional.normalize(frames.float(), dim=-1)
    return (x[1:] * x[:-1]).sum(-1).mean(-1)


def segment_frames(similarity: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """Split frames where consecutive frames are less similar than ``threshold`` (a shot change).

    Returns:
        ``[(start, end), ...]`` half-open frame ranges covering every frame.
    """
    cuts = [0] + [t + 1 for t in range(similarity.shape[0]) if float(similarity[t]) < threshold]
    ends = [*cuts[1:], similarity.shape[0] + 1]
    return list(zip(cuts, ends, strict=True))


@dataclass(frozen=True)
class TemporalMerge:
    """The outcome of merging one video's static tokens across frames.

    Attributes:
        tokens: ``[T, P, D]`` features, survivors replaced by the mean of what merged into them.
        keep: ``[T, P]`` bool, the tokens that survive.
        weight: ``[T, P]`` how many original tokens each survivor stands for (0 for merged ones).
        segments: the frame segments merging stayed inside.
    """

    tokens: torch.Tensor
    keep: torch.Tensor
    weight: torch.Tensor
    segments: list[tuple[int, int]]


def temporal_merge(
    frames: torch.Tensor, segment_threshold: float, merge_threshold: float, max_merged: int | None = None
) -> TemporalMerge:
    """Merge tokens that stay the same across frames into the earliest frame's token.

    Frames are segmented by :func:`segment_frames`; merging never crosses a segment boundary. Inside a
    segment, each position has a survivor (first the segment's first frame); a later frame's token at that
    position whose cosine similarity to the survivor is at least ``merge_threshold`` is merged into it (running
    mean weighted by how many tokens each stands for) and dropped; otherwise it is kept and becomes the
    position's survivor for the frames after it. So static regions collapse to one token per segment, while
    frames that change keep their tokens: the budget goes where frames differ.

    With ``max_merged``, the most similar tokens merge first: a free pass ranks every merge by its similarity
    (ties by frame, then position), and a second pass lets only the best ``max_merged`` of them merge. A token
    held back becomes its position's survivor, so the second pass can only merge fewer, never more.

    Args:
        frames: ``[T, P, D]`` visual tokens of one video.
        segment_threshold: consecutive-frame similarity under which a new segment starts.
        merge_threshold: token similarity at or above which a token merges into its survivor.
        max_merged: at most this many tokens merge away (None: no cap).
    """
    if max_merged is not None and max_merged < 0:
        raise ValueError(f"max_merged must be >= 0 or None, got {max_merged}")
    t = frames.shape[0]
    segments = segment_frames(frame_similarity(frames), segment_threshold) if t > 1 else [(0, t)]
    free, similarity = _merge_pass(frames, segments, merge_threshold)
    merged = ~free.keep
    if max_merged is None or int(merged.sum()) <= max_merged:
        return free
    ranked = torch.where(merged, similarity, float("-inf")).flatten()
    best = torch.argsort(ranked, descending=True, stable=True)[:max_merged]
    allowed = torch.zeros_like(ranked, dtype=torch.bool)
    allowed[best] = True
    return _merge_pass(frames, segments, merge_threshold, allowed.view_as(merged))[0]


def _merge_pass(
    frames: torch.Tensor, segments: list[tuple[int, int]], merge_threshold: float, allowed: torch.Tensor | None = None
) -> tuple[TemporalMerge, torch.Tensor]:
    """One merging pass of :func:`temporal_merge` (only ``allowed`` ``[T, P]`` tokens may merge, if given);
    also returns ``[T, P]`` each token's similarity to the survivor it was compared with (``-inf`` for the
    first frame of a segment)."""
    t, p, _ = frames.shape
    x = frames.float().clone()
    keep = torch.ones(t, p, dtype=torch.bool, device=frames.device)
    weight = torch.ones(t, p, device=frames.device)
    similarity = torch.full((t, p), float("-inf"), device=frames.device)
    columns = torch.arange(p, device=frames.device)
    for start, end in segments:
        owner = torch.full((p,), start, dtype=torch.long, device=frames.device)  # survivor frame per position
        for f in range(start + 1, end):
            survivor = x[owner, columns]  # [P, D]
            similarity[f] = torch.nn.functional.cosine_similarity(frames[f].float(), survivor, dim=-1)
            similar = similarity[f] >= merge_threshold
            if allowed is not None:
                similar &= allowed[f]
            w = weight[owner, columns]
            merged = (survivor * w[:, None] + frames[f].float()) / (w + 1)[:, None]
            x[owner[similar], columns[similar]] = merged[similar]
            weight[owner[similar], columns[similar]] = w[similar] + 1
            keep[f, similar] = False
            weight[f, similar] = 0
            owner = torch.where(similar, owner, torch.full_like(owner, f))
    return TemporalMerge(x.to(frames.dtype), keep, weight, segments), similarity
