"""Pure tensor functions of SparseVLM's token recycling: DPC-KNN clustering and merging.

The deleted visual tokens with the best scores are clustered by density-peak clustering over k nearest
neighbours (DPC-KNN, as in the paper code's ``cluster_and_merge``) and each cluster becomes one token, the
plain mean of its members (paper Sec. 3.3; the code averages, the paper text says "sum").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsevlm.stats import recycle_counts


def dpc_knn_cluster(
    points: torch.Tensor, num_clusters: int, generator: torch.Generator | None = None
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

    Returns:
        ``(assign, centres)``: ``[N]`` cluster id of each point, ``[C]`` index of each cluster's centre.
    """
    n, d = points.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")
    x = points.float()
    dist = torch.cdist(x, x) / d**0.5  # [N, N]
    knn = dist.topk(num_clusters, dim=-1, largest=False).values  # [N, k]
    noise = torch.rand(n, generator=generator).to(x.device) * 1e-6
    density = (-(knn**2).mean(dim=-1)).exp() + noise  # [N]
    denser = density[None, :] > density[:, None]  # [N, N]: j is denser than i
    parent_dist = torch.where(denser, dist, dist.max()).min(dim=-1).values  # [N]
    centres = (parent_dist * density).topk(num_clusters).indices  # [C]
    assign = dist[:, centres].argmin(dim=-1)  # [N]
    assign[centres] = torch.arange(num_clusters, device=x.device)
    return assign, centres


def merge_clusters(points: torch.Tensor, assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of each cluster's members.

    Args:
        points: ``[N, D]``; assign: ``[N]`` cluster ids in ``[0, C)``.

    Returns:
        ``[C, D]`` in the dtype of ``points`` (accumulated in float32).
    """
    sums = torch.zeros(num_clusters, points.shape[1], device=points.device, dtype=torch.float32)
    sums.index_add_(0, assign, points.float())
    counts = torch.bincount(assign, minlength=num_clusters).clamp_min(1).to(sums)
    return (sums / counts[:, None]).to(points.dtype)


@dataclass(frozen=True)
class Recycled:
    """The outcome of recycling one row's deleted tokens.

    Attributes:
        tokens: ``[C, D]`` merged tokens.
        members: ``[n_r]`` indices (into the deleted set) of the recycled tokens.
        assign: ``[n_r]`` cluster id of each recycled token.
        centres: ``[C]`` index (into the deleted set) of each cluster's centre token.
    """

    tokens: torch.Tensor
    members: torch.Tensor
    assign: torch.Tensor
    centres: torch.Tensor


def recycle_deleted(
    deleted: torch.Tensor,
    deleted_scores: torch.Tensor,
    recycle_ratio: float,
    cluster_ratio: float,
    generator: torch.Generator | None = None,
) -> Recycled | None:
    """Recycle the best-scored deleted tokens into a few merged tokens.

    Args:
        deleted: ``[M, D]`` features of the deleted tokens (the pruning layer's output hidden states).
        deleted_scores: ``[M]`` their scores.

    Returns:
        The merged tokens and their provenance, or None when nothing is recycled.
    """
    n_recycled, n_clusters = recycle_counts(deleted.shape[0], recycle_ratio, cluster_ratio)
    if n_recycled == 0:
        return None
    members = deleted_scores.topk(n_recycled).indices  # [n_r], best first
    assign, centres = dpc_knn_cluster(deleted[members], n_clusters, generator)
    tokens = merge_clusters(deleted[members], assign, n_clusters)
    return Recycled(tokens=tokens, members=members, assign=assign, centres=members[centres])
