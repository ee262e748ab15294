"""What decoding deals in: its errors, the video's metadata, segment plans and segments, and the limits every decode
step checks (frame count, wall clock). No decoder here (pipeline/stages/readers.py, pipeline/stages/decode.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_BYTES = 20 * 2**30  # 20 GiB
DEFAULT_MAX_DURATION_S = 6 * 3600.0
DEFAULT_MAX_PIXELS = 7680 * 4320  # 8K UHD; 8 such RGB frames are ~0.8 GB before resizing
DEFAULT_MAX_FRAMES = 2_000_000  # 6 h (the duration guard) at 90 fps; bounds the per-frame index arrays
DEFAULT_MAX_DECODE_S = 3600.0  # wall-clock seconds for one video, its download included
_clock = time.monotonic  # what deadlines are measured on (tests replace it)


class DecodeError(Exception):
    """A deterministic per-video failure: retrying will not help; record an error row."""


class MissingMedia(DecodeError):
    """The file or object does not exist (any more)."""


class UnsupportedMedia(DecodeError):
    """Not a video container we recognise, or a codec no available decoder handles."""


class CorruptMedia(DecodeError):
    """A recognised container that is empty, truncated or damaged."""


class NoVideoStream(DecodeError):
    """The container holds no video stream (audio only, or only cover art)."""


class TooLarge(DecodeError):
    """The file exceeds a configured size, resolution or duration guard."""


class Timeout(DecodeError):
    """Decoding the video took longer than its wall-clock limit."""


class AccessDenied(DecodeError):
    """The storage refuses this object to the run's credentials (HTTP 401/403)."""


class StorageRefused(DecodeError):
    """The storage answered the request for this object with another client error (4xx)."""


class SourceChanged(DecodeError):
    """The file or object is no longer the version the listing saw (replaced, overwritten or growing): its rows
    would carry the listed version's id with another version's content. A rerun lists the new version."""


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline records about a decoded video (source resolution, after rotation)."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    num_frames: int
    rotation: int  # clockwise degrees applied for display: 0, 90, 180 or 270
    decoder: str  # "decord" or "pyav"
    segments: int = 1  # segments in the whole video's plan (a split task decodes a share of them)


@dataclass(frozen=True)
class SegmentPlan:
    """Which frames one segment samples; `frame_indices` index the video's frames in display order."""

    index: int
    start_s: float
    end_s: float
    frame_indices: np.ndarray  # int64 [N], non-decreasing


@dataclass(frozen=True)
class Segment:
    """One segment's sampled frames at model resolution."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray  # uint8 [N, S, S, 3]
    timestamps_s: list[float]  # N presentation times, non-decreasing


def check_frames(path: str, frames: int, max_frames: int | None) -> None:
    if max_frames is not None and frames > max_frames:
        raise TooLarge(f"{path}: more than max_frames={max_frames} frames ({frames}); raise max_frames to process it")


def deadline_after(seconds: float | None) -> float | None:
    """The deadline ``seconds`` from now, for `decode_segments` and `open_local_copy` (None: no limit)."""
    return None if seconds is None else _clock() + seconds


def check_deadline(path: str, deadline: float | None) -> None:
    """Raise `Timeout` once the clock is past ``deadline`` (see `deadline_after`; None: never)."""
    if deadline is not None and _clock() > deadline:
        raise Timeout(
            f"{path}: decoding took longer than its wall-clock limit; raise max_decode_seconds "
            "(--max-decode-seconds) or split the file"
        )
