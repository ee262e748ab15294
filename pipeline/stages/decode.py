"""Decode one video file into segments of model-resolution uint8 frames. Plain functions; no Ray.

`decode_segments` opens a video once and returns its `VideoInfo` plus a lazy iterator that decodes one
segment at a time (memory bounded by one segment). Frames leave already resized and centre-cropped to the
model resolution (`sparsevlm.resize.resize_and_crop_uint8`). decord decodes (`num_threads=1`: VP9 bug
dmlc/decord#246); PyAV takes what decord cannot open or decode at its first frame (AV1, VP9 without a
duration, small quarter-turned frames). decord 0.6.0 applies the display-matrix rotation itself (measured
on `moviepy_fire2.mp4`, -180°, and on ±90° clips); the PyAV path rotates with `np.rot90`. Mirroring display
matrices are handled by neither. Deterministic per-video failures raise `DecodeError` subclasses (the
pipeline writes error rows), including a storage's permanent answers (`AccessDenied`, `MissingMedia`,
`StorageRefused`); transient storage failures raise `pipeline.stages.storage.TransientIOError` (Ray retries the task).

Segments are fixed windows of `segment_seconds` (`plan_segments`), or with `shots` the clips between a video's
detected shot cuts (`detect_shots`: one pass over a few frames a second through the reader already open, then
the pure steps of `pipeline.stages.shots`); `plan_frames` picks each segment's frames either way.

The errors and data types live in `pipeline.stages.video`, the decoders in `pipeline.stages.readers`, the bounded local
copy of an object in `pipeline.stages.storage`; this module plans segments and runs the checks and the decoder.

`source_row` and `decode_rows` are the decode stage of the pipeline (pipeline/build.py runs them as Ray
tasks). Rows that cross the decode -> model boundary (one per segment, or one error row per failed video)::

    ledger_key, video_id, source_uri, source_size, source_etag, questions   from the source (source_row)
    duration_s, fps, width, height, codec                                     video metadata (None if it failed)
    segment_index, segment_start_s, segment_end_s, frame_timestamps_s        None/[] for whole-video errors
    frames (bytes), frames_shape ([T, S, S, 3])                               model-resolution uint8, raw
    last_segment (bool), error_class, error_message                           None error_class = decoded

Frames travel as raw bytes plus their shape rather than as a tensor column, so error rows (no frames) and
segment rows share one Arrow schema.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from pipeline.commit.ledger import ledger_key
from pipeline.config import DecodeSettings
from pipeline.error_lines import short_error
from pipeline.observability.metrics import record_decode
from pipeline.stages import readers
from pipeline.stages.schema import INFO_FIELDS, LAST_SEGMENT, LEDGER_KEY, SOURCE_MTIME, VIDEO_FIELDS
from pipeline.stages.shots import (
    ShotSegmenting,
    clip_bounds,
    content_sum,
    cut_times,
    hsv_frame,
    sample_indices,
    shrink,
)
from pipeline.stages.sources import VideoSource, check_scheme
from pipeline.stages.split import share_bounds
from pipeline.stages.storage import TransientIOError, open_local_copy, storage_failure
from pipeline.stages.video import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    CorruptMedia,
    DecodeError,
    MissingMedia,
    Segment,
    SegmentPlan,
    SourceChanged,
    TooLarge,
    UnsupportedMedia,
    VideoInfo,
    check_frames,
    deadline_after,
)

__all__ = [
    "DecoderName",
    "decode_rows",
    "decode_segments",
    "detect_shots",
    "plan_frames",
    "plan_segments",
    "source_row",
]

logger = logging.getLogger(__name__)

DecoderName = Literal["auto", "decord", "pyav"]


def plan_segments(
    timestamps_s: np.ndarray,
    duration_s: float,
    frames_per_segment: int,
    segment_seconds: float | None,
) -> list[SegmentPlan]:
    """Split a video into fixed-length segments and pick `frames_per_segment` frames in each.

    Segments are `[k * segment_seconds, (k + 1) * segment_seconds)`; a final remainder shorter than half a
    segment is merged into the previous one (a 10.4 s clip is one segment, not two). Frames are picked by
    :func:`plan_frames`.

    Args:
        timestamps_s: Frame start times in seconds, `[F]`, non-decreasing, starting near 0.
        duration_s: End of the last frame in seconds.
        frames_per_segment: N, frames sampled per segment.
        segment_seconds: Segment length; None means one segment for the whole video.

    Returns:
        The segment plans in time order.
    """
    if segment_seconds is None:
        bounds = [(0.0, duration_s)]
    else:
        count = max(1, math.ceil(duration_s / segment_seconds - 1e-9))
        bounds = [(k * segment_seconds, min((k + 1) * segment_seconds, duration_s)) for k in range(count)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < segment_seconds / 2:
            bounds[-2:] = [(bounds[-2][0], duration_s)]
    return plan_frames(timestamps_s, bounds, frames_per_segment)


def plan_frames(
    timestamps_s: np.ndarray, bounds: list[tuple[float, float]], frames_per_segment: int
) -> list[SegmentPlan]:
    """Pick `frames_per_segment` frames in each of the segments ``bounds`` (fixed or from shots).

    Within a segment the frames starting inside it are split into N equal runs and the centre of each run is
    taken (`np.linspace` centres); with fewer than N frames some repeat. A segment in which no frame starts (a
    gap in variable-frame-rate video) takes the frame on screen at its start. The last segment takes every frame
    from its start on.

    Args:
        timestamps_s: Frame start times in seconds, `[F]`, non-decreasing, starting near 0.
        bounds: ``(start_s, end_s)`` of each segment, in time order, tiling the video.
        frames_per_segment: N, frames sampled per segment.

    Returns:
        The segment plans in time order.
    """
    ts = np.asarray(timestamps_s, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"timestamps_s must be a non-empty 1-D array, got shape {ts.shape}")
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


def detect_shots(reader: readers.DecordReader | readers.PyAVReader, shots: ShotSegmenting) -> list[tuple[float, float]]:
    """The clips of ``shots`` for an open video: one pass over its sampled frames, then the pure steps of
    :mod:`pipeline.stages.shots` (scores -> cuts -> clips with bounded lengths).

    Returns:
        ``(start_s, end_s)`` of each clip, in time order, tiling ``[0, reader.duration_s]``.
    """
    times = reader.timestamps_s
    wanted = sample_indices(times, reader.duration_s, shots.sample_fps)  # [K]
    previous: np.ndarray | None = None
    sums = []
    for frame in reader.iter_frames(wanted):  # [H, W, 3] uint8, one at a time
        current = hsv_frame(shrink(frame))  # [h, w, 3]
        if previous is not None:
            sums.append(content_sum(previous, current))
        previous = current
    elements = previous.size if previous is not None else 1
    cuts = cut_times(times[wanted], np.asarray(sums, dtype=np.int64), elements, shots.threshold, shots.min_shot_seconds)
    return clip_bounds(cuts, reader.duration_s, shots.min_segment_seconds, shots.max_segment_seconds)


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
    share: tuple[int, int] = (0, 1),
    shots: ShotSegmenting | None = None,
) -> tuple[VideoInfo, Iterator[Segment]]:
    """Open a local video once and stream its segments.

    Checks, probing and indexing happen now, so `DecodeError`s about the file as a whole raise here; the
    returned iterator decodes lazily, one segment per step, and may still raise `CorruptMedia` for damage
    further into the file, or `Timeout` (segments already yielded stay valid). The deadline is checked
    between segments, demuxed packets and decoded frames: one blocking decoder call is not interrupted.

    Args:
        path: Local file (use `open_local_copy` for s3:// and other remote URIs).
        frames_per_segment: Frames sampled per segment (the model's T).
        segment_seconds: Segment length in seconds; None decodes the whole video as one segment. Ignored with
            ``shots``.
        size: Model resolution; frames come out `[N, size, size, 3]` uint8.
        max_duration_s: Reject longer videos with `TooLarge` (None disables).
        max_bytes: Reject larger files with `TooLarge` (None disables).
        max_pixels: Reject frames with more pixels (width * height) with `TooLarge` (None disables).
        max_frames: Reject videos with more frames with `TooLarge` (None disables).
        deadline: From `deadline_after`; past it decoding stops with `Timeout` (None: no limit).
        first_frame_only: One segment holding the first decodable frame only (a cheap check that the video
            decodes; PyAV stops at that frame instead of decoding up to the middle of the video).
        decoder: "auto" (decord, PyAV fallback), or force "decord" / "pyav".
        share: ``(part, parts)``: plan the whole video, decode only part ``part`` of ``parts`` of its segments
            (:func:`pipeline.stages.split.share_bounds`); ``info.segments`` is the whole plan's count.
        shots: segment by shots instead (:mod:`pipeline.stages.shots`): a pass over a few frames a second finds the
            cuts before the first segment is decoded (every part of a split video makes that pass).

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
    probe = readers.probe(path)
    if max_pixels is not None and probe.width * probe.height > max_pixels:
        raise TooLarge(f"{path}: {probe.width}x{probe.height} frames exceed max_pixels={max_pixels}; raise max_pixels")
    _check_duration(path, probe.duration_s, max_duration_s)

    quarter_turn = probe.rotation in (90, 270)
    height, width = (probe.width, probe.height) if quarter_turn else (probe.height, probe.width)
    reader: readers.DecordReader | readers.PyAVReader
    if decoder == "pyav":
        reader = readers.PyAVReader(path, probe, max_frames, deadline)
    else:
        try:
            reader = readers.DecordReader(path, (height, width), deadline)
        except readers.DECORD_ERRORS as err:
            if decoder == "decord":
                raise UnsupportedMedia(f"{path}: decord cannot open it ({short_error(err)})") from err
            logger.info("decord cannot open %s (%s); falling back to PyAV", path, short_error(err))
            reader = readers.PyAVReader(path, probe, max_frames, deadline)
    _check_duration(path, reader.duration_s, max_duration_s)
    check_frames(path, int(reader.timestamps_s.size), max_frames)
    if probe.duration_s and reader.duration_s < 0.5 * probe.duration_s:
        message = f"video ends at {reader.duration_s:.1f} s of {probe.duration_s:.1f} s; truncated?"
        logger.warning("%s: %s", path, message)

    if first_frame_only:
        plans = [SegmentPlan(0, 0.0, reader.duration_s, np.zeros(1, dtype=np.int64))]
    elif shots is not None:
        plans = plan_frames(reader.timestamps_s, detect_shots(reader, shots), frames_per_segment)
    else:
        plans = plan_segments(reader.timestamps_s, reader.duration_s, frames_per_segment, segment_seconds)
    info = VideoInfo(
        duration_s=reader.duration_s,
        fps=reader.fps,
        width=width,
        height=height,
        codec=probe.codec,
        num_frames=int(reader.timestamps_s.size),
        rotation=probe.rotation,
        decoder=reader.name,
        segments=len(plans),
    )
    first, stop = share_bounds(len(plans), *share)
    # Damage past the last planned frame is reported by the video's last part only (PyAV decodes on to it).
    to_the_end = not first_frame_only and share[0] == share[1] - 1
    return info, reader.iter_segments(plans[first:stop], size, to_the_end=to_the_end)


def _check_file(path: str, max_bytes: int | None) -> None:
    if not os.path.isfile(path):
        raise MissingMedia(f"{path}: no such file")
    nbytes = os.path.getsize(path)
    if nbytes == 0:
        raise CorruptMedia(f"{path}: empty file (0 bytes)")
    if max_bytes is not None and nbytes > max_bytes:
        raise TooLarge(f"{path}: {nbytes} bytes exceed max_bytes={max_bytes}; raise max_bytes to process it")


def _check_duration(path: str, duration_s: float | None, max_duration_s: float | None) -> None:
    if duration_s is not None and max_duration_s is not None and duration_s > max_duration_s:
        raise TooLarge(
            f"{path}: {duration_s:.1f} s exceeds max_duration_s={max_duration_s}; raise max_duration_s "
            "or split the file"
        )


def source_row(source: VideoSource, config_key: str, run_questions: Sequence[str]) -> dict[str, Any]:
    """The work item of one video: identity, the questions to ask (the run's ``run_questions``, then the
    manifest's) and its ledger key under the run's ``config_key`` (:meth:`PipelineConfig.config_key`)."""
    questions = list(dict.fromkeys([*run_questions, *source.questions]))
    return {
        LEDGER_KEY: ledger_key(config_key, source.video_id, questions),
        "video_id": source.video_id,
        "source_uri": source.uri,
        "source_size": source.size,
        "source_etag": source.etag,
        SOURCE_MTIME: source.mtime,  # with source_size, what pins a local file's version (never written)
        "questions": questions,
        "part": 0,  # the share of the video's segments this item decodes (pipeline/stages/split.py)
        "parts": 1,
    }


def decode_rows(
    row: dict[str, Any], settings: DecodeSettings, frame_size: int, *, first_frame_only: bool = False
) -> Generator[dict[str, Any], None, None]:
    """Decode one video into segment rows (the decode stage; see the module docstring for the fields).

    Deterministic failures (:class:`DecodeError`) and unexpected decoder exceptions become
    error rows: the whole video's when it cannot be opened, or one for the failing segment after the good
    ones. A storage's permanent answers (403, 404, other 4xx) are error rows too; a transient storage failure
    (5xx, throttling, a dropped connection) raises :class:`~pipeline.stages.storage.TransientIOError`, which the Ray
    decode task retries (``pipeline/build.py``). All storage I/O happens before the first row is yielded.

    Args:
        row: a :func:`source_row`.
        settings: segmenting, the guards and how to read the input (``PipelineConfig.decoding``).
        frame_size: the model's frame side in pixels.
        first_frame_only: one row with the first decodable frame (the driver's preflight check).

    A row with ``parts > 1`` decodes only its share of the video's segments (``pipeline/stages/split.py``, which also
    says how a split video's errors are reported); only the last part flags the video's final segment.

    Yields:
        Segment rows in time order; the video's final one has ``last_segment=True``.
    """
    base = {LEDGER_KEY: row[LEDGER_KEY], **{k: row[k] for k in VIDEO_FIELDS}, "questions": list(row["questions"])}
    uri = row["source_uri"]
    part, parts = int(row["part"]), int(row["parts"])
    final = part == parts - 1
    video: dict[str, Any] = dict.fromkeys(INFO_FIELDS)
    previous: Segment | None = None
    first = stop = 0  # this part's segment indices, once the video is open
    sent = False
    local = uri
    deadline = deadline_after(settings.max_decode_seconds)  # the download counts too
    started = time.perf_counter()
    try:
        fs = settings.storage.fsspec(uri)
        copy = open_local_copy(uri, fs, max_bytes=settings.max_video_bytes, deadline=deadline, etag=row["source_etag"])
        with copy as path:
            local = str(path)
            pinned = check_scheme(uri) != "s3"  # an object's copy is pinned by its ETag; a file is re-checked
            if pinned:
                _check_unchanged(uri, local, row)
            info, segments = decode_segments(
                path,
                frames_per_segment=settings.frames_per_segment,
                segment_seconds=settings.segment_seconds,
                size=frame_size,
                max_duration_s=settings.max_duration_s,
                max_bytes=settings.max_video_bytes,
                max_frames=settings.max_frames,
                deadline=deadline,
                first_frame_only=first_frame_only,
                share=(part, parts),
                shots=settings.shots,
            )
            if pinned:  # the header just read is the listed version's
                _check_unchanged(uri, local, row)
            video = _video_fields(info)
            first, stop = share_bounds(info.segments, part, parts)
            for segment in segments:  # one segment of look-ahead, to flag the last one
                if pinned:  # all read so far is the listed version's: a write since would change size or mtime
                    _check_unchanged(uri, local, row)
                if previous is not None:
                    sent = True
                    yield _segment_row(base, video, previous, last=False)
                previous = segment
    except Exception as err:  # bad input never fails the job; the row records it
        if not sent and isinstance(err, TransientIOError):  # Ray retries the task; it had sent no row yet
            raise
        if not sent and isinstance(err, OSError) and storage_failure(err) == "transient":
            raise TransientIOError(f"{uri}: {err}") from err
        if not isinstance(err, DecodeError):
            logger.exception("unexpected %s decoding %s; recorded as an error row", type(err).__name__, uri)
        if video["duration_s"] is None and not final:
            return  # the video did not open: its last part reports that, once
        if previous is not None:
            yield _segment_row(base, video, previous, last=False)
        index = None if video["duration_s"] is None else (first if previous is None else previous.index + 1)
        message = str(err).replace(local, uri)  # name the object, not its temporary local copy
        error = {"error_class": type(err).__name__, "error_message": message}
        # The last part ends the video here; an earlier part gives a row to each segment it did not decode.
        indices = [index] if final else list(range(index if index is not None else first, stop))
        for k, at in enumerate(indices):
            yield {**base, **video, **_no_segment(at), LAST_SEGMENT: final and k == len(indices) - 1, **error}
    else:
        if previous is not None:
            yield _segment_row(base, video, previous, last=final)
    if not first_frame_only:  # per decode task: each part of a split video reads the whole file
        record_decode(time.perf_counter() - started, row["source_size"])


def _check_unchanged(uri: str, path: str, row: dict[str, Any]) -> None:
    """Raise :class:`SourceChanged` unless the local file at ``path`` still has the size and modification time
    the listing saw (the version its ``video_id`` names); :class:`MissingMedia` if it is gone."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise MissingMedia(f"{uri}: no such file (deleted after it was listed)") from None
    size, mtime = row["source_size"], row.get(SOURCE_MTIME)
    if (size is not None and stat.st_size != size) or (mtime is not None and f"{stat.st_mtime:.6f}" != f"{mtime:.6f}"):
        raise SourceChanged(
            f"{uri}: changed after it was listed (size {size} -> {stat.st_size} bytes, mtime {mtime} -> "
            f"{stat.st_mtime}); its rows would name the listed version, so none are kept: a rerun processes the "
            "new version"
        )


def _video_fields(info: VideoInfo) -> dict[str, Any]:
    return {
        "duration_s": info.duration_s,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
    }


def _segment_row(base: dict[str, Any], video: dict[str, Any], segment: Segment, last: bool) -> dict[str, Any]:
    return {
        **base,
        **video,
        "segment_index": segment.index,
        "segment_start_s": segment.start_s,
        "segment_end_s": segment.end_s,
        "frame_timestamps_s": list(segment.timestamps_s),
        "frames": segment.frames.tobytes(),  # uint8 [T, S, S, 3], C order
        "frames_shape": list(segment.frames.shape),
        LAST_SEGMENT: last,
        "error_class": None,
        "error_message": None,
    }


def _no_segment(index: int | None) -> dict[str, Any]:
    return {
        "segment_index": index,
        "segment_start_s": None,
        "segment_end_s": None,
        "frame_timestamps_s": [],
        "frames": b"",
        "frames_shape": [0],
        LAST_SEGMENT: True,
    }
