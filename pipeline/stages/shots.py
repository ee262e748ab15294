"""Segmenting by shots: cut a video where the picture changes abruptly, then bound the clips' lengths.

``--segment-by shots`` replaces the fixed ``[k * segment_seconds, (k + 1) * segment_seconds)`` windows with
clips that follow the video's shots, so that one segment shows one scene to the model. Three pure steps, each
unit-tested without a decoder:

1. :func:`hsv_frame` and :func:`content_score`: a sampled frame's HSV picture, and the mean absolute difference
   of hue, saturation and value between two consecutive samples (0-255 scale, hue on OpenCV's 0-179).
2. :func:`cut_times`: a cut where the score reaches ``threshold``, at least ``min_shot_seconds`` after the
   previous cut (the first frame of the new shot is the cut's time).
3. :func:`clip_bounds`: the shots between cuts become clips of ``min_segment_seconds`` to
   ``max_segment_seconds``: a short shot joins the next one (a short last one joins the previous clip), a long
   one is split into equal parts.

Why our own detector, not PySceneDetect: PySceneDetect's ``ContentDetector`` is the field's reference, and
steps 1-2 are its algorithm (the same HSV deltas, equal weights, a threshold and a minimum scene length;
PySceneDetect docs, "detect-content"). But it brings OpenCV (a ~60 MB wheel) and opens and
decodes the video itself, through its own backend, every frame at full resolution. Here the scores come from the
decoder the pipeline already has open (decord, or PyAV where decord cannot read the file): one extra forward pass
that converts only a few frames a second (:attr:`ShotSegmenting.sample_fps`) to a small picture, then the
usual seeks to the frames the model sees. The cost of that pass is measured in docs/benchmarks.md. Sampling at a
few frames a second instead of every frame means motion between samples scores higher than PySceneDetect's
frame-to-frame deltas; the default threshold was checked on the clips of tests/assets (docs/benchmarks.md).

The arithmetic is integer (HSV with integer division, sums of absolute differences compared against
``threshold * pixels``), so every decode task of a split video (:mod:`pipeline.stages.split`), on whichever machine,
finds the same cuts from the same decoded pixels and plans the same segments.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

__all__ = [
    "DETECT_SIDE",
    "SEGMENT_BY",
    "SegmentBy",
    "ShotSegmenting",
    "clip_bounds",
    "content_score",
    "content_sum",
    "cut_times",
    "hsv_frame",
    "sample_indices",
    "shrink",
]

SegmentBy = Literal["fixed", "shots"]  # --segment-by: fixed-length segments (the default), or shots
SEGMENT_BY: tuple[SegmentBy, ...] = get_args(SegmentBy)
DETECT_SIDE = 64  # the sampled frames' longer side in pixels: cuts change whole pictures, not details


@dataclass(frozen=True)
class ShotSegmenting:
    """How ``--segment-by shots`` cuts a video (all of it is part of the config key).

    Attributes:
        threshold: the content score (mean absolute HSV difference of two consecutive samples, 0-255) at or
            above which the second sample starts a new shot. PySceneDetect's ``ContentDetector`` uses 27 between
            consecutive frames; samples a quarter second apart score motion higher (a handheld pan reaches 45 on
            tests/assets, a hard cut 68), hence 40 (docs/benchmarks.md).
        min_shot_seconds: a cut closer than this to the previous one is ignored (flashes, fast pans).
        min_segment_seconds: shorter shots join their neighbours; also the shortest video cut at all.
        max_segment_seconds: longer shots are split into equal parts no longer than this; at least twice
            ``min_segment_seconds``, so that the parts are never shorter than the minimum.
        sample_fps: frames a second compared for cuts; a cut is placed within one sample interval of the true one.
    """

    threshold: float = 40.0
    min_shot_seconds: float = 0.5
    min_segment_seconds: float = 2.0
    max_segment_seconds: float = 30.0
    sample_fps: float = 4.0

    def __post_init__(self) -> None:
        for name in ("threshold", "min_segment_seconds", "max_segment_seconds", "sample_fps"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not self.min_shot_seconds >= 0:
            raise ValueError(f"min_shot_seconds must be >= 0, got {self.min_shot_seconds!r}")
        if not self.max_segment_seconds >= 2 * self.min_segment_seconds:
            raise ValueError(
                f"max_segment_seconds must be at least twice min_segment_seconds ({self.min_segment_seconds!r}), got "
                f"{self.max_segment_seconds!r}: a long shot's equal parts are then never shorter than the minimum"
            )


def sample_indices(timestamps_s: np.ndarray, duration_s: float, sample_fps: float) -> np.ndarray:
    """The frames compared for cuts: the one on screen at each tick of a ``sample_fps`` clock, each once.

    Args:
        timestamps_s: frame start times, `[F]`, non-decreasing.
        duration_s: the video's end.
        sample_fps: ticks a second.

    Returns:
        int64 `[K]`, increasing frame indices (every frame when the video's rate is below ``sample_fps``).
    """
    ticks = np.arange(math.ceil(duration_s * sample_fps - 1e-9)) / sample_fps  # [K']
    on_screen = np.searchsorted(np.asarray(timestamps_s, dtype=np.float64), ticks, side="right") - 1
    return np.unique(np.clip(on_screen, 0, len(timestamps_s) - 1)).astype(np.int64)


def shrink(frame: np.ndarray, side: int = DETECT_SIDE) -> np.ndarray:
    """A frame reduced by an integer factor to a longer side of about ``side``, by block means.

    Args:
        frame: uint8 RGB `[H, W, 3]`.
        side: the wanted longer side; frames already smaller are kept.

    Returns:
        uint8 `[H // f, W // f, 3]` with ``f = max(H, W) // side`` (at least 1); integer means, exact anywhere.
    """
    factor = max(1, max(frame.shape[0], frame.shape[1]) // side)
    h, w = frame.shape[0] // factor, frame.shape[1] // factor
    # Rows first, then columns: two sums over contiguous runs, several times faster than one over both axes.
    rows = frame[: h * factor, : w * factor].reshape(h, factor, w * factor * 3).sum(axis=1, dtype=np.uint32)
    sums = rows.reshape(h, w, factor, 3).sum(axis=2, dtype=np.uint32)  # [h, w, 3]
    return ((sums + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def hsv_frame(rgb: np.ndarray) -> np.ndarray:
    """8-bit HSV as OpenCV's ``COLOR_RGB2HSV`` defines it (hue 0-179, saturation and value 0-255), in integers.

    Args:
        rgb: uint8 `[H, W, 3]`.

    Returns:
        int32 `[H, W, 3]`: hue, saturation, value.
    """
    c = rgb.astype(np.int32)  # [H, W, 3]
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = c.max(axis=-1)  # [H, W]
    delta = v - c.min(axis=-1)  # [H, W]
    s = np.where(v > 0, (255 * delta + v // 2) // np.maximum(v, 1), 0)
    d = np.maximum(delta, 1)
    # Hue in degrees / 2 (OpenCV's 8-bit range), by which channel is the largest; 0 for greys.
    h = np.where(v == r, (30 * (g - b)) // d, np.where(v == g, 60 + (30 * (b - r)) // d, 120 + (30 * (r - g)) // d))
    h = np.where(delta > 0, h % 180, 0)
    return np.stack([h, s, v], axis=-1)


def content_score(previous: np.ndarray, current: np.ndarray) -> float:
    """PySceneDetect's content value: the mean of the hue, saturation and value channels' mean absolute
    differences between two HSV frames (equal weights, no edges: ``ContentDetector``'s defaults).

    Args:
        previous: int32 `[H, W, 3]` from :func:`hsv_frame`.
        current: int32 `[H, W, 3]`, the same shape.

    Returns:
        The score on the 0-255 scale (the three channel means averaged).
    """
    return content_sum(previous, current) / previous.size


def content_sum(previous: np.ndarray, current: np.ndarray) -> int:
    """:func:`content_score` times the element count, as an exact integer (what :func:`cut_times` compares)."""
    return int(np.abs(current - previous).sum(dtype=np.int64))


def cut_times(
    times_s: np.ndarray, sums: np.ndarray, elements: int, threshold: float, min_shot_seconds: float
) -> list[float]:
    """Where new shots start: samples whose content score reaches ``threshold``.

    Args:
        times_s: the samples' start times, `[K]`, increasing.
        sums: `[K - 1]`, ``sums[i]`` the :func:`content_sum` between samples ``i`` and ``i + 1``.
        elements: the element count of one HSV frame (``H * W * 3``): ``sums / elements`` is the score.
        threshold: the score that makes a cut.
        min_shot_seconds: a cut this close to the previous one (or to the video's start) is ignored.

    Returns:
        The cut times in increasing order: the start time of each new shot's first sample, so a true cut lies
        within one sample interval before it.
    """
    times = np.asarray(times_s, dtype=np.float64)
    sums = np.asarray(sums, dtype=np.int64)
    if sums.shape != (max(times.size - 1, 0),):
        raise ValueError(f"sums must have one entry per pair of samples, {times.size - 1}, got shape {sums.shape}")
    # Integer comparison, exact: sum >= threshold * elements, threshold given to 1/1000.
    over = sums * 1000 >= round(threshold * 1000) * elements  # [K - 1]
    cuts: list[float] = []
    last = float(times[0]) if times.size else 0.0
    for i in np.flatnonzero(over).tolist():
        at = float(times[i + 1])
        if at - last >= min_shot_seconds:
            cuts.append(at)
            last = at
    return cuts


def clip_bounds(
    cuts_s: list[float], duration_s: float, min_segment_seconds: float, max_segment_seconds: float
) -> list[tuple[float, float]]:
    """Clips from shots: ``[start, end)`` pairs that tile ``[0, duration_s]``, each between the two lengths.

    A cut less than ``min_segment_seconds`` after the current clip's start is dropped (the short shot joins the
    next), and so is the last kept cut when the video's remainder after it is shorter than that (the short last
    shot joins the previous clip). A clip longer than ``max_segment_seconds`` is split into
    ``ceil(length / max_segment_seconds)`` equal parts. Every clip is then within the bounds, except a whole video
    shorter than ``min_segment_seconds``, which is one clip.

    Args:
        cuts_s: cut times from :func:`cut_times`, increasing; those outside ``(0, duration_s)`` are ignored.
        duration_s: the video's end.
        min_segment_seconds: the shortest clip.
        max_segment_seconds: the longest clip; at least ``2 * min_segment_seconds``.

    Returns:
        The clips in time order.
    """
    if not max_segment_seconds >= 2 * min_segment_seconds > 0:
        raise ValueError(f"need 0 < 2 * min <= max, got {min_segment_seconds=}, {max_segment_seconds=}")
    kept = [0.0]
    for cut in cuts_s:
        if cut - kept[-1] >= min_segment_seconds and cut < duration_s:
            kept.append(float(cut))
    if len(kept) > 1 and duration_s - kept[-1] < min_segment_seconds:
        kept.pop()  # the short last shot joins the clip before it
    edges = [*kept, float(duration_s)]
    clips: list[tuple[float, float]] = []
    for start, end in itertools.pairwise(edges):
        parts = max(1, math.ceil((end - start) / max_segment_seconds - 1e-9))
        inner = [start + (end - start) * k / parts for k in range(parts)]  # the equal parts' starts
        clips.extend(itertools.pairwise([*inner, end]))
    return clips
