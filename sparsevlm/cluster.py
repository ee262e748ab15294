"""Pure tensor functions of DPC-KNN clustering, batched, with decisions that do not depend on the dtype.

SparseVLM recycles the best of the deleted visual tokens by density-peak clustering over k nearest neighbours
(DPC-KNN, the paper code's ``cluster_and_merge``) and replaces each cluster by the mean of its members. Every
function here takes a padded batch ``[B, N, D]`` with a ``[B, N]`` validity mask, so one call serves all
rows of a prefill with no host synchronisation, and every row gets exactly what it would get alone.

Precision. The hidden states of a bf16 or fp16 model are exact in float32, and so is every product of two
of them; only the sums round. Distances therefore come from a float32 Gram matrix of the points shifted to
one of them as origin (in float32), which removes the large components that all tokens share (LLaMA's outlier
channels reach several hundred) before the ``|a|^2 + |b|^2 - 2ab`` form could cancel them; cluster sums
accumulate in float32 (an fp16 sum overflows past 65,504). Densities stay in log space (``exp`` of a mean
squared distance underflows to 0 in float32 for far-apart tokens), and ties (duplicate tokens are common
in bf16) are broken by a seeded random key, lexicographically, never by adding noise. The resulting centres
and memberships equal a float64 computation on the same inputs (tested on real hidden states and on
synthetic outlier activations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sparsevlm.transfer import to_device

_BIG = torch.finfo(torch.float32).max


@contextlib.contextmanager
def _full_precision_matmul() -> Iterator[None]:
    """float32 products in float32 (no TF32 on CUDA, no bf16 on CPU), whatever the caller chose."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def squared_distances(points: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, N, N]`` squared Euclidean distances within each row, exactly 0 on the diagonal.

    Args:
        points: ``[B, N, D]`` in any float dtype.
        valid: ``[B, N]`` bool (padded points get distances too; callers mask them).
        dtype: the computation dtype (float32; float64 for a reference).
    """
    # Any origin among the points removes what they all share (the outlier channels); the first point of each
    # row costs no reduction pass.
    x = points.to(dtype)
    x = x - x[:, :1]  # [B, N, D]; padded points' distances are masked by the caller
    with _full_precision_matmul():
        gram = torch.bmm(x, x.transpose(1, 2))  # [B, N, N]
    norms = gram.diagonal(dim1=1, dim2=2)  # [B, N]
    dist = (norms[:, :, None] + norms[:, None, :] - 2 * gram).clamp_min(0)
    return dist * (1 - torch.eye(dist.shape[1], dtype=dtype, device=dist.device))


@dataclass(frozen=True)
class Clusters:
    """DPC-KNN's outcome for a padded batch.

    Attributes:
        assign: ``[B, N]`` cluster id of each point in ``[0, C_b)``; 0 for padded points.
        centres: ``[B, C]`` index of each cluster's centre (its density peak); ``C = max C_b``.
        centre_valid: ``[B, C]`` bool, ``c < C_b``.
    """

    assign: torch.Tensor
    centres: torch.Tensor
    centre_valid: torch.Tensor


def dpc_knn(
    points: torch.Tensor,
    valid: torch.Tensor,
    num_clusters: torch.Tensor,
    max_clusters: int,
    tiebreak: torch.Tensor,
    times: torch.Tensor | None = None,
    time_weight: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Clusters:
    """Density-peak clustering with a kNN density, for every row of a padded batch at once.

    ``dist = ||x_i - x_j|| / sqrt(D)`` (with time: ``sqrt(dist^2 + (w |t_i - t_j|)^2)``); log-density
    ``-mean of the squared distances to the k nearest points`` with ``k = C_b`` (the point itself included);
    ``delta_i`` = distance to the nearest denser point (the row's largest distance for its densest point);
    the ``C_b`` points with the largest ``density * delta`` are centres and every point joins its nearest
    centre (the first in centre order on a tie). "Denser" and "larger" compare ``tiebreak`` on equal values.

    Args:
        points: ``[B, N, D]`` features; valid: ``[B, N]`` bool (each row's valid points first or anywhere).
        num_clusters: ``[B]`` long, ``C_b`` with ``1 <= C_b <= n_b`` for rows with points (0 for empty rows).
        max_clusters: ``max C_b`` (a host int: it shapes the output).
        tiebreak: ``[B, N]`` float keys, distinct within a row (a seeded uniform draw).
        times: ``[B, N]`` frame index of each point, or None.
        time_weight: ``w`` above; 0 ignores time.
        dtype: computation dtype (float32; float64 for a reference).
    """
    b, n, d = points.shape
    device = points.device
    dist2 = squared_distances(points, valid, dtype) / d  # [B, N, N]
    if times is not None and time_weight > 0:
        gap = (times[:, :, None] - times[:, None, :]).abs().to(dtype) * time_weight
        dist2 = dist2 + gap * gap
    pair = valid[:, :, None] & valid[:, None, :]  # [B, N, N]
    k = max(max_clusters, 1)
    near = dist2.masked_fill(~pair, _BIG).topk(min(k, n), dim=-1, largest=False).values  # [B, N, k]
    in_k = torch.arange(near.shape[-1], device=device)[None, None, :] < num_clusters[:, None, None]
    log_density = -(near * in_k).sum(-1) / num_clusters.clamp_min(1)[:, None].to(dtype)  # [B, N]
    log_density = log_density.masked_fill(~valid, -_BIG)
    # j is denser than i: larger log-density, or equal and a larger tie-break key.
    ld_i, ld_j = log_density[:, :, None], log_density[:, None, :]
    tb_i, tb_j = tiebreak[:, :, None], tiebreak[:, None, :]
    denser = ((ld_j > ld_i) | ((ld_j == ld_i) & (tb_j > tb_i))) & pair  # [B, N, N]
    row_max = dist2.masked_fill(~pair, 0).amax(dim=(1, 2))  # [B]
    parent2 = dist2.masked_fill(~denser, _BIG).amin(-1)  # [B, N]
    parent2 = torch.where(denser.any(-1), parent2, row_max[:, None])
    # rank by density * delta = exp(log_density) * sqrt(parent2), i.e. by log_density + log(parent2) / 2
    score = (log_density + 0.5 * parent2.log()).clamp_min(-1e30)  # a duplicate of a denser point: log 0
    score = score.masked_fill(~valid, float("-inf"))
    by_key = tiebreak.masked_fill(~valid, -_BIG).argsort(dim=1, descending=True, stable=True)
    by_score = score.gather(1, by_key).argsort(dim=1, descending=True, stable=True)
    order = by_key.gather(1, by_score)  # [B, N] best score first, ties by larger key
    c = max(max_clusters, 1)
    centres = order[:, :c]  # [B, C]
    centre_valid = torch.arange(c, device=device)[None, :] < num_clusters[:, None]
    to_centre = dist2.gather(2, centres[:, None, :].expand(b, n, c))  # [B, N, C]
    assign = to_centre.masked_fill(~centre_valid[:, None, :], _BIG).argmin(-1)  # [B, N]
    own = torch.arange(c, device=device)[None, :].expand(b, c)
    assign = assign.scatter(1, centres, torch.where(centre_valid, own, assign.gather(1, centres)))
    assign = assign.masked_fill(~valid, 0)
    return Clusters(assign=assign, centres=centres, centre_valid=centre_valid)


def cluster_means(points: torch.Tensor, valid: torch.Tensor, assign: torch.Tensor, max_clusters: int) -> torch.Tensor:
    """``[B, C, D]`` mean of each cluster's members in the dtype of ``points``, summed in float32.

    Args:
        points: ``[B, N, D]``; valid: ``[B, N]``; assign: ``[B, N]`` ids in ``[0, C)``.
    """
    clusters = torch.arange(max_clusters, device=points.device)
    onehot = ((assign[:, None, :] == clusters[None, :, None]) & valid[:, None, :]).float()  # [B, C, N]
    counts = onehot.sum(-1, keepdim=True).clamp_min(1)
    with _full_precision_matmul():
        sums = torch.bmm(onehot, points.float())  # [B, C, D]
    return (sums / counts).to(points.dtype)


def tiebreak_keys(counts: list[int], seed: int, device: torch.device) -> torch.Tensor:
    """``[B, max(counts)]`` seeded uniform keys, row ``b`` the first draw of ``counts[b]`` from ``seed``.

    Drawn on the host per distinct count (a row alone draws the same keys as in any batch), then copied to
    the device in one transfer.
    """
    width = max(counts, default=0)
    draws = {n: torch.rand(n, generator=torch.Generator().manual_seed(seed)) for n in set(counts)}
    keys = torch.zeros(len(counts), width)
    for row, n in enumerate(counts):
        keys[row, :n] = draws[n]
    return to_device(keys, device)
