"""The run record: what every run leaves in ``_runs/<run_id>.json`` (and its report page), ok or failed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.config import PipelineConfig
from pipeline.error_lines import cause_line
from pipeline.observability.quality import QualityTally
from pipeline.observability.report_data import write_report

logger = logging.getLogger(__name__)

__all__ = ["RunSummary", "summarise", "write_failure", "write_summary"]


@dataclass(frozen=True)
class RunSummary:
    """What one run did. ``seen = skipped + processed + uncommitted``; ``failed`` counts videos whose rows
    are all errors, ``partial`` those with some error rows. ``model`` (a ``bundled:`` label for the bundled
    toy models), ``model_revision``, ``preset`` and ``questions`` say what produced the rows, first, so that no
    reader mistakes the toy model's answers for a real model's."""

    run_id: str
    model: str
    model_revision: str | None
    preset: str
    questions: list[str]
    config_key: str
    output_uri: str
    seen: int
    skipped: int
    processed: int
    failed: int
    partial: int
    rows: int
    uncommitted: int
    wall_s: float
    error_classes: dict[str, int] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)  # old part files of retried videos, deleted
    status: str = "ok"  # "failed": the run stopped; its counts are what it had committed by then
    error_class: str | None = None  # why the run failed (not a video's error: those are in error_classes)
    error_message: str | None = None
    started_at: str = ""  # ISO 8601, UTC: when run_pipeline was called (the report's throughput starts there)
    # The shadow dense sample (pipeline/observability/quality.py) of the videos this run committed; both empty when it
    # is off.
    # quality: per task with samples, {"samples": N, "agreement": A, "ci_low": L, "ci_high": H} (A in [0, 1]).
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    # shadow: its cost: {"fraction", "prompts", "failed", "answers_share", "dense_s", "model_time_share"}.
    shadow: dict[str, Any] = field(default_factory=dict)
    # summaries (``--summarize``, pipeline/stages/summary.py): {"videos", "committed", "failed", "rows", "wall_s"}
    # (pipeline.run._summarize); empty when it is off.
    summaries: dict[str, Any] = field(default_factory=dict)


def summarise(config: PipelineConfig, seen: int, pending: int, entries: list[LedgerEntry], wall: float) -> RunSummary:
    """The record of a run that saw ``seen`` videos, had ``pending`` to process and committed ``entries``."""
    classes: dict[str, int] = {}
    for entry in entries:
        for name in entry.error_classes:
            classes[name] = classes.get(name, 0) + 1
    quality: dict[str, dict[str, Any]] = {}
    shadow: dict[str, Any] = {}
    if config.shadow_fraction > 0:
        tally = QualityTally.total(e.quality for e in entries)
        quality = tally.agreement()
        shadow = {"fraction": config.shadow_fraction, **tally.cost(answers=sum(e.ok_rows or 0 for e in entries))}
    return RunSummary(
        run_id=config.run_id,
        model=config.model_label,
        model_revision=config.model_revision,
        preset=config.sparse.name,
        questions=[config.caption_prompt, *config.questions],
        config_key=config.config_key(),
        output_uri=config.output_uri,
        seen=seen,
        skipped=seen - pending,
        processed=len(entries),
        failed=sum(e.status == "error" for e in entries),
        partial=sum(e.status == "partial" for e in entries),
        rows=sum(e.rows for e in entries),
        uncommitted=pending - len(entries),
        wall_s=round(wall, 3),
        error_classes=classes,
        started_at=(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=wall)).isoformat(timespec="milliseconds"),
        quality=quality,
        shadow=shadow,
    )


def write_summary(ledger: Ledger, summary: RunSummary) -> None:
    """Write ``_runs/<run_id>.json``."""
    ledger.write_json(f"_runs/{summary.run_id}.json", asdict(summary))


def write_failure(
    config: PipelineConfig, ledger: Ledger, record: dict[str, Any], err: BaseException, wall: float
) -> None:
    """Record a failed run: ``status: failed``, the error, and the videos it committed before it stopped
    (read back from the ledger: a Ray job that fails returns nothing to the driver). Never raises."""
    pending: list[str] = record.get("pending", [])
    try:
        found = ledger.entries(pending).values() if pending else []
        entries = [e for e in found if e.run_id == config.run_id]
    except Exception as read_err:  # the storage that failed the run may fail this too; the counts stay 0
        logger.warning("run %s: could not read what it committed (%s)", config.run_id, cause_line(read_err))
        entries = []
    summary = summarise(config, record.get("seen", 0), len(pending), entries, wall)
    # what the job's one error line says about an interrupted run (jobs/common.py reads the note)
    err.add_note(f"{len(entries)} of {len(pending)} pending videos were committed (_runs/{config.run_id}.json)")
    summary = dataclasses.replace(
        summary, status="failed", error_class=type(err).__name__, error_message=cause_line(err)
    )
    try:
        write_summary(ledger, summary)
    except Exception as write_err:
        logger.warning("run %s failed and its record could not be written (%s)", config.run_id, write_err)
        return
    write_report(ledger, config, asdict(summary), entries, record.get("frame_size"))  # logs, never raises
