"""The pure steps of segmenting by shots: samples, HSV scores, cut times, clips with bounded lengths."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest

from pipeline.stages.shots import (
    ShotSegmenting,
    clip_bounds,
    content_score,
    content_sum,
    cut_times,
    hsv_frame,
    sample_indices,
    shrink,
)

# ---------------------------------------------------------------------------------------------------------
# Frames -> scores


def test_hsv_matches_the_reference_formula_on_every_hue() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0]]  # black, white, grey, red
    hsv = hsv_frame(rgb)
    for (r, g, b), (h, s, v) in zip(rgb.reshape(-1, 3).tolist(), hsv.reshape(-1, 3).tolist(), strict=True):
        rh, rs, _rv = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert v == max(r, g, b)
        assert abs(s - rs * 255) <= 1
        assert min(abs(h - rh * 180), 180 - abs(h - rh * 180)) <= 1  # hue wraps at 180
        assert 0 <= h < 180


def test_content_score_is_the_mean_of_the_three_channel_differences() -> None:
    a = hsv_frame(np.full((4, 6, 3), (200, 40, 40), dtype=np.uint8))  # red
    b = hsv_frame(np.full((4, 6, 3), (40, 40, 200), dtype=np.uint8))  # blue
    (h1, s1, v1), (h2, s2, v2) = a[0, 0], b[0, 0]
    expected = (abs(h1 - h2) + abs(s1 - s2) + abs(v1 - v2)) / 3
    assert content_score(a, b) == pytest.approx(expected) and content_score(a, a) == 0
    assert content_sum(a, b) == round(expected * a.size)


def test_shrink_takes_block_means_to_about_the_side() -> None:
    frame = np.zeros((270, 480, 3), dtype=np.uint8)
    frame[:, 240:] = 201
    small = shrink(frame, side=64)  # factor 480 // 64 = 7
    assert small.shape == (38, 68, 3)
    assert small[:, :34].max() == 0 and small[:, 35:].min() == 201  # block 34 straddles the edge
    assert shrink(frame[:40, :50], side=64).shape == (40, 50, 3)  # small frames are kept


def test_sample_indices_take_the_frame_on_screen_at_each_tick() -> None:
    ts = np.arange(90) / 30  # 3 s at 30 fps
    assert sample_indices(ts, 3.0, 4.0).tolist() == [0, 7, 15, 22, 30, 37, 45, 52, 60, 67, 75, 82]
    assert sample_indices(np.arange(5) / 2, 2.5, 4.0).tolist() == [0, 1, 2, 3, 4]  # slower than 4 fps: all
    assert sample_indices(np.array([0.04, 1.0]), 2.0, 1.0).tolist() == [0, 1]  # a late first frame is on at 0


# ---------------------------------------------------------------------------------------------------------
# Scores -> cut times


def sums_from(scores: list[float], elements: int = 300) -> np.ndarray:
    return np.round(np.asarray(scores) * elements).astype(np.int64)


def test_cuts_are_the_first_sample_of_each_new_shot() -> None:
    times = np.arange(8) * 0.25
    scores = [1, 2, 50, 1, 40, 1, 39.99]  # samples (0, 1) ... (6, 7): one fewer than the samples
    cuts = cut_times(times, sums_from(scores), 300, threshold=40, min_shot_seconds=0)
    assert cuts == [0.75, 1.25]  # 50 at pair (2,3), exactly 40 at (4,5); 39.99 is under


def test_cuts_closer_than_the_minimum_shot_are_ignored() -> None:
    times = np.arange(10) * 0.25
    scores = [50, 50, 0, 50, 0, 0, 50, 0, 0]
    assert cut_times(times, sums_from(scores), 300, 40, min_shot_seconds=0.5) == [0.5, 1.0, 1.75]
    assert cut_times(times, sums_from(scores), 300, 40, min_shot_seconds=0.0) == [0.25, 0.5, 1.0, 1.75]
    with pytest.raises(ValueError, match="one entry per pair"):
        cut_times(times, sums_from(scores[:3]), 300, 40, 0.5)


# ---------------------------------------------------------------------------------------------------------
# Cut times -> clips


def lengths(clips: list[tuple[float, float]]) -> list[float]:
    return [round(end - start, 6) for start, end in clips]


def tiles(clips: list[tuple[float, float]], duration: float) -> bool:
    starts_at_zero = clips[0][0] == 0 and clips[-1][1] == duration
    return starts_at_zero and all(a[1] == b[0] for a, b in itertools.pairwise(clips))


def test_shots_within_the_bounds_are_kept_as_they_are() -> None:
    clips = clip_bounds([4.0, 9.5], 20.0, 2.0, 30.0)
    assert clips == [(0.0, 4.0), (4.0, 9.5), (9.5, 20.0)]


def test_short_shots_join_the_next_and_a_short_last_one_the_previous() -> None:
    clips = clip_bounds([1.0, 1.5, 5.0, 5.5, 11.0], 12.0, 2.0, 30.0)
    # 0-1 and 1-1.5 are short: the clip runs to the first cut >= 2 s on (5.0); 5.0-5.5 short: to 11.0;
    # 11.0-12.0 is short and last: it joins 5.0-11.0.
    assert clips == [(0.0, 5.0), (5.0, 12.0)]


def test_long_shots_are_split_into_equal_parts_within_the_maximum() -> None:
    clips = clip_bounds([70.0], 75.0, 2.0, 30.0)
    assert lengths(clips) == [23.333333, 23.333333, 23.333333, 5.0] and tiles(clips, 75.0)
    assert lengths(clip_bounds([], 60.0, 2.0, 30.0)) == [30.0, 30.0]  # exactly twice the maximum: two parts


def test_a_video_shorter_than_the_minimum_is_one_clip() -> None:
    assert clip_bounds([0.5, 1.0], 1.5, 2.0, 30.0) == [(0.0, 1.5)]


@pytest.mark.parametrize("seed", range(20))
def test_random_cuts_give_clips_that_tile_the_video_within_the_bounds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    duration = float(rng.uniform(3, 200))
    cuts = sorted(rng.uniform(0, duration, size=int(rng.integers(0, 40))).tolist())
    clips = clip_bounds(cuts, duration, 2.0, 30.0)
    assert tiles(clips, duration)
    assert all(2.0 - 1e-9 <= n <= 30.0 + 1e-9 for n in lengths(clips))
    # Every clip starts at a cut, or splits a long shot into equal parts: then it is as long as the one before.
    for before, clip in itertools.pairwise(clips):
        assert clip[0] in cuts or lengths([before]) == lengths([clip])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 0}, "threshold must be a number > 0"),
        ({"min_segment_seconds": -1}, "min_segment_seconds must be a number > 0"),
        ({"max_segment_seconds": 3.0}, "max_segment_seconds must be at least twice min_segment_seconds"),
        ({"min_shot_seconds": -0.1}, "min_shot_seconds must be >= 0"),
        ({"sample_fps": float("nan")}, "sample_fps must be a number > 0"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShotSegmenting(**changes)
