"""The prefill's plain decisions (plan.py): frame reduction, the merge cap, schedules, the context check, raters,
random scores, a pruning step's keep counts and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from sparsevlm.config import SparseConfig
from sparsevlm.plan import (
    check_context,
    frame_reduction,
    keep_at_most_distinct,
    layer_seed,
    max_merged,
    random_scores,
    rater_counts,
    row_schedules,
    step_keep_counts,
)
from sparsevlm.pooling import spatial_pool
from sparsevlm.sequence import Layout
from sparsevlm.stats import PrefillRecorder


def test_no_frame_reduction_without_merging_or_pooling() -> None:
    assert frame_reduction(SparseConfig()) is None
    assert frame_reduction(SparseConfig(prune_layers=(1,), target_fraction=0.5)) is None


def test_pooling_pools_each_frame_of_each_video_on_its_own() -> None:
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 17, 4)  # [G, T, P, D]: a CLS and a 4 x 4 grid per frame
    reduce = frame_reduction(SparseConfig(spatial_pool=0.3))
    assert reduce is not None
    tokens, keep = reduce(frames, torch.zeros(2, dtype=torch.long))
    assert tokens.shape == frames.shape and keep.shape == (2, 3, 17)
    for g in range(2):
        for t in range(3):
            alone = spatial_pool(frames[g, t : t + 1], 0.3)
            torch.testing.assert_close(tokens[g, t], alone.tokens[0].to(tokens.dtype))
            assert torch.equal(keep[g, t], alone.keep[0])
    assert 0 < int(keep[0, 0].sum()) < 17


def test_temporal_merging_folds_a_static_video_into_its_first_frame() -> None:
    frame = torch.randn(1, 1, 5, 8)
    static = frame.expand(2, 4, 5, 8).clone()  # [G, T, P, D]: every frame the same
    reduce = frame_reduction(SparseConfig(temporal_merge=0.9))
    assert reduce is not None
    tokens, keep = reduce(static, torch.zeros(2, dtype=torch.long))
    assert keep[:, 0].all() and not keep[:, 1:].any()
    torch.testing.assert_close(tokens[:, 0], static[:, 0])  # the mean of equal tokens


def test_the_merge_cap_keeps_merge_floor_times_the_target() -> None:
    cfg = SparseConfig(prune_layers=(2,), target_fraction=0.25, temporal_merge=0.9, merge_floor=2.0)
    shape = torch.Size([8, 10, 4])  # [T, P, D]: 80 tokens, a target of 20, a floor of 40
    assert max_merged(cfg, shape) == 80 - 40
    assert max_merged(cfg.replace(budget_frames=4), shape) == 80 - math.ceil(2.0 * 0.25 * 40)  # 4 frames' worth
    assert max_merged(cfg.replace(merge_floor=5.0, target_fraction=1.0), shape) == 0  # never below zero
    assert max_merged(SparseConfig(temporal_merge=0.9), shape) is None  # no floor: the threshold alone decides


def test_row_schedules_follow_each_rows_visual_count_once_per_distinct_pair() -> None:
    cfg = SparseConfig(prune_layers=(1,), target_fraction=0.5)
    n_visual, n_input = (8, 0, 8, 6), [8, 0, 8, 6]
    out = row_schedules(cfg, 4, n_visual, n_input, None)
    assert out == [cfg.schedule(4, 8, 8), {}, cfg.schedule(4, 8, 8), cfg.schedule(4, 6, 6)]
    assert out[0] is out[2]  # computed once
    assert out[0] != out[3]


def test_with_a_frame_budget_the_reference_is_that_many_frames() -> None:
    cfg = SparseConfig(prune_layers=(1,), target_fraction=0.5, budget_frames=2)
    out = row_schedules(cfg, 4, (40, 20), [40, 20], tokens_per_frame=10)
    assert out == [cfg.schedule(4, 40, 20), cfg.schedule(4, 20, 20)]
    assert row_schedules(cfg, 4, (40,), [40], tokens_per_frame=None) == [cfg.schedule(4, 40, 40)]


def test_the_context_check_allows_the_last_position_and_refuses_the_next() -> None:
    check_context(widest=100, context=128, reserve=28)  # positions 0..127
    with pytest.raises(ValueError, match=r"reaches position 128 with 28 new tokens, beyond the model's context of 128"):
        check_context(widest=101, context=128, reserve=28)


def _layout(rater: torch.Tensor) -> Layout:
    b, length = rater.shape
    valid = torch.ones(b, length, dtype=torch.bool)
    return Layout(
        torch.zeros(b, length, 2),
        torch.zeros(b, length, dtype=torch.long),
        valid,
        torch.full((b, length), -1),
        rater,
        (length,) * b,
        (0,) * b,
    )


def test_rater_counts_are_counted_once_per_prefill() -> None:
    record = PrefillRecorder(2, torch.zeros(0, dtype=torch.long), [4, 4])
    first = torch.tensor([[True, False, True, True], [False, False, False, True]])
    assert rater_counts(_layout(first), record) == [3, 1]
    assert rater_counts(_layout(torch.zeros(2, 4, dtype=torch.bool)), record) == [3, 1]  # kept, not recounted


def test_random_scores_are_each_rows_own_seeded_draws_alone_or_in_a_batch() -> None:
    present = torch.tensor([[False, True, True, False, True], [True, True, False, False, False]])
    scores = random_scores(present, (3, 2), seed=7)
    for b, n in enumerate((3, 2)):
        draws = torch.rand(n, generator=torch.Generator().manual_seed(7))
        assert torch.equal(scores[b][present[b]], draws)
        assert (scores[b][~present[b]] == float("-inf")).all()
        assert torch.equal(random_scores(present[b : b + 1], (n,), seed=7)[0], scores[b])
    assert not torch.equal(random_scores(present, (3, 2), seed=8), scores)


def test_random_scores_without_visual_tokens_are_all_minus_infinity() -> None:
    present = torch.zeros(2, 4, dtype=torch.bool)
    assert torch.equal(random_scores(present, (0, 0), seed=0), torch.full((2, 4), float("-inf")))


def test_a_step_keeps_its_count_where_it_prunes_and_everything_elsewhere() -> None:
    pruned = [True, True, False, True]
    keep: list[int | None] = [10, 50, 7, None]
    n_visual = (30, 40, 20, 0)
    assert step_keep_counts(pruned, keep, n_visual) == [10, 40, 20, 0]  # capped at 40; row 2 not pruned here


def test_never_keeping_repeats_caps_each_count_by_the_distinct_tokens_but_keeps_one() -> None:
    assert keep_at_most_distinct([10, 10, None, 3], [4, 0, 5, 9]) == [4, 1, None, 3]


def test_layer_seeds_differ_for_every_seed_and_layer_of_a_deep_model() -> None:
    seeds = {layer_seed(seed, layer) for seed in range(20) for layer in range(80)}
    assert len(seeds) == 20 * 80
    assert layer_seed(0, 3) == 3 and layer_seed(1, 0) == 1_000_003
