"""The two decoders behind `pipeline.stages.decode.decode_segments`, and the PyAV probe that picks the stream.

decord (`num_threads=1`: VP9 bug dmlc/decord#246) seeks to the planned frames; PyAV decodes forward once and
takes what decord cannot open or decode at its first frame (AV1, VP9 without a duration, small quarter-turned
frames). decord 0.6.0 applies the display-matrix rotation itself; the PyAV path rotates with `np.rot90`.
Both also read a list of frames forward (`iter_frames`, the shot detection's samples).
Both check the wall-clock deadline between steps; PyAV's one demux pass keeps 16 bytes per packet in typed
arrays and stops at the frame cap.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import decord
import numpy as np

from pipeline.error_lines import short_error
from pipeline.stages.video import (
    DEFAULT_MAX_FRAMES,
    CorruptMedia,
    NoVideoStream,
    Segment,
    SegmentPlan,
    UnsupportedMedia,
    check_deadline,
    check_frames,
)
from sparsevlm.resize import resize_and_crop_uint8

logger = logging.getLogger(__name__)

_DEADLINE_EVERY = 256  # demuxed packets between two deadline checks
_FRAMES_PER_READ = 4  # full-size frames per decord read when scanning for shots: 4 4K frames are ~100 MB
# decord raises RuntimeError when it cannot open a file, DECORDError (not a RuntimeError) on failed checks,
# and AssertionError for a zero frame count.
DECORD_ERRORS = (RuntimeError, decord.DECORDError, AssertionError)


@dataclass(frozen=True)
class Probe:
    stream_index: int
    codec: str
    width: int  # as stored, before rotation
    height: int
    rotation: int  # clockwise degrees, 0/90/180/270
    duration_s: float | None  # container header; may include longer audio


def probe(path: str) -> Probe:
    try:
        container = av.open(path)
    except av.error.FFmpegError as err:
        if _looks_like_video_container(path):
            raise CorruptMedia(f"{path}: damaged or truncated container ({short_error(err)})") from err
        raise UnsupportedMedia(f"{path}: not a recognised video container ({short_error(err)})") from err
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
            logger.warning("%s: could not decode a first frame to read its rotation (%s)", path, short_error(err))
        duration_s = container.duration / av.time_base if container.duration else None
        return Probe(stream.index, codec, ctx.width, ctx.height, (-round(ccw / 90) * 90) % 360, duration_s)


# Matroska/WebM, AVI (RIFF), Ogg, FLV, MPEG-PS, ASF; MP4/MOV and MPEG-TS are checked separately.
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x30\x26\xb2\x75")


def _looks_like_video_container(path: str) -> bool:
    """Whether the file starts like a video container (so a failure to open it means damage)."""
    with open(path, "rb") as f:
        head = f.read(189)
    mp4 = head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
    mpeg_ts = len(head) == 189 and head[0] == head[188] == 0x47  # sync byte every 188 bytes
    return mp4 or mpeg_ts or head.startswith(_CONTAINER_MAGIC)


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


class DecordReader:
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
            except DECORD_ERRORS as err:
                raise CorruptMedia(f"{self._path}: decord failed in segment {plan.index} ({short_error(err)})") from err
            small = np.stack([resize_and_crop_uint8(frame, size) for frame in batch])  # [U, S, S, 3]
            yield _segment(plan, small[inverse], self.timestamps_s[plan.frame_indices])

    def iter_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """The frames ``indices`` (increasing) as decoded, `[H, W, 3]` uint8 RGB one at a time, read forward in
        small batches (decord skips from one to the next without seeking back)."""
        for at in range(0, len(indices), _FRAMES_PER_READ):
            check_deadline(self._path, self._deadline)
            chunk = indices[at : at + _FRAMES_PER_READ].tolist()
            try:
                batch = self._vr.get_batch(chunk).asnumpy()  # [C, H, W, 3]
            except DECORD_ERRORS as err:
                raise CorruptMedia(f"{self._path}: decord failed at frame {chunk[0]} ({short_error(err)})") from err
            yield from batch


class PyAVReader:
    """Forward-only PyAV decoding: one demux pass for timestamps, one sequential decode pass for frames."""

    name = "pyav"

    def __init__(
        self, path: str, probe: Probe, max_frames: int | None = DEFAULT_MAX_FRAMES, deadline: float | None = None
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
                    check_frames(path, count, max_frames)
                    if count % _DEADLINE_EVERY == 0:
                        check_deadline(path, deadline)
                    if packet.pts is None:
                        without_pts += 1
                    else:
                        pts.append(packet.pts)
                        durations.append(packet.duration or 0)
        except av.error.FFmpegError as err:
            raise CorruptMedia(f"{path}: PyAV cannot read its packets ({short_error(err)})") from err
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
                if plan is not None and plan.frame_indices[0] > 0 and self._keys is not None:
                    # A later part of a split video (pipeline/stages/split.py): start at the keyframe before its first
                    # frame instead of decoding the parts before it; frames are placed by their pts.
                    container.seek(int(self._keys[plan.frame_indices[0]]), stream=stream, backward=True)
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
            raise CorruptMedia(f"{self._path}: PyAV decoding failed ({short_error(err)})") from err
        if prev is None:
            raise CorruptMedia(f"{self._path}: PyAV decoded no frames")
        while plan is not None:  # planned frames past the last decoded one: it stays on screen
            for index in plan.frame_indices.tolist():
                picked.setdefault(index, self._small(prev, size))
            yield self._emit(plan, picked)
            plan = next(remaining, None)

    def iter_frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """The frames ``indices`` (increasing) as stored (not rotated), `[H, W, 3]` uint8 RGB one at a time, from
        one forward decode that stops after the last; a frame the decoder dropped is the one on screen then."""
        wanted = iter(indices.tolist())
        index = next(wanted, None)
        prev: av.VideoFrame | None = None
        try:
            with av.open(self._path) as container:
                stream = _video_stream(container, self._probe.stream_index)
                stream.codec_context.thread_count = 1
                frames = (f for packet in container.demux(stream) for f in stream.decode(packet))
                for count, frame in enumerate(frames):
                    check_deadline(self._path, self._deadline)
                    position = self._position(frame, count)
                    while index is not None and index <= position:
                        on_screen = frame if index == position or prev is None else prev
                        yield on_screen.to_ndarray(format="rgb24")
                        index = next(wanted, None)
                    if index is None:
                        return
                    prev = frame
        except av.error.FFmpegError as err:
            raise CorruptMedia(f"{self._path}: PyAV decoding failed ({short_error(err)})") from err
        if prev is None:
            raise CorruptMedia(f"{self._path}: PyAV decoded no frames")
        while index is not None:  # past the last decoded frame: it stays on screen
            yield prev.to_ndarray(format="rgb24")
            index = next(wanted, None)

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
