"""The driver's view of a running job: what each commit task reports, and the progress line built from it.

Each commit task returns one :class:`CommitReport` row about the rows it wrote (segments, rows, errors,
tokens, the videos it committed); the driver streams those small rows back as the run goes (no second pass
over the output) and folds them into :class:`RunProgress`, which shows, from the moment the chain starts::

    52 seen, 12 already done, 40 to process | loading the model, first batch (0:00:21)
    52 seen, 12 already done, 12/40 processed | 3.1 segments/s | ETA 0:02:10 | errors 2 | tokens kept 25.0 % (...)
        | agreement caption 0.93 [0.88, 0.97] n=12, qa 1.00 [0.79, 1.00] n=15

(the agreement of the shadow dense sample, pipeline/observability/quality.py, from the committed videos' records; shown
once a sampled video is committed)

as one line redrawn in place on a terminal, or as a log record every ``interval_s`` (and a last one at the
end) when stderr is not a terminal, so a log file gets plain periodic lines (JSON ones under the jobs'
``--log-format json``: the counts are also the record's fields). A heartbeat thread shows the line at least
every ``interval_s`` while no commit arrives (Ray starting its workers, the model loading, a long batch), so a
run is never silent for longer; the counts of seen and already done videos are the ledger's, as the run read it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO, get_args

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.commit.ledger_index import LedgerEntry
from pipeline.observability.quality import QualityTally, format_agreement

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
        seen: videos the run listed (default: ``total``); ``seen - total`` were already done.
        heartbeat: show the line now, then every ``interval_s`` even when no commit arrives (a thread, until
            :meth:`close`).
        phase: what the run is doing until its first commit (set :attr:`phase` as it moves on).
    """

    def __init__(
        self,
        total: int,
        mode: ProgressMode = "auto",
        interval_s: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        seen: int | None = None,
        heartbeat: bool = False,
        phase: str = "loading the model, first batch",
    ) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.total = total
        self.seen = total if seen is None else seen
        self.phase = phase  # shown until the first commit arrives
        self.interval_s = interval_s if mode == "log" else min(interval_s, 0.2)
        self.clock = clock
        self.started = clock()
        self._shown_at = -float("inf")
        self.videos = self.segments = self.rows = self.error_rows = self.visual_tokens_in = 0
        self.equivalent_tokens = 0.0
        self.entries: list[LedgerEntry] = []
        self.quality = QualityTally()  # the shadow sample of the committed videos
        self._lock = threading.Lock()  # the heartbeat thread shows what the driver's thread counts
        self._closed = threading.Event()
        self._beat: threading.Thread | None = None
        if heartbeat and mode != "off":
            self._show()
            self._beat = threading.Thread(target=self._heartbeat, name="run-progress", daemon=True)
            self._beat.start()

    def update(self, report: CommitReport) -> None:
        """Add one commit task's report; show the line if ``interval_s`` has passed since the last one."""
        with self._lock:
            self.videos += len(report.entries)
            self.segments += report.segments
            self.rows += report.rows
            self.error_rows += report.error_rows
            self.equivalent_tokens += report.equivalent_tokens
            self.visual_tokens_in += report.visual_tokens_in
            self.entries.extend(report.entries)
            self.quality += QualityTally.total(e.quality for e in report.entries)
        if self.clock() - self._shown_at >= self.interval_s:
            self._show()

    def close(self) -> None:
        """Stop the heartbeat and show the final counts (the bar ends its line)."""
        self._closed.set()
        if self._beat is not None:
            self._beat.join()
        self._show()
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()

    def counts(self) -> dict[str, Any]:
        """The numbers on the line: videos done and total, segments/s, ETA (s), error rows, tokens kept, and the
        shadow sample's agreement per task (the run record's ``quality``; empty without samples)."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.videos / elapsed
        kept = self.equivalent_tokens / self.visual_tokens_in if self.visual_tokens_in else None
        ok_answers = self.rows - self.error_rows
        return {
            "videos_seen": self.seen,
            "videos_already_done": self.seen - self.total,
            "videos_done": self.videos,
            "videos_total": self.total,
            "segments": self.segments,
            "segments_per_s": round(self.segments / elapsed, 3),
            "eta_s": round((self.total - self.videos) / rate, 1) if rate > 0 else None,
            "error_rows": self.error_rows,
            "tokens_kept_fraction": round(kept, 4) if kept is not None else None,
            "equivalent_tokens_per_answer": round(self.equivalent_tokens / ok_answers, 1) if ok_answers else None,
            "visual_tokens_per_answer": round(self.visual_tokens_in / ok_answers, 1) if ok_answers else None,
            "quality": self.quality.agreement(),
        }

    def line(self) -> str:
        """The progress line (see the module docstring)."""
        c = self.counts()
        videos = f"{c['videos_seen']} seen, {c['videos_already_done']} already done"
        if not self.videos and not self._closed.is_set():
            elapsed = _clock_time(self.clock() - self.started)
            return f"{videos}, {c['videos_total']} to process | {self.phase} ({elapsed})"
        eta = "?" if c["eta_s"] is None else _clock_time(c["eta_s"])
        kept = "?"
        if c["tokens_kept_fraction"] is not None:
            kept = (
                f"{100 * c['tokens_kept_fraction']:.1f} % ({c['equivalent_tokens_per_answer']:g} of "
                f"{c['visual_tokens_per_answer']:g} per answer)"
            )
        agreement = f" | agreement {format_agreement(c['quality'])}" if c["quality"] else ""
        return (
            f"{videos}, {c['videos_done']}/{c['videos_total']} processed | {c['segments_per_s']:.2f} segments/s | "
            f"ETA {eta} | errors {c['error_rows']} | tokens kept {kept}{agreement}"
        )

    def _heartbeat(self) -> None:
        while not self._closed.wait(self.interval_s):
            if self.clock() - self._shown_at >= self.interval_s:
                self._show()

    def _show(self) -> None:
        with self._lock:
            self._emit()

    def _emit(self) -> None:
        self._shown_at = self.clock()
        if self.mode == "bar":
            self.stream.write("\r" + self.line() + "\x1b[K")  # back to the line's start, clear what was longer
            self.stream.flush()
        elif self.mode == "log":
            logger.info("progress: %s", self.line(), extra={"fields": self.counts()})


def _clock_time(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
