"""Decode one video file into segments of model-resolution uint8 frames. Plain functions; no Ray.

`decode_segments` opens a video once and returns its `VideoInfo` plus a lazy iterator that decodes one
segment at a time (memory bounded by one segment). Frames leave already resized and centre-cropped to the
model resolution (`sparsevlm.preprocess.resize_and_crop_uint8`). decord decodes (`num_threads=1`: VP9 bug
dmlc/decord#246); PyAV takes what decord cannot open or decode at its first frame (AV1, VP9 without a
duration, small quarter-turned frames). decord 0.6.0 applies the display-matrix rotation itself (measured
on `moviepy_fire2.mp4`, -180°, and on ±90° clips); the PyAV path rotates with `np.rot90`. Mirroring display
matrices are handled by neither. Deterministic per-video failures raise `DecodeError` subclasses (the
pipeline writes error rows), including a storage's permanent answers (`AccessDenied`, `MissingMedia`,
`StorageRefused`); transient storage failures raise `pipeline.storage.TransientIOError` (Ray retries the task).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import av
import decord
import fsspec
import numpy as np

from pipeline.storage import TransientIOError, http_status, storage_failure
from sparsevlm.preprocess import resize_and_crop_uint8

logger = logging.getLogger(__name__)

DecoderName = Literal["auto", "decord", "pyav"]
DEFAULT_MAX_BYTES = 20 * 2**30  # 20 GiB
DEFAULT_MAX_DURATION_S = 6 * 3600.0
DEFAULT_MAX_PIXELS = 7680 * 4320  # 8K UHD; 8 such RGB frames are ~0.8 GB before resizing
DEFAULT_MAX_FRAMES = 2_000_000  # 6 h (the duration guard) at 90 fps; bounds the per-frame index arrays
DEFAULT_MAX_DECODE_S = 3600.0  # wall-clock seconds for one video, its download included
_DEADLINE_EVERY = 256  # demuxed packets between two deadline checks
_clock = time.monotonic  # what deadlines are measured on (tests replace it)
# decord raises RuntimeError when it cannot open a file, DECORDError (not a RuntimeError) on failed checks,
# and AssertionError for a zero frame count.
_DECORD_ERRORS = (RuntimeError, decord.DECORDError, AssertionError)


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


def plan_segments(
    timestamps_s: np.ndarray,
    duration_s: float,
    frames_per_segment: int,
    segment_seconds: float | None,
) -> list[SegmentPlan]:
    """Split a video into segments and pick `frames_per_segment` frames in each.

    Segments are `[k * segment_seconds, (k + 1) * segment_seconds)`; a final remainder shorter than half a
    segment is merged into the previous one (a 10.4 s clip is one segment, not two). Within a segment the
    frames starting inside it are split into N equal runs and the centre of each run is taken
    (`np.linspace` centres); with fewer than N frames some repeat. A segment in which no frame starts (a gap
    in variable-frame-rate video) takes the frame on screen at its start.

    Args:
        timestamps_s: Frame start times in seconds, `[F]`, non-decreasing, starting near 0.
        duration_s: End of the last frame in seconds.
        frames_per_segment: N, frames sampled per segment.
        segment_seconds: Segment length; None means one segment for the whole video.

    Returns:
        The segment plans in time order.
    """
    ts = np.asarray(timestamps_s, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"timestamps_s must be a non-empty 1-D array, got shape {ts.shape}")
    if segment_seconds is None:
        bounds = [(0.0, duration_s)]
    else:
        count = max(1, math.ceil(duration_s / segment_seconds - 1e-9))
        bounds = [(k * segment_seconds, min((k + 1) * segment_seconds, duration_s)) for k in range(count)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < segment_seconds / 2:
            bounds[-2:] = [(bounds[-2][0], duration_s)]
    plans = []
    for k, (start, end) in enumerate(bounds):
        first = int(np.searchsorted(ts, start, side="left"))
        stop = ts.size if k == len(bounds) - 1 else int(np.searchsorted(ts, end, side="left"))
        if stop <= first:
            first = max(first - 1, 0)
            stop = first + 1
        edges = np.linspace(first, stop, frames_per_segment + 1)
        centres = np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64)
        plans.append(SegmentPlan(k, float(start), float(end), np.clip(centres, first, stop - 1)))
    return plans


def decode_segments(
    path: str | os.PathLike[str],
    *,
    frames_per_segment: int = 8,
    segment_seconds: float | None = 10.0,
    size: int = 224,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    deadline: float | None = None,
    first_frame_only: bool = False,
    decoder: DecoderName = "auto",
) -> tuple[VideoInfo, Iterator[Segment]]:
    """Open a local video once and stream its segments.

    Checks, probing and indexing happen now, so `DecodeError`s about the file as a whole raise here; the
    returned iterator decodes lazily, one segment per step, and may still raise `CorruptMedia` for damage
    further into the file, or `Timeout` (segments already yielded stay valid). The deadline is checked
    between segments, demuxed packets and decoded frames: one blocking decoder call is not interrupted.

    Args:
        path: Local file (use `open_local_copy` for s3:// and other remote URIs).
        frames_per_segment: Frames sampled per segment (the model's T).
        segment_seconds: Segment length in seconds; None decodes the whole video as one segment.
        size: Model resolution; frames come out `[N, size, size, 3]` uint8.
        max_duration_s: Reject longer videos with `TooLarge` (None disables).
        max_bytes: Reject larger files with `TooLarge` (None disables).
        max_pixels: Reject frames with more pixels (width * height) with `TooLarge` (None disables).
        max_frames: Reject videos with more frames with `TooLarge` (None disables).
        deadline: From `deadline_after`; past it decoding stops with `Timeout` (None: no limit).
        first_frame_only: One segment holding the first decodable frame only (a cheap check that the video
            decodes; PyAV stops at that frame instead of decoding up to the middle of the video).
        decoder: "auto" (decord, PyAV fallback), or force "decord" / "pyav".

    Returns:
        `(info, segments)`: the video's metadata and an iterator of `Segment`s in time order.
    """
    if frames_per_segment < 1 or size < 1:
        raise ValueError(f"frames_per_segment and size must be >= 1, got {frames_per_segment=}, {size=}")
    if segment_seconds is not None and not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be > 0 or None (whole video), got {segment_seconds!r}")
    if decoder not in ("auto", "decord", "pyav"):
        raise ValueError(f"decoder must be 'auto', 'decord' or 'pyav', got {decoder!r}")
    path = os.fspath(path)
    _check_file(path, max_bytes)
    probe = _probe(path)
    if max_pixels is not None and probe.width * probe.height > max_pixels:
        raise TooLarge(f"{path}: {probe.width}x{probe.height} frames exceed max_pixels={max_pixels}; raise max_pixels")
    _check_duration(path, probe.duration_s, max_duration_s)

    quarter_turn = probe.rotation in (90, 270)
    height, width = (probe.width, probe.height) if quarter_turn else (probe.height, probe.width)
    reader: _DecordReader | _PyAVReader
    if decoder == "pyav":
        reader = _PyAVReader(path, probe, max_frames, deadline)
    else:
        try:
            reader = _DecordReader(path, (height, width), deadline)
        except _DECORD_ERRORS as err:
            if decoder == "decord":
                raise UnsupportedMedia(f"{path}: decord cannot open it ({_short(err)})") from err
            logger.info("decord cannot open %s (%s); falling back to PyAV", path, _short(err))
            reader = _PyAVReader(path, probe, max_frames, deadline)
    _check_duration(path, reader.duration_s, max_duration_s)
    _check_frames(path, int(reader.timestamps_s.size), max_frames)
    if probe.duration_s and reader.duration_s < 0.5 * probe.duration_s:
        message = f"video ends at {reader.duration_s:.1f} s of {probe.duration_s:.1f} s; truncated?"
        logger.warning("%s: %s", path, message)

    info = VideoInfo(
        duration_s=reader.duration_s,
        fps=reader.fps,
        width=width,
        height=height,
        codec=probe.codec,
        num_frames=int(reader.timestamps_s.size),
        rotation=probe.rotation,
        decoder=reader.name,
    )
    if first_frame_only:
        plans = [SegmentPlan(0, 0.0, reader.duration_s, np.zeros(1, dtype=np.int64))]
    else:
        plans = plan_segments(reader.timestamps_s, reader.duration_s, frames_per_segment, segment_seconds)
    return info, reader.iter_segments(plans, size, to_the_end=not first_frame_only)


@contextlib.contextmanager
def open_local_copy(
    uri: str,
    filesystem: Any = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    chunk_bytes: int = 8 * 2**20,
    tmp_dir: str | None = None,
    deadline: float | None = None,
) -> Iterator[str]:
    """Yield a local path for `uri`, streaming remote objects into a temporary file chunk by chunk.

    Local paths and file:// URIs are yielded as they are. Other URIs (s3://...) are copied through
    `filesystem` (an fsspec filesystem, e.g. `s3fs.S3FileSystem(endpoint_url=...)`; default
    `fsspec.filesystem(scheme)`) into a temp file that keeps the extension and is deleted on exit. Never holds
    the whole object in memory.

    Args:
        uri: Local path, file:// URI or any fsspec URI.
        filesystem: fsspec filesystem for remote URIs.
        max_bytes: Raise `TooLarge` before downloading a larger object (None disables).
        chunk_bytes: Copy buffer size.
        tmp_dir: Directory for the temporary copy (default: the system temp dir).
        deadline: From `deadline_after`; a copy still running past it stops with `Timeout`.
    """
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        local = unquote(parts.path) if parts.scheme == "file" else uri
        if not os.path.isfile(local):
            raise MissingMedia(f"{uri}: no such file")
        yield local
        return
    fs = filesystem if filesystem is not None else fsspec.filesystem(parts.scheme)
    try:
        nbytes = int(fs.size(uri))
    except Exception as err:
        mapped = _storage_error(uri, err)
        if mapped is None:
            raise
        raise mapped from err
    if max_bytes is not None and nbytes > max_bytes:
        raise TooLarge(f"{uri}: {nbytes} bytes exceed max_bytes={max_bytes}; raise max_bytes to process it")
    suffix = PurePosixPath(parts.path).suffix
    suffix = suffix if len(suffix) <= 16 else ""  # an object key's "extension" may be too long for a file name
    fd, local = tempfile.mkstemp(suffix=suffix, prefix="decode-", dir=tmp_dir)
    try:
        try:
            with os.fdopen(fd, "wb") as dst, fs.open(uri, "rb", block_size=chunk_bytes) as src:
                _copy_bounded(src, dst, chunk_bytes, max_bytes, uri, deadline)
        except DecodeError:
            raise
        except Exception as err:
            mapped = _storage_error(uri, err)
            if mapped is None:
                raise
            raise mapped from err
        yield local
    finally:
        os.unlink(local)


def _copy_bounded(
    src: Any, dst: Any, chunk_bytes: int, max_bytes: int | None, uri: str, deadline: float | None
) -> None:
    """Copy in chunks, stopping with `TooLarge` past ``max_bytes`` (an object that grew after its size was
    read) and with `Timeout` past the deadline."""
    copied = 0
    while chunk := src.read(chunk_bytes):
        check_deadline(uri, deadline)
        copied += len(chunk)
        if max_bytes is not None and copied > max_bytes:
            raise TooLarge(f"{uri}: more than max_bytes={max_bytes} bytes; raise max_bytes to process it")
        dst.write(chunk)


def _storage_error(uri: str, err: BaseException) -> Exception | None:
    """The error to raise for a failed read of ``uri``: retried (`TransientIOError`), an error row
    (`AccessDenied`, `MissingMedia`, `StorageRefused`), or None to re-raise ``err`` as it is."""
    kind = storage_failure(err)
    status, code = http_status(err)
    err_text = _short(err) if status is None else f"HTTP {status} {code or ''}".strip() + f", {_short(err)}"
    if kind == "transient":
        return TransientIOError(f"{uri}: {err_text}")
    if kind == "denied":
        return AccessDenied(f"{uri}: access denied ({err_text}); grant the run's credentials read access to it")
    if kind == "missing":
        return MissingMedia(f"{uri}: no such object")
    if kind == "refused":
        return StorageRefused(f"{uri}: the storage refused the request ({err_text})")
    return None


# ---------------------------------------------------------------------------------------------------------
# Checks and probing (PyAV, header plus one frame)


@dataclass(frozen=True)
class _Probe:
    stream_index: int
    codec: str
    width: int  # as stored, before rotation
    height: int
    rotation: int  # clockwise degrees, 0/90/180/270
    duration_s: float | None  # container header; may include longer audio


def _check_file(path: str, max_bytes: int | None) -> None:
    if not os.path.isfile(path):
        raise MissingMedia(f"{path}: no such file")
    nbytes = os.path.getsize(path)
    if nbytes == 0:
        raise CorruptMedia(f"{path}: empty file (0 bytes)")
    if max_bytes is not None and nbytes > max_bytes:
        raise TooLarge(f"{path}: {nbytes} bytes exceed max_bytes={max_bytes}; raise max_bytes to process it")


def _check_frames(path: str, frames: int, max_frames: int | None) -> None:
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


def _check_duration(path: str, duration_s: float | None, max_duration_s: float | None) -> None:
    if duration_s is not None and max_duration_s is not None and duration_s > max_duration_s:
        raise TooLarge(
            f"{path}: {duration_s:.1f} s exceeds max_duration_s={max_duration_s}; raise max_duration_s "
            "or split the file"
        )


def _probe(path: str) -> _Probe:
    try:
        container = av.open(path)
    except av.error.FFmpegError as err:
        if _looks_like_video_container(path):
            raise CorruptMedia(f"{path}: damaged or truncated container ({_short(err)})") from err
        raise UnsupportedMedia(f"{path}: not a recognised video container ({_short(err)})") from err
    with container:
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise NoVideoStream(f"{path}: no video stream (only {len(container.streams)} other streams)")
        best = container.streams.best("video")
        stream = best if best in streams else streams[0]  # same choice as decord (av_find_best_stream)
        ctx = stream.codec_context
        if ctx.codec is None:
            raise UnsupportedMedia(f"{path}: no decoder for video stream {stream.index}")
        codec = ctx.codec.canonical_name
        ccw = 0
        try:
            frame = next(container.decode(stream), None)
            ccw = int(frame.rotation) if frame is not None else 0
        except av.error.FFmpegError as err:  # let the real decoder decide whether the file is usable
            logger.warning("%s: could not decode a first frame to read its rotation (%s)", path, _short(err))
        duration_s = container.duration / av.time_base if container.duration else None
        return _Probe(stream.index, codec, ctx.width, ctx.height, (-round(ccw / 90) * 90) % 360, duration_s)


# Matroska/WebM, AVI (RIFF), Ogg, FLV, MPEG-PS, ASF; MP4/MOV and MPEG-TS are checked separately.
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x30\x26\xb2\x75")


def _looks_like_video_container(path: str) -> bool:
    """Whether the file starts like a video container (so a failure to open it means damage)."""
    with open(path, "rb") as f:
        head = f.read(189)
    mp4 = head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
    mpeg_ts = len(head) == 189 and head[0] == head[188] == 0x47  # sync byte every 188 bytes
    return mp4 or mpeg_ts or head.startswith(_CONTAINER_MAGIC)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1][:300] if text else ''}"


# ---------------------------------------------------------------------------------------------------------
# Readers


def _frame_times(
    path: str, starts: np.ndarray | None, end: float, fps: float, count: int
) -> tuple[np.ndarray, float, bool]:
    """Frame start times `[F]`, duration and whether they came from pts (else `i / fps`)."""
    if starts is not None and _plausible(starts, end):
        starts = np.maximum(starts, 0.0)
        # Some muxers store a 1-tick duration for the last sample: give it a typical frame interval.
        interval = float(np.median(np.diff(starts))) if starts.size > 1 else (1 / fps if fps > 0 else 0)
        return starts, max(end, float(starts[-1]) + interval), True
    if not fps > 0:
        raise CorruptMedia(f"{path}: neither frame timestamps nor a frame rate are usable")
    return np.arange(count) / fps, count / fps, False


def _plausible(starts: np.ndarray, end: float) -> bool:
    finite = starts.size > 0 and bool(np.all(np.isfinite(starts))) and math.isfinite(end)
    # decord 0.6.0 gives every frame of some Matroska files one huge start (~9.2e15 s, from AV_NOPTS_VALUE;
    # measured on 1 fps H.264 with >= 300 frames): frames that all start at once carry no timing.
    advancing = starts.size == 1 or starts[-1] > starts[0]
    return finite and advancing and starts[0] > -1e-3 and bool(np.all(np.diff(starts) >= 0))


def _segment(plan: SegmentPlan, frames: np.ndarray, timestamps_s: np.ndarray) -> Segment:
    return Segment(plan.index, plan.start_s, plan.end_s, frames, [float(t) for t in timestamps_s])


class _DecordReader:
    name = "decord"

    def __init__(self, path: str, expected_hw: tuple[int, int], deadline: float | None = None) -> None:
        self._path, self._deadline = path, deadline
        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        # Decode one frame now so that streams decord picks differently, rotations it does not apply, or its
        # failures on small quarter-turned frames ("DECORDArrayCopyFromTo: The size must exactly match")
        # send the file to PyAV instead of failing mid-way.
        shape = self._vr.get_batch([0]).shape  # [1, H, W, 3]
        if tuple(shape[1:3]) != expected_hw:
            raise RuntimeError(f"decord decodes {shape[1]}x{shape[2]} frames, expected {expected_hw}")
        count = len(self._vr)
        fps = float(self._vr.get_avg_fps())
        # [F, 2] start/stop seconds from packet pts, relative to the stream start (decord indexes at open).
        # AVI and other containers without pts give AV_NOPTS_VALUE garbage here: then use i / fps.
        ts = np.asarray(self._vr.get_frame_timestamp(np.arange(count)), dtype=np.float64)
        self.timestamps_s, self.duration_s, _ = _frame_times(path, ts[:, 0], float(ts[-1, 1]), fps, count)
        self.fps = fps if math.isfinite(fps) and fps > 0 else count / self.duration_s

    def iter_segments(self, plans: Sequence[SegmentPlan], size: int, to_the_end: bool = True) -> Iterator[Segment]:
        for plan in plans:  # seeks: nothing is decoded past the last planned frame whatever to_the_end says
            check_deadline(self._path, self._deadline)
            unique, inverse = np.unique(plan.frame_indices, return_inverse=True)
            try:
                batch = self._vr.get_batch(unique.tolist()).asnumpy()  # [U, H, W, 3], already rotated
            except _DECORD_ERRORS as err:
                raise CorruptMedia(f"{self._path}: decord failed in segment {plan.index} ({_short(err)})") from err
            small = np.stack([resize_and_crop_uint8(frame, size) for frame in batch])  # [U, S, S, 3]
            yield _segment(plan, small[inverse], self.timestamps_s[plan.frame_indices])


class _PyAVReader:
    """Forward-only PyAV decoding: one demux pass for timestamps, one sequential decode pass for frames."""

    name = "pyav"

    def __init__(
        self, path: str, probe: _Probe, max_frames: int | None = DEFAULT_MAX_FRAMES, deadline: float | None = None
    ) -> None:
        self._path, self._probe, self._deadline = path, probe, deadline
        # One demux pass for the timestamps: 16 bytes per packet in typed arrays (never a Python object per
        # packet), stopped by the frame cap and the deadline.
        pts, durations, count, without_pts = array("q"), array("q"), 0, 0
        try:
            with av.open(path) as container:
                stream = _video_stream(container, probe.stream_index)
                time_base = float(stream.time_base) if stream.time_base else 0.0
                rate = stream.average_rate or stream.guessed_rate
                fps = float(rate) if rate else 0.0
                for packet in container.demux(stream):
                    if packet.size <= 0:
                        continue
                    count += 1
                    _check_frames(path, count, max_frames)
                    if count % _DEADLINE_EVERY == 0:
                        check_deadline(path, deadline)
                    if packet.pts is None:
                        without_pts += 1
                    else:
                        pts.append(packet.pts)
                        durations.append(packet.duration or 0)
        except av.error.FFmpegError as err:
            raise CorruptMedia(f"{path}: PyAV cannot read its packets ({_short(err)})") from err
        if not count:
            raise CorruptMedia(f"{path}: the video stream has no packets")
        # Display order is pts order; `_keys` maps a decoded frame's pts back to its index.
        stamps = np.frombuffer(pts, dtype=np.int64) if pts else np.zeros(0, dtype=np.int64)
        keys = np.sort(stamps)
        starts, end = None, 0.0
        if time_base > 0 and not without_pts:
            last = int(np.argmax(stamps))  # the packet shown last
            starts = (keys - keys[0]) * time_base
            end = float(stamps[last] + durations[last] - keys[0]) * time_base
        self.timestamps_s, self.duration_s, by_pts = _frame_times(path, starts, end, fps, count)
        self._keys = keys if by_pts else None
        self.fps = fps if fps > 0 else count / self.duration_s

    def iter_segments(self, plans: Sequence[SegmentPlan], size: int, to_the_end: bool = True) -> Iterator[Segment]:
        # Decode forward once; by default on to the end after the last planned frame, so that damage after it
        # is reported (CorruptMedia), at the cost of at most one segment's frames. A planned frame is taken
        # when its pts comes out of the decoder; if the decoder dropped it, the frame on screen at that time
        # (the previous one) is used instead.
        remaining = iter(plans)
        plan = next(remaining, None)
        picked: dict[int, np.ndarray] = {}  # frame index -> [S, S, 3] for the current plan
        prev: av.VideoFrame | None = None
        try:
            with av.open(self._path) as container:
                stream = _video_stream(container, self._probe.stream_index)
                stream.codec_context.thread_count = 1  # one decode task = one CPU, as with decord
                frames = (f for packet in container.demux(stream) for f in stream.decode(packet))
                for count, frame in enumerate(frames):
                    check_deadline(self._path, self._deadline)
                    position = self._position(frame, count)
                    while plan is not None:
                        wanted = set(plan.frame_indices.tolist())
                        for index in sorted(wanted - picked.keys()):
                            if index <= position:
                                on_screen = frame if index == position or prev is None else prev
                                picked[index] = self._small(on_screen, size)
                        if len(wanted - picked.keys()) > 0:
                            break
                        yield self._emit(plan, picked)
                        last = int(plan.frame_indices[-1])
                        picked = {last: picked[last]}  # a later plan may reuse it; drop the rest
                        plan = next(remaining, None)
                    prev = frame
                    if plan is None and not to_the_end:
                        break
        except av.error.FFmpegError as err:
            raise CorruptMedia(f"{self._path}: PyAV decoding failed ({_short(err)})") from err
        if prev is None:
            raise CorruptMedia(f"{self._path}: PyAV decoded no frames")
        while plan is not None:  # planned frames past the last decoded one: it stays on screen
            for index in plan.frame_indices.tolist():
                picked.setdefault(index, self._small(prev, size))
            yield self._emit(plan, picked)
            plan = next(remaining, None)

    def _position(self, frame: av.VideoFrame, count: int) -> int:
        """Index of a decoded frame in display order (by pts when the stream has them)."""
        if self._keys is None or frame.pts is None:
            return min(count, self.timestamps_s.size - 1)
        return int(np.searchsorted(self._keys, frame.pts, side="left"))

    def _small(self, frame: av.VideoFrame, size: int) -> np.ndarray:
        turns = (-self._probe.rotation // 90) % 4  # np.rot90 turns counter-clockwise
        return resize_and_crop_uint8(np.rot90(frame.to_ndarray(format="rgb24"), turns), size)  # [S, S, 3]

    def _emit(self, plan: SegmentPlan, picked: dict[int, np.ndarray]) -> Segment:
        frames = np.stack([picked[i] for i in plan.frame_indices.tolist()])  # [N, S, S, 3]
        return _segment(plan, frames, self.timestamps_s[plan.frame_indices])


def _video_stream(container: av.container.InputContainer, index: int) -> av.VideoStream:
    return next(s for s in container.streams.video if s.index == index)
