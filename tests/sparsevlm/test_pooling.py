"""The pool baseline: per-frame spatial average pooling before the LLM."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_inputs, build_model, row_inputs, tokens_per_frame

from sparsevlm import apply_patch, last_stats
from sparsevlm.baselines import method_config
from sparsevlm.pooling import frame_grid, pool_grid, spatial_pool


def test_frame_grid_finds_the_cls_token() -> None:
    assert frame_grid(257) == (16, 1)
    assert frame_grid(576) == (24, 0)
    with pytest.raises(ValueError, match="300 tokens per frame is not a square patch grid"):
        frame_grid(300)


@pytest.mark.parametrize(
    ("side", "cells", "grid"),
    [
        (16, 25.7, (5, 5)),
        (16, 64, (8, 8)),
        (8, 15.25, (4, 4)),
        (8, 5.5, (3, 2)),
        (16, 127.5, (12, 11)),
        (4, 0.2, (1, 1)),
        (4, 99, (4, 4)),
    ],
)
def test_pool_grid_is_the_closest_near_square_grid(side: int, cells: float, grid: tuple[int, int]) -> None:
    assert pool_grid(side, cells) == grid


def test_pooled_tokens_are_the_cell_means() -> None:
    frames = torch.randn(3, 257, 8)
    result = spatial_pool(frames, 65 / 257)  # CLS + 8 x 8 cells of 2 x 2 patches
    assert result.grid == (8, 8)
    assert int(result.keep.sum()) == 3 * 65
    grid = frames[:, 1:].reshape(3, 16, 16, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(3, 64, 8)
    kept = result.tokens[result.keep].reshape(3, 65, 8)
    assert torch.equal(kept[:, 0], frames[:, 0])  # the CLS token passes through
    assert torch.allclose(kept[:, 1:], expected, atol=1e-6)
    top_left = (torch.arange(8)[:, None] * 32 + torch.arange(8)[None, :] * 2).reshape(-1) + 1
    assert torch.equal(result.keep[0].nonzero().squeeze(1)[1:], top_left)


def test_uneven_cells_partition_the_grid() -> None:
    frames = torch.ones(1, 17, 2)  # 4 x 4 grid into 3 x 2 cells of unequal size
    frames[0, 1:, 0] = torch.arange(16.0)
    result = spatial_pool(frames, 7 / 17)
    assert result.grid in ((3, 2), (2, 3))
    kept = result.tokens[0, result.keep[0]]
    assert torch.allclose(kept[1:, 1], torch.ones(6))  # a mean of ones is one: every patch in exactly one cell
    assert float(kept[1:, 0].min()) >= 0 and float(kept[1:, 0].max()) <= 15


def test_fraction_outside_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="pooling fraction must be in"):
        spatial_pool(torch.zeros(1, 17, 2), 0.0)


def test_pool_at_full_budget_equals_dense() -> None:
    model = build_model()
    inputs = build_inputs(model, [6, 9])
    with torch.no_grad():
        dense = model(**inputs).logits
        apply_patch(model, method_config("pool", 1.0))
        pooled = model(**inputs).logits
    assert torch.allclose(dense, pooled, atol=1e-5)


def test_pool_keeps_its_budget_in_every_layer_and_rows_match_alone() -> None:
    model = apply_patch(build_model(image_size=64, layers=3), method_config("pool", 0.25))
    tpf = tokens_per_frame(model)
    inputs = build_inputs(model, [4, 9], frames=4)
    with torch.no_grad():
        batch_logits = model(**inputs).logits[:, -1]
        batch = last_stats(model)
        alone_logits = model(**row_inputs(inputs, 0)).logits[:, -1]
        alone = last_stats(model)[0]
    per_frame = 1 + 16  # CLS + 4 x 4 cells of the 8 x 8 grid
    for stats in batch:
        assert stats.visual_tokens_per_layer == [4 * per_frame] * 3
        assert stats.removed_by_merge == 4 * (tpf - per_frame)
        assert stats.reduced_kept is not None and stats.reduced_kept.numel() == 4 * per_frame
        assert stats.flops_ratio < 0.5
        assert not stats.kept_indices  # nothing pruned inside the LLM
    assert torch.equal(alone.reduced_kept, batch[0].reduced_kept)
    assert torch.allclose(alone_logits[0], batch_logits[0], atol=1e-4)


def test_pool_and_temporal_merge_are_exclusive() -> None:
    with pytest.raises(ValueError, match="set one of them"):
        method_config("pool", 0.25).replace(temporal_merge=0.9)
