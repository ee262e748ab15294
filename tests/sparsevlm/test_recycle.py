"""DPC-KNN clustering and merging on hand-made points."""

from __future__ import annotations

import torch

from sparsevlm.recycle import dpc_knn_cluster, merge_clusters, pairwise_distance, recycle_deleted
from sparsevlm.stats import recycle_counts


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(torch.tensor([5, 4, 6]))
    points = centres[labels] + 0.3 * torch.randn(len(labels), 2, generator=gen)
    return points, labels


def test_three_blobs_give_three_pure_clusters() -> None:
    points, labels = _blobs()
    assign, centres = dpc_knn_cluster(points, 3, torch.Generator().manual_seed(1))
    assert centres.shape == (3,)
    assert sorted(assign.unique().tolist()) == [0, 1, 2]
    for cluster in range(3):  # every cluster holds exactly one blob
        members = labels[assign == cluster]
        assert members.unique().numel() == 1
    assert torch.equal(assign[centres], torch.arange(3))
    merged = merge_clusters(points, assign, 3)
    for cluster in range(3):
        assert torch.allclose(merged[cluster], points[assign == cluster].mean(0), atol=1e-6)


def test_clustering_is_deterministic_under_a_seed() -> None:
    points = torch.randn(60, 16, generator=torch.Generator().manual_seed(3))
    runs = [dpc_knn_cluster(points, 7, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_recycle_counts_follow_the_paper_code() -> None:
    assert recycle_counts(276, 0.3, 0.1) == (83, 9)
    assert recycle_counts(0, 0.3, 0.1) == (0, 0)
    assert recycle_counts(50, 0.0, 0.1) == (0, 0)
    assert recycle_counts(1, 0.3, 0.1) == (1, 1)


def test_recycle_takes_the_best_scored_deleted_tokens() -> None:
    points = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    scores = torch.arange(20.0)
    out = recycle_deleted(points, scores, 0.3, 0.5, torch.Generator().manual_seed(0))
    assert out is not None
    assert sorted(out.members.tolist()) == list(range(13, 20))  # int(0.3 * 20) + 1 = 7 best
    assert out.tokens.shape == (4, 8)  # int(0.5 * 7) + 1
    assert recycle_deleted(points, scores, 0.0, 0.5) is None


def test_pairwise_distance_is_the_euclidean_distance() -> None:
    points = torch.randn(40, 16)
    exact = (points[:, None] - points[None]).norm(dim=-1)
    assert torch.allclose(pairwise_distance(points), exact, atol=1e-4)
    assert torch.equal(pairwise_distance(points).diagonal(), torch.zeros(40))


def test_pairwise_distance_in_bf16_survives_a_shared_massive_activation() -> None:
    # LLaMA hidden states share a few huge components; the Gram form must not cancel them away.
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(64, 256, generator=gen)
    points[:, 7] += 300.0
    exact = (points[:, None] - points[None]).norm(dim=-1)
    approx = pairwise_distance(points.to(torch.bfloat16))
    off = ~torch.eye(64, dtype=torch.bool)
    relative = ((approx - exact).abs() / exact)[off]
    assert float(relative.max()) < 0.05
