"""Cross-frame token recycling: temporal merging before the LLM, time-aware recycling, long videos."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from tiny_models import IMAGE_TOKEN, VIDEO_TOKEN, build_inputs, build_model, row_inputs, tokens_per_frame

from sparsevlm import SparseConfig, apply_patch, last_stats
from sparsevlm.recycle import frame_similarity, segment_starts, temporal_merge_batch

XF = SparseConfig(prune_layers=(1,), keep_tokens=(30,), temporal_merge=0.9, segment_threshold=0.5)


def _video(frames: int = 6, tokens: int = 5, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, tokens, dim, generator=torch.Generator().manual_seed(seed))


class _Merged(NamedTuple):
    tokens: torch.Tensor  # [T, P, D]
    keep: torch.Tensor  # [T, P] bool
    weight: torch.Tensor  # [T, P]


def temporal_merge(
    video: torch.Tensor, segment_threshold: float, merge_threshold: float, max_merged: int | None = None
) -> _Merged:
    """`temporal_merge_batch` on a batch of one ``[T, P, D]`` video."""
    tokens, keep, weight = temporal_merge_batch(video[None], segment_threshold, merge_threshold, max_merged)
    return _Merged(tokens[0], keep[0], weight[0])


def test_static_video_collapses_to_one_frame() -> None:
    frame = _video(1)[0]
    video = frame.expand(8, -1, -1) + 1e-4 * _video(8)
    result = temporal_merge(video, segment_threshold=0.5, merge_threshold=0.9)
    assert result.keep.sum() == frame.shape[0]
    assert result.keep[0].all() and not result.keep[1:].any()
    assert torch.equal(result.weight[0], torch.full((frame.shape[0],), 8.0))
    assert torch.allclose(result.tokens[0], video.mean(0), atol=1e-6)


def test_distinct_frames_merge_nothing() -> None:
    video = _video(6)
    result = temporal_merge(video, segment_threshold=-1.0, merge_threshold=0.9)
    assert result.keep.all()
    assert torch.equal(result.tokens, video)


def test_merging_never_crosses_a_segment_boundary() -> None:
    a, b = _video(1, seed=1)[0], _video(1, seed=2)[0]
    video = torch.stack([a, a, a, b, b, b])  # a shot change after frame 2
    result = temporal_merge(video, segment_threshold=0.5, merge_threshold=0.9)
    assert segment_starts(frame_similarity(video), 0.5).tolist() == [True, False, False, True, False, False]
    assert result.keep[0].all() and result.keep[3].all()  # each segment keeps its own first frame
    assert not result.keep[[1, 2, 4, 5]].any()
    assert segment_starts(torch.tensor([0.9, 0.2, 0.95]), 0.5).tolist() == [True, False, True, False]


def test_partly_static_frames_keep_only_what_changes() -> None:
    video = _video(1)[0].expand(4, -1, -1).clone()
    video[2, 1] = _video(1, seed=9)[0, 1]  # one token changes at frame 2 and stays changed
    video[3, 1] = video[2, 1]
    result = temporal_merge(video, segment_threshold=0.0, merge_threshold=0.9)
    assert result.keep.sum() == video.shape[1] + 1
    assert result.keep[2, 1] and not result.keep[3, 1]  # frame 3 merges into the new survivor at frame 2


def test_a_merge_cap_merges_the_most_similar_tokens_first() -> None:
    frame = _video(1, tokens=10)[0]
    noise = 2.0 ** torch.arange(10.0)[None, :, None] * 0.001 * _video(8, tokens=10)  # position j changes 2^j times more
    video = frame.expand(8, -1, -1) + noise
    free = temporal_merge(video, segment_threshold=0.0, merge_threshold=-1.0)
    assert (~free.keep).sum() == 70  # uncapped, with a threshold every token passes: every later frame merges
    capped = temporal_merge(video, segment_threshold=0.0, merge_threshold=-1.0, max_merged=21)
    merged = ~capped.keep
    assert merged.sum() == 21
    assert merged[1:, :3].all()  # the 3 steadiest positions of the 7 later frames merge first, nothing else
    assert torch.equal(temporal_merge(video, 0.0, -1.0, max_merged=70).keep, free.keep)  # a loose cap changes nothing
    assert temporal_merge(video, 0.0, -1.0, max_merged=0).keep.all()


def test_merge_floor_keeps_a_static_video_at_its_share_of_the_target() -> None:
    model = build_model()
    inputs = row_inputs(build_inputs(model, [8]), 0)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"][:, :1].expand(-1, 8, -1, -1, -1).contiguous()
    tpf = tokens_per_frame(model)
    base = SparseConfig(prune_layers=(1,), target_fraction=0.25, temporal_merge=0.9, segment_threshold=0.5)
    with torch.no_grad():
        apply_patch(model, base)
        model(**inputs)
        free = last_stats(model)[0]
        apply_patch(model, base.replace(merge_floor=2.0))
        model(**inputs)
        floored = last_stats(model)[0]
    assert free.removed_by_merge == 7 * tpf  # a static video collapses to one frame: under the 2 frames' target
    assert floored.removed_by_merge == 8 * tpf - math.ceil(2.0 * 0.25 * 8 * tpf)  # stops at twice the target
    assert floored.removed_by_pruning > 0  # and the text-guided pruner chooses the rest
    assert floored.equivalent_tokens < free.visual_tokens_in


def test_merge_floor_needs_merging_and_a_target() -> None:
    with pytest.raises(ValueError, match="merge_floor"):
        SparseConfig(prune_layers=(1,), keep_tokens=(30,), temporal_merge=0.9, merge_floor=2.0)
    with pytest.raises(ValueError, match="merge_floor"):
        SparseConfig(prune_layers=(1,), target_fraction=0.25, merge_floor=2.0)
    with pytest.raises(ValueError, match="merge_floor"):
        SparseConfig(prune_layers=(1,), target_fraction=0.25, temporal_merge=0.9, merge_floor=0.5)


def test_static_video_in_the_model_keeps_one_frame_and_positions() -> None:
    model = build_model()
    inputs = row_inputs(build_inputs(model, [8]), 0)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"][:, :1].expand(-1, 8, -1, -1, -1).contiguous()
    apply_patch(model, SparseConfig(temporal_merge=0.99, segment_threshold=0.5))  # merge only, no pruning
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    stats = last_stats(model)[0]
    tpf = tokens_per_frame(model)
    assert stats.visual_tokens_in == 8 * tpf
    assert stats.removed_by_merge == 7 * tpf
    assert stats.visual_tokens_per_layer == [tpf] * 4
    assert stats.dense_prefill_flops > 5 * stats.prefill_flops  # the dense cost counts the unmerged input
    assert out.past_key_values.layers[0].keys.shape[2] == inputs["input_ids"].shape[1] - 7 * tpf


def test_no_merges_means_the_plain_method() -> None:
    model = build_model()
    inputs = build_inputs(model, [5, 9])
    plain = SparseConfig(prune_layers=(1,), keep_tokens=(30,))
    with torch.no_grad():
        apply_patch(model, plain)
        expected = model(**inputs).logits
        apply_patch(model, plain.replace(temporal_merge=1.0, segment_threshold=-1.0))  # random frames: no merge
        got = model(**inputs).logits
    assert all(s.removed_by_merge == 0 for s in last_stats(model))
    assert torch.equal(got, expected)


def test_cross_frame_generate_cache_batch_and_seed() -> None:
    model = apply_patch(build_model(), XF.replace(recycle_time_weight=0.5, segment_threshold=-1.0))
    inputs = build_inputs(model, [4, 10], seed=3)
    half = inputs["pixel_values_videos"][:, :4]
    pairs = torch.stack([half, half + 0.01], dim=2)  # [B, 4, 2, 3, H, W]: every frame nearly repeated once
    inputs["pixel_values_videos"] = pairs.flatten(1, 2)
    settings = {
        "max_new_tokens": 5,
        "min_new_tokens": 5,
        "do_sample": False,
        "suppress_tokens": [IMAGE_TOKEN, VIDEO_TOKEN],
    }
    with torch.no_grad():
        cached = model.generate(**inputs, **settings)[:, -5:]
        stats = last_stats(model)
        again = model.generate(**inputs, **settings)[:, -5:]
        uncached = model.generate(**inputs, **settings, use_cache=False)[:, -5:]
        alone = model.generate(**row_inputs(inputs, 1), **settings)[:, -5:]
    assert all(s.removed_by_merge > 0 for s in stats)
    assert torch.equal(cached, again) and torch.equal(cached, uncached)
    assert torch.equal(alone[0], cached[1])


def test_chunked_vision_encoding_equals_unchunked() -> None:
    model = build_model()
    pixels = build_inputs(model, [3])["pixel_values_videos"]
    apply_patch(model, SparseConfig())
    with torch.no_grad():
        whole = model.model.get_video_features(pixels).pooler_output
        apply_patch(model, SparseConfig(vision_chunk_frames=3))
        chunked = model.model.get_video_features(pixels).pooler_output
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, atol=1e-6)


def test_long_preset_costs_what_eight_frames_cost() -> None:
    model = apply_patch(build_model(layers=6), "video-long")
    inputs = build_inputs(model, [6], frames=32)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = last_stats(model)[0]
    eight_frames = 8 * tokens_per_frame(model)
    assert stats.visual_tokens_in == 4 * eight_frames
    assert abs(stats.equivalent_tokens - 0.25 * eight_frames) <= 0.02 * eight_frames
    assert max(stats.seq_len_per_layer) <= stats.seq_len_per_layer[0]
