"""Gather what the run report page shows and write ``_runs/<run_id>.html`` (the page: pipeline/observability/report.py).

Reads are bounded, never a scan of the output: the run's ledger entries give the videos by status, their
rows and commit times; the part files read are those of a few sampled videos (``SAMPLE_VIDEOS``), one
video per error class, and the videos with some error rows (``partial``, at most ``PARTIAL_READS``). The
sampled videos' first segments (of videos up to ``PICTURE_MAX_BYTES``) are decoded again through the
pipeline's own decode path (:func:`~pipeline.stages.decode.decode_segments`: the frames the model saw) to draw
which visual tokens the model kept, with the picture of ``python -m jobs.benchmark show``
(:func:`~sparsevlm.bench.show.render_keep_grid`).

:func:`write_report` never raises: a page that cannot be made is logged and the run goes on.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.config import PipelineConfig
from pipeline.observability.report import ErrorExample, ReportData, SampledVideo, render_report
from pipeline.stages.decode import decode_segments
from pipeline.stages.storage import open_local_copy
from pipeline.stages.video import deadline_after

logger = logging.getLogger(__name__)

__all__ = ["KEPT_COLUMN", "gather", "pick_samples", "report_path", "sample_picture", "write_report"]

SAMPLE_VIDEOS = 4  # videos shown with frames, caption and answers
PARTIAL_READS = 200  # partial videos whose rows are counted by status; past it the page says so
PICTURE_MAX_BYTES = 2**30  # larger videos get no picture: the driver would download them again
PICTURE_MAX_SECONDS = 60.0  # per picture, its download included (or the run's max_decode_seconds if smaller)
MAX_PICTURE_WIDTH = 1800  # pixels: 8 frames at 224 px fit; the page shows them at its width, full size on a click
KEPT_COLUMN = "kept_visual_tokens"  # the original visual-token indices kept at the first pruning layer


def report_path(run_id: str) -> str:
    """Where a run's page lives, relative to the output prefix."""
    return f"_runs/{run_id}.html"


def write_report(
    ledger: Ledger,
    config: PipelineConfig,
    record: Mapping[str, Any],
    entries: Sequence[LedgerEntry],
    frame_size: int | None,
) -> str | None:
    """Write the run's page beside its record; return its path under the output, or None if it failed.

    Args:
        ledger: the output's ledger.
        config: the run's config (decoding settings for the sample pictures).
        record: the run record as written to ``_runs/<run_id>.json``.
        entries: what the run committed.
        frame_size: the model's frame side; None draws no pictures (e.g. the model never loaded).
    """
    relative = report_path(str(record["run_id"]))
    try:
        page = render_report(gather(ledger, config, record, entries, frame_size))
        ledger.files.write_bytes(page.encode("utf-8"), ledger.files.path(relative))
    except Exception as err:  # the page is a view of the run, never a reason for it to fail
        logger.warning(
            "run %s: could not write its report page %s (%s: %s)",
            record.get("run_id"),
            relative,
            type(err).__name__,
            err,
        )
        return None
    logger.info("run %s: report page %s", record.get("run_id"), ledger.files.path(relative))
    return relative


def gather(
    ledger: Ledger,
    config: PipelineConfig,
    record: Mapping[str, Any],
    entries: Sequence[LedgerEntry],
    frame_size: int | None,
) -> ReportData:
    """Read what the page shows (see the module docstring for what is read)."""
    entries = sorted(entries, key=lambda e: e.key)
    notes: list[str] = []
    rows = {"ok": 0, "error": 0}
    partial = [e for e in entries if e.status == "partial"]
    for entry in entries:
        if entry.status != "partial":
            rows[entry.status] += entry.rows
    for entry in partial[:PARTIAL_READS]:
        status = _read(ledger, entry, ["status"]).column("status")
        errors = pc.sum(pc.equal(status, "error")).as_py() or 0
        rows["error"] += errors
        rows["ok"] += len(status) - errors
    if len(partial) > PARTIAL_READS:
        notes.append(f"rows by status count {PARTIAL_READS} of the {len(partial)} partial videos' rows")
    samples = []
    for entry in pick_samples(entries):
        try:
            samples.append(_sample(ledger, config, entry, frame_size))
        except Exception as err:
            notes.append(f"{entry.source_uri}: no sample ({type(err).__name__}: {err})")
    return ReportData(
        record=record,
        entries=entries,
        rows_by_status=rows,
        errors=_error_examples(ledger, record, entries),
        samples=samples,
        notes=notes,
    )


def pick_samples(entries: Sequence[LedgerEntry], count: int = SAMPLE_VIDEOS) -> list[LedgerEntry]:
    """Up to ``count`` videos with rows to show, taken in turn from each kind of file (its extension), so a run
    that mixes kinds of video (the demo's synthetic MP4s and its real MKV clip) shows every kind."""
    kinds: dict[str, list[LedgerEntry]] = {}
    for entry in sorted((e for e in entries if e.status != "error"), key=lambda e: e.key):
        kinds.setdefault(posixpath.splitext(entry.source_uri)[1].lower(), []).append(entry)
    picked: list[LedgerEntry] = []
    for turn in range(count):
        picked += [videos[turn] for videos in kinds.values() if turn < len(videos)]
    return picked[:count]


def _read(ledger: Ledger, entry: LedgerEntry, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(ledger.files.path(entry.file), filesystem=ledger.fs, columns=columns)


def _error_examples(ledger: Ledger, record: Mapping[str, Any], entries: Sequence[LedgerEntry]) -> list[ErrorExample]:
    counts: dict[str, int] = dict(record.get("error_classes") or {})
    for entry in entries:  # a failed run's record may predate some of its entries
        for name in entry.error_classes:
            counts.setdefault(name, 1)
    examples = []
    for name, videos in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        having = next((e for e in entries if name in e.error_classes), None)
        if having is None:
            examples.append(ErrorExample(name, videos, "(not among this run's commits)", ""))
            continue
        table = _read(ledger, having, ["error_class", "error_message"])
        row = table.filter(pc.equal(table["error_class"], name)).slice(0, 1).to_pylist()
        message = row[0]["error_message"] if row else ""
        examples.append(ErrorExample(name, videos, having.source_uri, message or ""))
    return examples


def _sample(ledger: Ledger, config: PipelineConfig, entry: LedgerEntry, frame_size: int | None) -> SampledVideo:
    table = _read(ledger, entry)
    first = pc.min(table["segment_index"]).as_py()
    rows = table.filter(pc.equal(table["segment_index"], first)).to_pylist() if first is not None else []
    if not rows:
        return SampledVideo(entry.video_id, entry.source_uri, "no segment rows", None)
    caption = next((r for r in rows if r["task"] == "caption"), None)
    answers = tuple(
        (r["question"] or "", r["answer"] if r["status"] == "ok" else f"[{r['error_class']}] {r['error_message']}")
        for r in rows
        if r["task"] == "qa"
    )
    segment = f"segment {first}, {rows[0]['segment_start_s']:.1f}-{rows[0]['segment_end_s']:.1f} s"
    shown = (
        caption
        if caption is not None and caption["status"] == "ok"
        else next((r for r in rows if r["status"] == "ok"), None)
    )
    kept_indices = shown.get(KEPT_COLUMN) if shown is not None else None
    kept = None
    if shown is not None and kept_indices is not None:
        what = "caption" if shown is caption else "first question"
        kept = (
            f"{len(kept_indices)} of {shown['visual_tokens_in']} visual tokens kept at the first pruning layer "
            f"({what}; {shown['equivalent_tokens']:.1f} equivalent tokens over all layers)"
        )
    elif shown is not None:
        kept = f"{shown['equivalent_tokens']:.1f} of {shown['visual_tokens_in']} visual tokens (equivalent)"
    picture, note = None, None
    if frame_size is None:
        note = "the model's frame size is unknown (the model did not load)"
    elif shown is None:
        note = "no row of this segment succeeded"
    elif (shown["source_size"] or 0) > PICTURE_MAX_BYTES:
        note = f"the video has {shown['source_size']} bytes; pictures are drawn for videos up to {PICTURE_MAX_BYTES}"
    else:
        try:
            picture = sample_picture(config, shown, frame_size, kept_indices)
        except Exception as err:  # a video changed or gone since, a storage error: the page says why
            note = f"{type(err).__name__}: {err}"
    caption_text = None if caption is None else caption["answer"] if caption["status"] == "ok" else None
    return SampledVideo(entry.video_id, entry.source_uri, segment, caption_text, answers, kept, picture, note)


def sample_picture(
    config: PipelineConfig, row: Mapping[str, Any], frame_size: int, kept_indices: Sequence[int] | None
) -> bytes:
    """JPEG of a row's segment frames (decoded again as the pipeline did) with its kept visual tokens bright.

    Args:
        config: the run's config (segmenting and decode guards).
        row: a result row of the segment (``source_uri``, ``segment_index``, ``visual_tokens_in``).
        frame_size: the model's frame side.
        kept_indices: original visual-token indices kept (Video-LLaVA layout: per frame CLS, then patches);
            None shows every patch as kept.
    """
    # Imported here, not with the module: it draws through sparsevlm.pooling, which imports torch, and this
    # module is imported with pipeline.build by every commit task, where the page is never drawn.
    from sparsevlm.bench.show import ShowRow, render_keep_grid, token_mask

    seconds = PICTURE_MAX_SECONDS if config.max_decode_seconds is None else config.max_decode_seconds
    deadline = deadline_after(min(seconds, PICTURE_MAX_SECONDS))
    fs = config.storage.fsspec(row["source_uri"])
    with open_local_copy(row["source_uri"], fs, max_bytes=config.max_video_bytes, deadline=deadline) as path:
        _, segments = decode_segments(
            path,
            frames_per_segment=config.frames_per_segment,
            segment_seconds=config.segment_seconds,
            shots=config.shots,
            size=frame_size,
            max_duration_s=config.max_duration_s,
            max_bytes=config.max_video_bytes,
            max_frames=config.max_frames,
            deadline=deadline,
        )
        segment = next(s for s in segments if s.index == row["segment_index"])
    frames = np.asarray(segment.frames)  # [T, S, S, 3] uint8
    per_frame = int(row["visual_tokens_in"]) // len(frames)
    grid = math.isqrt(per_frame - 1)
    if grid * grid + 1 != per_frame:
        raise ValueError(f"{row['visual_tokens_in']} visual tokens over {len(frames)} frames is not CLS + a grid")
    if kept_indices is None:
        kept = np.ones((len(frames), grid, grid), dtype=bool)
        label = "frames (kept tokens not recorded)"
    else:
        kept = token_mask(list(kept_indices), len(frames), grid)
        label = f"kept {int(kept.sum())} of {kept.size} patches"
    scale = max(1, 192 // frame_size)
    image = render_keep_grid(frames, [ShowRow(label, kept, np.zeros_like(kept))], scale=scale)
    if image.width > MAX_PICTURE_WIDTH:
        image = image.resize((MAX_PICTURE_WIDTH, round(image.height * MAX_PICTURE_WIDTH / image.width)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()
