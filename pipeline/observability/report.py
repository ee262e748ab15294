"""The run report page: one self-contained HTML file per run, ``_runs/<run_id>.html`` beside its JSON record.

Pure functions from what a run left (its record, its ledger entries, a few of its rows and pictures) to a string of
HTML; pipeline/observability/report_data.py gathers those and writes the file. The page needs no network and runs no
script: the CSS is inline, the charts are inline SVG (pipeline/observability/report_charts.py), the pictures are
``data:`` URIs. Every value that came from a run (file names, captions, error messages) is escaped.

Sections: what produced the rows (model, its revision, preset, questions; a note when the model is a bundled toy model),
the key figures (a failed run's error first) and the record's other fields folded away, throughput over time (videos
committed, and segments per second, from the commit times in the ledger), videos and rows by status, the shadow dense
sample's agreement with its interval per task and its cost (when the run sampled; pipeline/observability/quality.py),
error classes with an example each, and a sample of videos with their frames, which visual tokens the model kept (the
picture of ``python -m jobs.benchmark show``), the caption and the answers."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.commit.ledger_index import STATUSES, LedgerEntry
from pipeline.observability.quality import format_cost
from pipeline.observability.report_charts import COLOURS, bar_chart, step_chart
from sparsevlm.tiny import BUNDLED_NOTE

__all__ = ["ErrorExample", "ReportData", "SampledVideo", "render_report", "throughput"]

THROUGHPUT_SLICES = 20  # bars in the segments-per-second chart


@dataclass(frozen=True)
class SampledVideo:
    """One sampled video as the page shows it.

    Attributes:
        video_id: the row's ``video_id``.
        source_uri: the row's ``source_uri``.
        segment: which segment the rows are about, e.g. ``"segment 0, 0.0-5.0 s"``.
        caption: the caption row's answer (None: no caption row, or it failed).
        answers: (question, answer) of the segment's question rows; an error row shows its error.
        kept: what the model kept, e.g. ``"33 of 130 visual tokens at layer 2"``; None when unknown.
        picture_jpeg: JPEG bytes of the segment's frames with the kept tokens marked, or None.
        picture_note: why there is no picture (None when there is one).
    """

    video_id: str
    source_uri: str
    segment: str
    caption: str | None
    answers: tuple[tuple[str, str], ...] = ()
    kept: str | None = None
    picture_jpeg: bytes | None = None
    picture_note: str | None = None


@dataclass(frozen=True)
class ErrorExample:
    """One error class of the run: how many videos had it, and one of its rows."""

    error_class: str
    videos: int
    source_uri: str
    message: str


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows.

    Attributes:
        record: the run record as written to ``_runs/<run_id>.json`` (RunSummary fields, maybe more).
        entries: the ledger entries this run committed (one per video).
        rows_by_status: result rows per row status (``ok``, ``error``).
        errors: one example per error class.
        samples: the sampled videos.
        notes: things the page could not show, and why (e.g. a sample video that no longer decodes).
    """

    record: Mapping[str, Any]
    entries: Sequence[LedgerEntry]
    rows_by_status: Mapping[str, int]
    errors: Sequence[ErrorExample] = ()
    samples: Sequence[SampledVideo] = ()
    notes: Sequence[str] = field(default_factory=tuple)


def render_report(data: ReportData) -> str:
    """The whole page as one HTML document (UTF-8, no external resources, no scripts)."""
    record = data.record
    run_id = str(record.get("run_id", "?"))
    status = str(record.get("status", "ok"))
    body = [
        f'<h1>Run <code>{_e(run_id)}</code> <span class="badge {_e(status)}" id="run-status">{_e(status)}</span></h1>',
        _identity(record),
        f'<p class="muted">Output <code>{_e(record.get("output_uri", "?"))}</code>, config key '
        f"<code>{_e(record.get('config_key', '?'))}</code>.</p>",
    ]
    if status != "ok":
        body.append(
            f'<div class="failure" id="run-error"><b>{_e(record.get("error_class") or "failed")}</b>: '
            f"{_e(record.get('error_message') or '')}<br>The counts below are what the run had committed when "
            "it stopped; a rerun processes the rest.</div>"
        )
    body += [
        _summary(record, data.entries),
        _throughput(data),
        _statuses(data),
        _quality(record),
        _errors(data.errors),
        _samples(data.samples),
    ]
    if data.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in data.notes) + "</ul>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run {_e(run_id)}: {_e(status)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def throughput(
    entries: Sequence[LedgerEntry], started_at: str | None
) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    """Videos committed over time and segments per second per slice of the run, from the commit times.

    Args:
        entries: the run's ledger entries.
        started_at: the run's start (ISO 8601); None: the first commit.

    Returns:
        (cumulative (seconds, videos) points, (start s, end s, segments/s) bars).
    """
    if not entries:
        return [], []
    times = sorted((_seconds(e.committed_at), e.segments) for e in entries)
    origin = _seconds(started_at) if started_at else times[0][0]
    times = [(max(t - origin, 0.0), s) for t, s in times]
    points = [(t, float(n)) for n, (t, _) in enumerate(times, start=1)]
    end = max(times[-1][0], 1e-3)
    width = end / THROUGHPUT_SLICES
    counts = [0] * THROUGHPUT_SLICES
    for t, segments in times:
        counts[min(int(t / width), THROUGHPUT_SLICES - 1)] += segments
    bars = [(i * width, (i + 1) * width, counts[i] / width) for i in range(THROUGHPUT_SLICES)]
    return points, bars


# -- sections -----------------------------------------------------------------------------------------------

# Record fields the page shows elsewhere (the header, the cards, the error banner): not repeated in the record.
_SHOWN_FIELDS = frozenset(
    {"run_id", "status", "model", "model_revision", "preset", "questions", "output_uri", "config_key", "seen"}
    | {"skipped", "processed", "failed", "partial", "rows", "wall_s", "error_class", "error_message"}
    | {"quality", "shadow"}
)


def _identity(record: Mapping[str, Any]) -> str:
    """What produced the rows: model, revision, preset and the prompts asked of every segment."""
    model = str(record.get("model") or "?")
    questions = "".join(f"<li>{_e(q)}</li>" for q in record.get("questions") or [])
    toy = (
        f'<p class="toy" id="run-toy"><b>{_e(model)}</b> is {_e(BUNDLED_NOTE)}.</p>'
        if model.startswith("bundled:")
        else ""
    )
    return (
        '<dl class="identity">'
        f'<dt>model</dt><dd id="run-model"><code>{_e(model)}</code></dd>'
        f'<dt>revision</dt><dd id="run-revision"><code>{_e(record.get("model_revision") or "unknown")}</code></dd>'
        f'<dt>preset</dt><dd id="run-preset"><code>{_e(record.get("preset") or "?")}</code></dd>'
        f'<dt>prompts</dt><dd id="run-questions"><ol>{questions}</ol></dd></dl>{toy}'
    )


def _summary(record: Mapping[str, Any], entries: Sequence[LedgerEntry]) -> str:
    wall = float(record.get("wall_s") or 0.0)
    segments = sum(e.segments for e in entries)
    figures = [
        ("processed", f"{record.get('processed', 0)}", f"of {record.get('seen', 0)} videos seen"),
        ("skipped", f"{record.get('skipped', 0)}", "already done"),
        ("failed", f"{record.get('failed', 0)}", f"all rows errors; {record.get('partial', 0)} partial"),
        ("rows", f"{record.get('rows', 0)}", "result rows written"),
        ("wall", f"{wall:.1f} s", "wall time"),
        ("rate", f"{segments / wall:.2f}" if wall > 0 else "-", "segments per second"),
    ]
    made = record.get("summaries") or {}
    if made:  # --summarize (pipeline/stages/summary.py)
        failed = f", {made.get('failed', 0)} with an error row" if made.get("failed") else ""
        what = f"of {made.get('videos', 0)} videos summarized in {float(made.get('wall_s') or 0):.1f} s{failed}"
        figures.append(("summaries", f"{made.get('committed', 0)}", what))
    cards = "".join(
        f'<div class="figure"><div class="big" id="figure-{name}">{_e(value)}</div><div class="muted">{_e(what)}'
        "</div></div>"
        for name, value, what in figures
    )
    fields = "".join(
        f'<div class="name">{_e(name)}</div><div class="value" id="summary-{_e(name)}">{_e(_value(value))}</div>'
        for name, value in record.items()
        if name not in _SHOWN_FIELDS
    )
    return (
        f'<div class="figures">{cards}</div><details class="more"><summary>The rest of the run record '
        f'(<code>_runs/{_e(record.get("run_id", "?"))}.json</code>)</summary><div class="record">{fields}</div>'
        "</details>"
    )


def _throughput(data: ReportData) -> str:
    points, bars = throughput(data.entries, data.record.get("started_at"))
    return (
        "<h2>Throughput over time</h2>"
        '<p class="muted">From the ledger: each video counts when its rows were committed.</p>'
        '<div class="charts">'
        + step_chart(points, "seconds since the run started", "videos committed", "Videos committed over time")
        + bar_chart(bars, "seconds since the run started", "segments per second", "Segments per second")
        + "</div>"
    )


def _statuses(data: ReportData) -> str:
    videos = {s: 0 for s in STATUSES}
    for entry in data.entries:
        videos[entry.status] = videos.get(entry.status, 0) + 1
    rows = {"ok": data.rows_by_status.get("ok", 0), "error": data.rows_by_status.get("error", 0)}
    return (
        "<h2>Rows by status</h2>"
        + _count_table("videos", videos, "videos by their rows: ok (no error), partial (some), error (all)")
        + _count_table("rows", rows, "result rows: one per segment and task")
    )


def _quality(record: Mapping[str, Any]) -> str:
    """The shadow dense sample: agreement and its 95 % interval per task, then the cost; nothing when off."""
    shadow = record.get("shadow") or {}
    if not shadow:
        return ""
    quality = record.get("quality") or {}
    rows = "".join(
        f'<tr id="quality-{_e(task)}"><th>{_e(task)}</th><td class="num">{int(a["samples"])}</td>'
        f'<td class="num">{float(a["agreement"]):.3f}</td>'
        f'<td class="num">[{float(a["ci_low"]):.3f}, {float(a["ci_high"]):.3f}]</td></tr>'
        for task, a in quality.items()
    )
    table = (
        '<table class="errors"><tr><th>task</th><th>samples</th><th>agreement</th><th>95 % interval</th></tr>'
        f"{rows}</table>"
        if rows
        else '<p id="quality-none">No sampled segment was committed by this run.</p>'
    )
    return (
        "<h2>Agreement with dense</h2>"
        f'<p class="muted">A {100 * float(shadow.get("fraction", 0)):g} % sample of the segments, answered again by '
        "the same model under the dense preset: qa by exact agreement of the normalised answers (Wilson "
        "interval), captions by their mean token F1 (normal interval). The rows are in <code>_quality/</code> "
        "(<code>pipeline.query.results.open_quality</code>).</p>"
        f'{table}<p id="quality-cost">Cost: {_e(format_cost(shadow))}.</p>'
    )


def _count_table(kind: str, counts: Mapping[str, int], caption: str) -> str:
    total = sum(counts.values())
    cells = "".join(
        f'<tr><th><span class="dot" style="background:{COLOURS.get(s, "#888")}"></span>{_e(s)}</th>'
        f'<td id="{kind}-{_e(s)}">{n}</td><td class="bar"><div style="width:{100 * n / max(total, 1):.1f}%;'
        f'background:{COLOURS.get(s, "#888")}"></div></td></tr>'
        for s, n in counts.items()
    )
    return (
        f'<table class="counts"><caption>{_e(caption)}</caption>{cells}'
        f'<tr class="total"><th>total</th><td id="{kind}-total">{total}</td><td></td></tr></table>'
    )


def _errors(errors: Sequence[ErrorExample]) -> str:
    if not errors:
        return '<h2>Errors</h2><p id="no-errors">No error rows.</p>'
    rows = "".join(
        f'<tr><td><code>{_e(x.error_class)}</code></td><td class="num">{x.videos}</td>'
        f'<td><code>{_e(x.source_uri)}</code><br><span class="msg">{_e(x.message)}</span></td></tr>'
        for x in errors
    )
    return (
        '<h2>Errors</h2><table class="errors" id="errors"><tr><th>class</th><th>videos</th>'
        f"<th>an example</th></tr>{rows}</table>"
    )


def _samples(samples: Sequence[SampledVideo]) -> str:
    if not samples:
        return "<h2>Sample of videos</h2><p>No video was committed with rows to show.</p>"
    cards = []
    for s in samples:
        if s.picture_jpeg is not None:
            uri = "data:image/jpeg;base64," + base64.b64encode(s.picture_jpeg).decode("ascii")
            picture = (  # the frames at the card's width; a click opens the <details>: full size, no script
                f'<div class="frames"><details class="zoom"><summary><img src="{uri}" '
                f'alt="frames of {_e(s.source_uri)}, kept visual tokens bright" title="click: full size"></summary>'
                "</details></div>"
            )
        else:
            picture = f'<p class="muted">No picture: {_e(s.picture_note or "unknown")}</p>'
        answers = "".join(f"<dt>{_e(q)}</dt><dd>{_e(a)}</dd>" for q, a in s.answers)
        cards.append(
            f'<section class="sample"><h3><code>{_e(s.source_uri)}</code></h3>'
            f'<p class="muted">{_e(s.segment)}; video <code>{_e(s.video_id[:12])}</code></p>{picture}'
            f'<p class="kept">{_e(s.kept or "kept tokens: not recorded")}</p>'
            f'<p><b>Caption:</b> <span class="caption">{_e(s.caption if s.caption is not None else "(none)")}'
            f"</span></p><dl>{answers}</dl></section>"
        )
    return (
        '<h2>Sample of videos</h2><p class="muted">Frames at model resolution, decoded again as the pipeline '
        "did; dimmed patches are visual tokens the model pruned at its first pruning layer. Click a picture for its "
        "full size.</p>"
        f'<div class="samples">{"".join(cards)}</div>'
    )


# -- helpers ------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1a1a1a;background:#fafafa;margin:0}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:13px;margin:0 0 4px;word-break:break-all} code{font-size:12px}
.muted{color:#666} .badge{font-size:13px;padding:2px 8px;border-radius:10px;color:#fff;vertical-align:middle}
.badge.ok{background:#2e7d32} .badge.failed{background:#c62828}
.failure{background:#fdecea;border:1px solid #c62828;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;background:#fff} th,td{border:1px solid #e2e2e2;padding:3px 8px;text-align:left}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.figure{flex:1 1 0;background:#fff;border:1px solid #e2e2e2;border-radius:4px;padding:8px 12px;min-width:110px}
.big{font-size:24px;font-weight:600}
.record{display:grid;grid-template-columns:max-content 1fr max-content 1fr;background:#fff;border:1px solid #e2e2e2}
.record>div{padding:3px 8px;border-bottom:1px solid #eee} .record .name{font-weight:600}
.record .value{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
table.counts{display:inline-table;margin:0 24px 12px 0;vertical-align:top} caption{text-align:left;color:#666}
td.bar{width:160px} td.bar div{height:10px} .num{text-align:right}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}
.charts{display:flex;flex-wrap:wrap;gap:12px} svg.chart{width:500px;max-width:100%;background:#fff;
border:1px solid #e2e2e2;font-size:11px}
.errors .msg{font-size:12px;color:#7a1f1f;word-break:break-word}
.samples{display:grid;grid-template-columns:1fr;gap:12px}
.sample{background:#fff;border:1px solid #e2e2e2;padding:8px;border-radius:4px}
.sample img{image-rendering:pixelated} dt{font-weight:600;margin-top:4px} dd{margin:0 0 0 12px}
.kept{font-size:12px;color:#444}
.identity{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0}
.identity dt{margin:0} .identity dd{margin:0} .identity ol{margin:0;padding-left:20px}
.toy{background:#fff8e1;border:1px solid #f9a825;padding:6px 10px;border-radius:4px}
details.more{margin:8px 0} details.more summary{cursor:pointer;color:#444}
.zoom summary{list-style:none;cursor:zoom-in} .zoom summary::-webkit-details-marker{display:none}
.zoom[open] summary{cursor:zoom-out} .frames{overflow-x:auto} .zoom img{max-width:100%;height:auto}
.zoom[open] img{width:auto;max-width:none}
"""
