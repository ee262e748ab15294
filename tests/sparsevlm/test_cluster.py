"""DPC-KNN clustering: its decisions on hand-made points, and that they do not depend on the dtype (bf16, fp16 and
fp32 equal a float64 computation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sparsevlm import SparseConfig
from sparsevlm import recycle as recycle_module
from sparsevlm.cluster import cluster_means, dpc_knn, squared_distances, tiebreak_keys
from sparsevlm.engine import VideoQAEngine
from sparsevlm.prompt_text import CAPTION_PROMPT
from sparsevlm.rows import distinct_rows
from sparsevlm.tiny.loading import load_tiny
from sparsevlm.tiny.video_qa import make_sample

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def cluster_one(points: torch.Tensor, num_clusters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN on a batch of one: ``[N]`` cluster of each point and ``[C]`` index of each centre."""
    valid = torch.ones(1, points.shape[0], dtype=torch.bool)
    keys = tiebreak_keys([points.shape[0]], seed, points.device)
    out = dpc_knn(points[None], valid, torch.tensor([num_clusters]), num_clusters, keys)
    return out.assign[0], out.centres[0]


def test_three_blobs_give_three_pure_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    blobs = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(torch.tensor([5, 4, 6]))
    points = blobs[labels] + 0.3 * torch.randn(len(labels), 2, generator=gen)
    assign, centres = cluster_one(points, 3, seed=1)
    assert centres.shape == (3,)
    assert sorted(assign.unique().tolist()) == [0, 1, 2]
    for cluster in range(3):  # every cluster holds exactly one blob
        members = labels[assign == cluster]
        assert members.unique().numel() == 1
    assert torch.equal(assign[centres], torch.arange(3))
    merged = cluster_means(points[None], torch.ones(1, len(labels), dtype=torch.bool), assign[None], 3)[0]
    for cluster in range(3):
        assert torch.allclose(merged[cluster], points[assign == cluster].mean(0), atol=1e-6)


def test_clustering_is_deterministic_under_a_seed() -> None:
    points = torch.randn(60, 16, generator=torch.Generator().manual_seed(3))
    runs = [cluster_one(points, 7, seed=5) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_time_weight_keeps_clusters_within_nearby_frames() -> None:
    points = torch.zeros(1, 8, 4)  # identical features: only time separates them
    times = torch.tensor([[0, 0, 0, 0, 7, 7, 7, 7]])
    valid = torch.ones(1, 8, dtype=torch.bool)
    out = dpc_knn(points, valid, torch.tensor([2]), 2, tiebreak_keys([8], 0, points.device), times, time_weight=1.0)
    assign = out.assign[0]
    assert assign[:4].unique().numel() == 1 and assign[4:].unique().numel() == 1
    assert assign[0] != assign[4]


def test_distances_are_euclidean() -> None:
    points = torch.randn(40, 16)
    exact = (points[:, None] - points[None]).norm(dim=-1)
    distances = squared_distances(points[None], torch.ones(1, 40, dtype=torch.bool))[0].sqrt()
    assert torch.allclose(distances, exact, atol=1e-4)
    assert torch.equal(distances.diagonal(), torch.zeros(40))


def test_distances_in_bf16_survive_a_shared_massive_activation() -> None:
    # LLaMA hidden states share a few huge components; the Gram form must not cancel them away.
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(64, 256, generator=gen)
    points[:, 7] += 300.0
    exact = (points[:, None] - points[None]).norm(dim=-1)
    approx = squared_distances(points.to(torch.bfloat16)[None], torch.ones(1, 64, dtype=torch.bool))[0].sqrt()
    off = ~torch.eye(64, dtype=torch.bool)
    relative = ((approx - exact).abs() / exact)[off]
    assert float(relative.max()) < 0.05


def outlier_tokens(seed: int, n: int = 300, d: int = 1024) -> torch.Tensor:
    """Clustered tokens with LLaMA-like outlier channels: a few channels of several hundred shared by all."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=gen) * 0.6
    points = centres[torch.randint(0, 10, (n,), generator=gen)] + 0.4 * torch.randn(n, d, generator=gen)
    channels = torch.randperm(d, generator=gen)[:6]
    massive = torch.tensor([300.0, -250.0, 420.0, 180.0, -380.0, 260.0])
    points[:, channels] += massive + 3 * torch.randn(n, 6, generator=gen)
    return points


def assert_same_as_float64(points: torch.Tensor, valid: torch.Tensor, clusters: list[int], seed: int = 0) -> None:
    counts = [int(n) for n in valid.sum(1)]
    keys = tiebreak_keys(counts, seed, points.device)
    k = torch.tensor(clusters)
    fast = dpc_knn(points, valid, k, max(clusters), keys)
    exact = dpc_knn(points, valid, k, max(clusters), keys, dtype=torch.float64)
    assert torch.equal(fast.centres[fast.centre_valid], exact.centres[exact.centre_valid])
    assert torch.equal(fast.assign[valid], exact.assign[valid])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centres_and_members_equal_float64_on_outlier_activations(dtype: torch.dtype, seed: int) -> None:
    points = torch.stack([outlier_tokens(seed), outlier_tokens(seed + 10)]).to(dtype)
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, 250:] = False  # a shorter second row
    assert_same_as_float64(points, valid, [31, 26], seed)


def test_fp16_outliers_neither_overflow_nor_lose_the_cluster_means() -> None:
    points = (outlier_tokens(3, n=200)[None] * 2).to(torch.float16)  # norms far past fp16's sqrt(65504)
    valid = torch.ones(1, 200, dtype=torch.bool)
    out = dpc_knn(points, valid, torch.tensor([21]), 21, tiebreak_keys([200], 0, points.device))
    means = cluster_means(points, valid, out.assign, 21).float()
    assert torch.isfinite(means).all()
    for c in range(21):
        members = points[0, out.assign[0] == c].double()
        assert torch.allclose(means[0, c].double(), members.mean(0), rtol=2e-3, atol=0.05)


@pytest.mark.parametrize("dtype", DTYPES)
def test_real_deleted_tokens_of_the_bundled_model_cluster_as_in_float64(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deleted tokens of a real prefill of the bundled checkpoint, in the model's dtype."""
    torch.manual_seed(0)
    model, tokenizer, _ = load_tiny()
    model = model.to(dtype)
    engine = VideoQAEngine.from_model(model, tokenizer, sparse=SparseConfig.preset("video-onestep-10"))
    seen: list[tuple[torch.Tensor, ...]] = []
    original = recycle_module.dpc_knn

    def capture(points: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append((points.clone(), valid.clone(), counts.clone()))
        return original(points, valid, counts, *args, **kwargs)

    monkeypatch.setattr(recycle_module, "dpc_knn", capture)
    frames = [make_sample("test", i).frames for i in range(2)]
    engine.answer(frames, [CAPTION_PROMPT, "What colour is the square?"], max_new_tokens=1)
    assert seen, "the prefill recycled nothing"
    for points, valid, counts in seen:
        assert points.dtype == dtype and valid.sum() > 50
        assert_same_as_float64(points, valid, [int(c) for c in counts])


def test_distinct_rows_groups_equal_rows_in_one_pass() -> None:
    gen = torch.Generator().manual_seed(0)
    videos = torch.randn(3, 2, 3, 8, 8, generator=gen)
    batch = videos[torch.tensor([0, 1, 0, 2, 1, 1])]
    unique, inverse = distinct_rows(batch)
    assert inverse.tolist() == [0, 1, 0, 2, 1, 1]
    assert torch.equal(unique, videos)
    assert torch.equal(unique[inverse], batch)
    nan = batch.clone()
    nan[3, 0, 0, 0, 0] = float("nan")
    assert torch.equal(distinct_rows(nan)[1], torch.tensor([0, 1, 0, 2, 1, 1]))
    assert np.array_equal(distinct_rows(videos)[1].numpy(), np.arange(3))


def test_the_batched_clustering_gives_each_row_what_it_gets_alone() -> None:
    points = torch.stack([outlier_tokens(5, n=120, d=64), outlier_tokens(6, n=120, d=64)])
    valid = torch.ones(2, 120, dtype=torch.bool)
    valid[0, 90:] = False
    keys = tiebreak_keys([90, 120], 4, points.device)
    both = dpc_knn(points, valid, torch.tensor([10, 13]), 13, keys)
    alone = dpc_knn(points[:1, :90], valid[:1, :90], torch.tensor([10]), 10, keys[:1, :90])
    assert torch.equal(both.centres[0, :10], alone.centres[0])
    assert torch.equal(both.assign[0, :90], alone.assign[0])
