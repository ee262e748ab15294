"""The driver's view of a running job: what each commit task reports, and the progress line built from it.

Each commit task returns one :class:`CommitReport` row about the rows it wrote (segments, rows, errors,
tokens, the videos it committed); the driver streams those small rows back as the run goes (no second pass
over the output) and folds them into :class:`RunProgress`, which shows::

    videos 12/40 | 3.1 segments/s | ETA 0:02:10 | errors 2 | tokens kept 25.0 % (130 of 520 per answer)

as one line redrawn in place on a terminal, or as a log record every ``interval_s`` (and a last one at the
end) when stderr is not a terminal, so a log file gets plain periodic lines (JSON ones under the jobs'
``--log-format json``: the counts are also the record's fields).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO, get_args

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ledger_index import LedgerEntry

logger = logging.getLogger(__name__)

__all__ = ["REPORT_SCHEMA", "CommitReport", "ProgressMode", "RunProgress", "commit_report"]

ProgressMode = Literal["auto", "bar", "log", "off"]
PROGRESS_MODES: tuple[str, ...] = get_args(ProgressMode)

REPORT_SCHEMA = pa.schema(
    [
        ("segments", pa.int64()),
        ("rows", pa.int64()),
        ("error_rows", pa.int64()),
        ("equivalent_tokens", pa.float64()),  # sum over the ok rows
        ("visual_tokens_in", pa.int64()),  # sum over the ok rows
        ("entries", pa.string()),  # JSON list of the LedgerEntry dicts the task committed
    ]
)


@dataclass(frozen=True)
class CommitReport:
    """What one commit task wrote: counts over its result rows and the videos it committed."""

    segments: int = 0  # caption rows: every segment, decoded or not, has exactly one
    rows: int = 0
    error_rows: int = 0
    equivalent_tokens: float = 0.0
    visual_tokens_in: int = 0
    entries: list[LedgerEntry] = field(default_factory=list)

    def to_table(self) -> pa.Table:
        row = {**asdict(self), "entries": json.dumps([asdict(e) for e in self.entries])}
        return pa.Table.from_pylist([row], schema=REPORT_SCHEMA)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CommitReport:
        entries = [LedgerEntry(**e) for e in json.loads(row["entries"])]
        return cls(**{**row, "entries": entries})


def commit_report(rows: pa.Table, committed: list[LedgerEntry]) -> CommitReport:
    """The report of one commit task from the result rows it wrote (``RESULT_SCHEMA`` columns)."""
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    return CommitReport(
        segments=pc.sum(pc.equal(rows["task"], "caption")).as_py() or 0,
        rows=rows.num_rows,
        error_rows=rows.num_rows - ok.num_rows,
        equivalent_tokens=float(pc.sum(ok["equivalent_tokens"]).as_py() or 0.0),
        visual_tokens_in=int(pc.sum(ok["visual_tokens_in"]).as_py() or 0),
        entries=committed,
    )


class RunProgress:
    """Folds commit reports into the run's counts and shows them (see the module docstring).

    Args:
        total: videos this run processes.
        mode: ``bar`` redraws one line on ``stream``; ``log`` logs a line every ``interval_s``; ``auto`` is
            ``bar`` when ``stream`` is a terminal, else ``log``; ``off`` only counts.
        interval_s: seconds between log lines (``log``) or redraws (``bar``, at most every 0.2 s).
        stream: where the bar goes (default: stderr).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        total: int,
        mode: ProgressMode = "auto",
        interval_s: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.total = total
        self.interval_s = interval_s if mode == "log" else min(interval_s, 0.2)
        self.clock = clock
        self.started = clock()
        self._shown_at = -float("inf")
        self.videos = self.segments = self.rows = self.error_rows = self.visual_tokens_in = 0
        self.equivalent_tokens = 0.0
        self.entries: list[LedgerEntry] = []

    def update(self, report: CommitReport) -> None:
        """Add one commit task's report; show the line if ``interval_s`` has passed since the last one."""
        self.videos += len(report.entries)
        self.segments += report.segments
        self.rows += report.rows
        self.error_rows += report.error_rows
        self.equivalent_tokens += report.equivalent_tokens
        self.visual_tokens_in += report.visual_tokens_in
        self.entries.extend(report.entries)
        if self.clock() - self._shown_at >= self.interval_s:
            self._show()

    def close(self) -> None:
        """Show the final counts (the bar ends its line)."""
        self._show()
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()

    def counts(self) -> dict[str, Any]:
        """The numbers on the line: videos done and total, segments/s, ETA (s), error rows, tokens kept."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.videos / elapsed
        kept = self.equivalent_tokens / self.visual_tokens_in if self.visual_tokens_in else None
        ok_answers = self.rows - self.error_rows
        return {
            "videos_done": self.videos,
            "videos_total": self.total,
            "segments": self.segments,
            "segments_per_s": round(self.segments / elapsed, 3),
            "eta_s": round((self.total - self.videos) / rate, 1) if rate > 0 else None,
            "error_rows": self.error_rows,
            "tokens_kept_fraction": round(kept, 4) if kept is not None else None,
            "equivalent_tokens_per_answer": round(self.equivalent_tokens / ok_answers, 1) if ok_answers else None,
            "visual_tokens_per_answer": round(self.visual_tokens_in / ok_answers, 1) if ok_answers else None,
        }

    def line(self) -> str:
        """The progress line (see the module docstring)."""
        c = self.counts()
        eta = "?" if c["eta_s"] is None else _clock_time(c["eta_s"])
        kept = "?"
        if c["tokens_kept_fraction"] is not None:
            kept = (
                f"{100 * c['tokens_kept_fraction']:.1f} % ({c['equivalent_tokens_per_answer']:g} of "
                f"{c['visual_tokens_per_answer']:g} per answer)"
            )
        return (
            f"videos {c['videos_done']}/{c['videos_total']} | {c['segments_per_s']:.2f} segments/s | ETA {eta} | "
            f"errors {c['error_rows']} | tokens kept {kept}"
        )

    def _show(self) -> None:
        self._shown_at = self.clock()
        if self.mode == "bar":
            self.stream.write("\r" + self.line() + "\x1b[K")  # back to the line's start, clear what was longer
            self.stream.flush()
        elif self.mode == "log":
            logger.info("progress: %s", self.line(), extra={"fields": self.counts()})


def _clock_time(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
