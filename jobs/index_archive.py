"""Nightly incremental indexing of a video archive.

    python -m jobs.index_archive --input s3://archive/videos/ --output s3://archive/index/ \\
        --question "what happens?" --preset video-25 [--date 2026-11-22]

Lists the archive, skips every video whose (uri, size, ETag/mtime) version was already indexed with the same
model, SparseConfig, segmenting and questions (the ledger at the output root), processes only new or changed
videos, writes their rows under ``dt=YYYY-MM-DD/``, and writes a run manifest ``_runs/<run_id>.json`` with
``seen``, ``processed``, ``skipped``, ``failed``, video-hours, tokens kept, wall time and throughput. A second run
on an unchanged archive processes nothing.
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
        from pipeline.run_plan import plan_run

        return plan_run(config)
    from pipeline.build import run_pipeline
    from pipeline.ledger import Ledger

    summary = dataclasses.asdict(run_pipeline(config, **run_options(ns)))
    manifest = {**summary, "partition": config.partition, **_run_metrics(config, summary)}
    Ledger(*config.output_filesystem()).write_json(f"_runs/{config.run_id}.json", manifest)
    return manifest


def _run_metrics(config: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Video-hours, tokens kept and throughput of the rows this run wrote."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, base = config.output_filesystem()
    metrics: dict[str, Any] = {"video_hours": 0.0, "mean_equivalent_tokens": None, "mean_visual_tokens_in": None}
    if summary["processed"]:
        table = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive").to_table(
            columns=["video_id", "duration_s", "equivalent_tokens", "visual_tokens_in", "status"],
            filter=pc.field("run_id") == config.run_id,
        )
        durations = {v: d for v, d in zip(table["video_id"].to_pylist(), table["duration_s"].to_pylist(), strict=True)}
        metrics["video_hours"] = round(sum(d or 0.0 for d in durations.values()) / 3600, 4)
        ok = table.filter(pc.field("status") == "ok")
        if ok.num_rows:
            metrics["mean_equivalent_tokens"] = round(pc.mean(ok["equivalent_tokens"]).as_py(), 2)
            metrics["mean_visual_tokens_in"] = round(pc.mean(ok["visual_tokens_in"]).as_py(), 2)
    wall = summary["wall_s"] or 1e-9
    metrics["videos_per_s"] = round(summary["processed"] / wall, 4)
    metrics["video_hours_per_hour"] = round(metrics["video_hours"] * 3600 / wall, 4)
    return metrics


if __name__ == "__main__":
    run_cli(main)
