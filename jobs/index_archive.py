"""Nightly incremental indexing of a video archive.

    python -m jobs.index_archive --input s3://archive/videos/ --output s3://archive/index/ \\
        --question "what happens?" --preset video-25 [--date 2026-11-22]

Lists the archive, skips every video whose (uri, size, ETag/mtime) version was already indexed with the same
model, SparseConfig, segmenting and questions (the ledger at the output root), processes only new or changed
videos, writes their rows under ``dt=YYYY-MM-DD/``, and writes a run manifest ``_runs/<run_id>.json`` with
``seen``, ``processed``, ``skipped``, ``failed``, video-hours, tokens kept, wall time and throughput, beside the
run's report page ``_runs/<run_id>.html``. The figures come from the run's ledger records (the index), never
from a scan of the Parquet files. A second run on an unchanged archive processes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from typing import Any

from jobs.common import add_run_flags, config_from_args, job_parser, parse_run_args, run_cli, run_options


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("python -m jobs.index_archive", __doc__)
    add_run_flags(parser)
    parser.add_argument("--date", help="partition date YYYY-MM-DD (default: today, UTC)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ns = parse_run_args(build_parser(), argv)
    day = ns.date or dt.datetime.now(dt.UTC).date().isoformat()
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"--date must be YYYY-MM-DD, got {day!r}") from None
    config = config_from_args(ns, partition=f"dt={day}")
    if ns.dry_run:
        from pipeline.observability.run_plan import plan_run

        return plan_run(config)
    from pipeline.commit.ledger import Ledger
    from pipeline.run import run_pipeline

    summary = dataclasses.asdict(run_pipeline(config, **run_options(ns)))
    manifest = {**summary, "partition": config.partition, **_run_metrics(config, summary)}
    Ledger(*config.output.filesystem()).write_json(f"_runs/{config.run_id}.json", manifest)
    return manifest


def _run_metrics(config: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Video-hours, tokens kept and throughput of the videos this run committed, from their ledger records
    (the index and loose markers: no scan of the part files)."""
    from pipeline.commit.ledger import Ledger

    found = Ledger(*config.output.filesystem()).run_entries(config.run_id) if summary["processed"] else []
    entries = [e for e in found if e.kind is None]  # the videos' own records, not their summaries' (--summarize)
    ok_rows = sum(e.ok_rows or 0 for e in entries)
    metrics: dict[str, Any] = {
        "video_hours": round(sum(e.duration_s or 0.0 for e in entries) / 3600, 4),
        "mean_equivalent_tokens": round(sum(e.equivalent_tokens or 0.0 for e in entries) / ok_rows, 2)
        if ok_rows
        else None,
        "mean_visual_tokens_in": round(sum(e.visual_tokens_in or 0 for e in entries) / ok_rows, 2) if ok_rows else None,
    }
    wall = summary["wall_s"] or 1e-9
    metrics["videos_per_s"] = round(summary["processed"] / wall, 4)
    metrics["video_hours_per_hour"] = round(metrics["video_hours"] * 3600 / wall, 4)
    return metrics


if __name__ == "__main__":
    run_cli(main)
