"""Recycling of the best-scored deleted tokens (`recycle_rows`) on hand-made rows, checked member by member."""

from __future__ import annotations

import torch

from sparsevlm.recycle import recycle_rows
from sparsevlm.token_counts import recycle_counts


def test_recycle_counts_follow_the_paper_code() -> None:
    assert recycle_counts(276, 0.3, 0.1) == (83, 9)
    assert recycle_counts(0, 0.3, 0.1) == (0, 0)
    assert recycle_counts(50, 0.0, 0.1) == (0, 0)
    assert recycle_counts(1, 0.3, 0.1) == (1, 1)


def test_recycle_takes_the_best_scored_deleted_tokens() -> None:
    hidden = torch.randn(1, 20, 8, generator=torch.Generator().manual_seed(0))
    scores = torch.arange(20.0)[None]
    deleted = torch.ones(1, 20, dtype=torch.bool)
    out = recycle_rows(hidden, scores, deleted, [20], 0.3, 0.5, seed=0)
    assert out is not None
    assert sorted(out.members[0].tolist()) == list(range(13, 20))  # int(0.3 * 20) + 1 = 7 best
    assert out.member_valid.all()
    assert out.counts == [4] and out.tokens.shape == (1, 4, 8)  # int(0.5 * 7) + 1
    assert recycle_rows(hidden, scores, deleted, [20], 0.0, 0.5, seed=0) is None


def test_recycled_tokens_are_the_means_of_their_members() -> None:
    hidden = torch.randn(1, 30, 8, generator=torch.Generator().manual_seed(1))
    scores = torch.randn(1, 30, generator=torch.Generator().manual_seed(2))
    deleted = torch.zeros(1, 30, dtype=torch.bool)
    deleted[0, ::2] = True  # only the even positions were deleted
    out = recycle_rows(hidden, scores, deleted, [15], 0.5, 0.5, seed=0)
    assert out is not None
    n_recycled, n_clusters = recycle_counts(15, 0.5, 0.5)
    best = scores[0].masked_fill(~deleted[0], float("-inf")).topk(n_recycled).indices
    assert sorted(out.members[0].tolist()) == sorted(best.tolist())
    assert out.counts == [n_clusters]
    members, assign = out.members[0], out.assign[0]
    for cluster in range(n_clusters):
        mine = members[assign == cluster]
        assert mine.numel() > 0
        assert torch.allclose(out.tokens[0, cluster], hidden[0, mine].mean(0), atol=1e-6)
        assert out.centres[0, cluster] in mine.tolist()


def test_earliest_member_position() -> None:
    hidden = torch.randn(1, 20, 8, generator=torch.Generator().manual_seed(0))
    deleted = torch.ones(1, 20, dtype=torch.bool)
    out = recycle_rows(hidden, torch.arange(20.0)[None], deleted, [20], 0.5, 0.3, seed=0)
    assert out is not None
    first = out.earliest(torch.arange(20)[None] * 3)  # the key grows with the position
    for cluster in range(out.counts[0]):
        assert first[0, cluster] == out.members[0][out.assign[0] == cluster].min()


def test_the_member_mask_marks_the_recycled_positions() -> None:
    hidden = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(3))
    deleted = torch.zeros(2, 12, dtype=torch.bool)
    deleted[0, 2:10] = True
    deleted[1, 5:8] = True
    scores = torch.randn(2, 12, generator=torch.Generator().manual_seed(4))
    out = recycle_rows(hidden, scores, deleted, [8, 3], 0.5, 0.5, seed=0)
    assert out is not None
    mask = out.member_mask(deleted)
    for row in range(2):
        members = set(out.members[row][out.member_valid[row]].tolist())
        assert mask[row].nonzero().flatten().tolist() == sorted(members)
        assert members <= set(deleted[row].nonzero().flatten().tolist())


def test_a_merged_token_weighs_the_sum_of_its_members_weights() -> None:
    hidden = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(5))
    scores = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))
    deleted = torch.zeros(2, 16, dtype=torch.bool)
    deleted[0, 1:13] = True
    deleted[1, 4:7] = True
    out = recycle_rows(hidden, scores, deleted, [12, 3], 1.0, 0.3, seed=0)
    assert out is not None
    weight = torch.arange(1.0, 33.0).view(2, 16)  # each position weighs something different
    got = out.weights(weight)
    ones = out.weights(None)
    for row in range(2):
        for cluster in range(out.counts[row]):
            mine = out.members[row][out.member_valid[row] & (out.assign[row] == cluster)]
            assert got[row, cluster] == weight[row, mine].sum()
            assert ones[row, cluster] == mine.numel()
        assert ones[row].sum() == deleted[row].sum()  # recycle_ratio 1: every deleted token is in a cluster
        assert (got[row, out.counts[row] :] == 0).all()
