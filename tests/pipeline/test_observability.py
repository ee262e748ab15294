"""What an operator sees of a run: the driver's progress line and the metrics on Ray's Prometheus endpoint."""

from __future__ import annotations

import io
import logging
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.build import run_pipeline
from pipeline.ledger_index import LedgerEntry
from pipeline.metrics import metrics_endpoints
from pipeline.progress import CommitReport, RunProgress, commit_report
from tests.pipeline.runs import make_config

CLIPS = ("gradio_video_sample.webm", "mmaction2_test.avi")  # 5.0 s and 6.6 s: one 5 s segment each


def _entry(key: str, status: str = "ok") -> LedgerEntry:
    return LedgerEntry(key, "v", f"/in/{key}.mp4", f"part-{key}.parquet", 2, 1, status, [], "r", "t")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_commit_report_counts_segments_errors_and_tokens() -> None:
    rows = pa.table(
        {
            "task": ["caption", "qa", "caption", "qa", "caption"],
            "status": ["ok", "ok", "ok", "error", "error"],
            "equivalent_tokens": [130.0, 130.0, 120.0, None, None],
            "visual_tokens_in": [520, 520, 520, None, None],
        }
    )
    report = commit_report(rows, [_entry("a")])
    assert (report.segments, report.rows, report.error_rows) == (3, 5, 2)
    assert (report.equivalent_tokens, report.visual_tokens_in) == (380.0, 1560)
    assert CommitReport.from_row(report.to_table().to_pylist()[0]) == report  # the row the driver receives


def test_progress_logs_plain_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    progress = RunProgress(4, "auto", interval_s=10, stream=io.StringIO(), clock=clock)
    assert progress.mode == "log"
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    clock.now = 2.0
    progress.update(CommitReport(segments=2, rows=4, error_rows=1, equivalent_tokens=390.0, visual_tokens_in=1560,
                                 entries=[_entry("a")]))  # fmt: skip
    clock.now = 5.0  # within the interval: counted, not shown
    progress.update(CommitReport(segments=1, rows=2, error_rows=2, entries=[_entry("b", "error")]))
    clock.now = 8.0
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    assert lines == [
        "progress: videos 1/4 | 1.00 segments/s | ETA 0:00:06 | errors 1 | tokens kept 25.0 % (130 of 520 per answer)",
        "progress: videos 2/4 | 0.38 segments/s | ETA 0:00:08 | errors 3 | tokens kept 25.0 % (130 of 520 per answer)",
    ]
    assert caplog.records[-1].fields["videos_done"] == 2  # type: ignore[attr-defined]  (JSON logs carry them)
    assert [e.key for e in progress.entries] == ["a", "b"]


def test_progress_redraws_one_line_on_a_terminal() -> None:
    terminal, clock = _Terminal(), _Clock()
    progress = RunProgress(2, "auto", stream=terminal, clock=clock)
    assert progress.mode == "bar"
    clock.now = 1.0
    progress.update(CommitReport(segments=1, rows=2, entries=[_entry("a")]))
    clock.now = 1.1  # sooner than the redraw interval
    progress.update(CommitReport(segments=1, rows=2, entries=[_entry("b")]))
    progress.close()
    shown = terminal.getvalue()
    assert shown.count("\r") == 2 and shown.endswith("\n") and shown.count("\n") == 1
    assert shown.split("\r")[-1].startswith("videos 2/2 | ")


def _scrape(deadline_s: float, wanted: tuple[str, ...]) -> str:
    """The Ray node's Prometheus text once it shows every ``wanted`` series (Ray exports every few seconds)."""
    (endpoint,) = metrics_endpoints()
    assert endpoint.startswith("http://127.0.0.1:")
    deadline = time.monotonic() + deadline_s
    text = ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(endpoint, timeout=5).read().decode()
        if all(re.search(rf"^{name}[{{ ]", text, re.MULTILINE) for name in wanted):
            return text
        time.sleep(1)
    raise AssertionError(f"{wanted} not all on {endpoint} after {deadline_s} s; svl lines: "
                         f"{[line for line in text.splitlines() if 'svl' in line]}")  # fmt: skip


def _total(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{name}\{{[^}}]*{labels}[^}}]*\}} ([0-9.e+]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_a_local_run_shows_progress_lines_and_its_metrics_on_the_endpoint(
    pipeline_ray: None, assets: Path, pipeline_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in CLIPS:
        shutil.copy(assets / name, videos / name)
    config = make_config(str(videos), str(tmp_path / "out"), pipeline_model_dir)
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    summary = run_pipeline(config, progress="log")  # pytest's stderr is no terminal: "auto" would log too
    assert (summary.processed, summary.failed) == (2, 0)

    lines = [r for r in caplog.records if r.name == "pipeline.progress"]
    last = lines[-1].fields  # type: ignore[attr-defined]
    assert lines[-1].getMessage().startswith("progress: videos 2/2 | ")
    assert (last["videos_done"], last["videos_total"], last["error_rows"]) == (2, 2, 0)
    assert last["segments"] == summary.rows // 2  # a caption and one answer per segment
    assert 0 < last["tokens_kept_fraction"] < 1

    text = _scrape(
        60,
        (
            "ray_svl_videos_total",
            "ray_svl_segments_total",
            "ray_svl_rows_total",
            "ray_svl_bytes_read_total",
            "ray_svl_decode_seconds_count",
            "ray_svl_model_batch_seconds_count",
            "ray_svl_equivalent_tokens_count",
        ),
    )
    # Other tests of the session run pipelines on the same Ray: this run's counts are a lower bound.
    assert _total(text, "ray_svl_videos_total", 'status="ok"') >= 2
    assert _total(text, "ray_svl_segments_total") >= last["segments"]
    assert _total(text, "ray_svl_rows_total", 'status="ok"') >= summary.rows
    assert _total(text, "ray_svl_bytes_read_total") >= sum(p.stat().st_size for p in videos.iterdir())
    assert _total(text, "ray_svl_decode_seconds_count") >= 2
