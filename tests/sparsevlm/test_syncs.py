"""A prefill waits for the device a fixed number of times, whatever the batch size, and mixed batches work."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IMAGE_TOKEN, PAD, VIDEO_TOKEN, build_inputs, build_model

from sparsevlm import SparseConfig, apply_patch, last_stats
from sparsevlm.bench.syncs import SyncCounter, decode_step_syncs
from sparsevlm.prompt import left_pad

CONFIGS = {
    "dense": SparseConfig.preset("dense"),
    "video-25": SparseConfig.preset("video-25"),
    "video-xf-25": SparseConfig.preset("video-xf-25"),
    "two-layer budget": SparseConfig(prune_layers=(1, 2), keep_tokens=(40, 12)),
    "rank": SparseConfig(prune_layers=(1, 2), rank_scale=2.0, rank_bias=1.0),
}


def count_syncs(model: torch.nn.Module, batch: int) -> int:
    inputs = build_inputs(model, [4 + row % 7 for row in range(batch)], seed=batch)
    with torch.no_grad(), SyncCounter() as syncs:
        model(**inputs)
    return syncs.total


@pytest.mark.parametrize("name", list(CONFIGS))
def test_host_syncs_of_a_prefill_do_not_grow_with_the_batch(name: str) -> None:
    config = CONFIGS[name]
    model = apply_patch(build_model(layers=4), config)
    small, large = count_syncs(model, 2), count_syncs(model, 32)
    assert small == large
    # One read of the row counts, one of the rater counts, two to find rows sharing a video, the model's
    # own few, one or two per frame reduction, and per pruning layer the decisions read back (+1 in rank mode).
    assert large <= 10 + 3 * len(config.prune_layers)


def test_a_sync_counter_sees_what_a_gpu_would_wait_for() -> None:
    x = torch.arange(6.0)
    with SyncCounter() as syncs:
        _ = x[x > 2], int(x.sum()), x.tolist(), x.nonzero()
    assert syncs.by_kind == {"bool_index": 1, "item": 1, "host_copy": 1, "nonzero": 1}


def _rows(model: torch.nn.Module) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """A video row, an image row and a text-only row (ids, videos, images)."""
    vision = model.config.vision_config
    per_frame = (vision.image_size // vision.patch_size) ** 2
    gen = torch.Generator().manual_seed(3)
    video = [1, 5, 6] + [VIDEO_TOKEN] * (8 * (per_frame + 1)) + [11, 12, 13, 14, 7]
    image = [1, 5, 6] + [IMAGE_TOKEN] * per_frame + [21, 22, 23, 7]
    text = [1, 5, 31, 32, 33, 34, 35, 7]
    size = vision.image_size
    videos = torch.randn(1, 8, 3, size, size, generator=gen)
    images = torch.randn(1, 3, size, size, generator=gen)
    return [video, image, text], videos, images


def _batch(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    ids, mask = left_pad(rows, PAD)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("preset", ["video-25", "video-xf-25"])
def test_a_batch_of_video_image_and_text_rows_equals_each_row_alone(preset: str) -> None:
    model = apply_patch(build_model(layers=4), preset)
    rows, videos, images = _rows(model)
    settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        batch = model.generate(**_batch(rows), pixel_values_videos=videos, pixel_values=images, **settings)[:, -5:]
        stats = last_stats(model)
        alone = [
            model.generate(**_batch(rows[:1]), pixel_values_videos=videos, **settings)[0, -5:],
            model.generate(**_batch(rows[1:2]), pixel_values=images, **settings)[0, -5:],
            model.generate(**_batch(rows[2:]), **settings)[0, -5:],
        ]
    for row in range(3):
        assert torch.equal(batch[row], alone[row]), f"row {row} differs from its answer alone"
    assert stats[0].equivalent_tokens < stats[0].visual_tokens_in
    assert stats[1].equivalent_tokens < stats[1].visual_tokens_in
    assert stats[2].visual_tokens_in == 0 and stats[2].kept_indices == {}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("lengths", [[9], [9, 9], [9, 5, 7]], ids=["one row", "equal rows", "padded rows"])
def test_a_decoding_step_of_the_patch_waits_for_nothing(name: str, lengths: list[int]) -> None:
    """No host read and no tensor built from host data in any decoding forward, at any batch."""
    model = build_model(layers=4)
    inputs = build_inputs(model, lengths, seed=1)
    stock = decode_step_syncs(model, inputs, new_tokens=4)  # transformers' own decoding, for reference
    apply_patch(model, CONFIGS[name])
    steps = decode_step_syncs(model, inputs, new_tokens=4)
    assert len(steps) == 3
    assert all(step["host_tensors"] == 0 for step in steps), steps
    assert all(step["syncs"] <= ref["syncs"] for step, ref in zip(steps, stock, strict=True)), (steps, stock)
    if name != "dense":  # the pruned cache's decoding is the patch's own: no read at all
        assert all(step["syncs"] == 0 for step in steps), steps


def test_the_counter_sees_host_built_tensors_apart() -> None:
    with SyncCounter() as syncs:
        torch.tensor([1, 2]), torch.arange(3)
    assert syncs.host_tensors == 1 and syncs.total == 0
