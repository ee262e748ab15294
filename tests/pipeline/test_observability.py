"""What an operator sees of a run: the driver's progress line and the metrics on Ray's Prometheus endpoint."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.build import build_dataset, commit_stage
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.observability.metrics import metrics_endpoints
from pipeline.observability.progress import CommitReport, RunProgress, commit_report
from pipeline.observability.quality import QualityTally, format_agreement
from pipeline.run import run_pipeline
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
    progress = RunProgress(4, "auto", interval_s=10, stream=io.StringIO(), clock=clock, seen=12)
    assert progress.mode == "log"
    caplog.set_level(logging.INFO, logger="pipeline.observability.progress")
    clock.now = 2.0
    progress.update(CommitReport(segments=2, rows=4, error_rows=1, equivalent_tokens=390.0, visual_tokens_in=1560,
                                 entries=[_entry("a")]))  # fmt: skip
    clock.now = 5.0  # within the interval: counted, not shown
    progress.update(CommitReport(segments=1, rows=2, error_rows=2, entries=[_entry("b", "error")]))
    clock.now = 8.0
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.observability.progress"]
    assert lines == [
        "progress: 12 seen, 8 already done, 1/4 processed | 1.00 segments/s | ETA 0:00:06 | errors 1 | tokens kept "
        "25.0 % (130 of 520 per answer)",
        "progress: 12 seen, 8 already done, 2/4 processed | 0.38 segments/s | ETA 0:00:08 | errors 3 | tokens kept "
        "25.0 % (130 of 520 per answer)",
    ]
    assert caplog.records[-1].fields["videos_done"] == 2  # type: ignore[attr-defined]  (JSON logs carry them)
    assert [e.key for e in progress.entries] == ["a", "b"]


def test_progress_shows_the_shadow_samples_agreement_once_a_sampled_video_is_committed() -> None:
    clock = _Clock()
    progress = RunProgress(3, "off", clock=clock)
    clock.now = 1.0
    progress.update(CommitReport(segments=1, rows=2, entries=[_entry("a")]))  # a record without a tally
    assert progress.counts()["quality"] == {} and "agreement" not in progress.line()
    tallies = [
        QualityTally(caption_samples=2, caption_sum=1.5, caption_squares=1.25, qa_samples=3, qa_agreed=2),
        QualityTally(caption_samples=1, caption_sum=1.0, caption_squares=1.0, qa_samples=1, qa_agreed=1),
    ]
    sampled = [dataclasses.replace(_entry(k), quality=t.to_dict()) for k, t in zip("bc", tallies, strict=True)]
    progress.update(CommitReport(segments=2, rows=4, entries=sampled))
    expected = (tallies[0] + tallies[1]).agreement()  # caption F1s summing to 2.5 over 3, qa 3 of 4
    assert progress.counts()["quality"] == expected
    assert expected["qa"]["agreement"] == 0.75 and expected["caption"]["samples"] == 3
    assert progress.line().endswith(f" | agreement {format_agreement(expected)}")
    assert format_agreement(expected) == "caption 0.83 [0.31, 1.00] n=3, qa 0.75 [0.30, 0.95] n=4"


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
    assert shown.split("\r")[-1].startswith("2 seen, 0 already done, 2/2 processed | ")


def test_progress_names_its_phase_from_the_start_and_shows_every_interval_without_commits() -> None:
    """The heartbeat: a line at once, then one per interval while Ray starts and the model loads."""
    lines: list[str] = []
    two = threading.Event()

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if len(lines) >= 3:
                two.set()

    handler = Lines()
    progress_logger = logging.getLogger("pipeline.observability.progress")
    progress_logger.addHandler(handler)
    old_level = progress_logger.level
    progress_logger.setLevel(logging.INFO)
    try:
        progress = RunProgress(2, "log", interval_s=0.05, seen=12, heartbeat=True, phase="starting Ray")
        assert lines[0] == "progress: 12 seen, 10 already done, 2 to process | starting Ray (0:00:00)"
        progress.phase = "loading the model, first batch"
        assert two.wait(timeout=30), lines  # two more lines with no commit at all
        progress.update(CommitReport(segments=1, rows=2, entries=[_entry("a")]))
        progress.close()
    finally:
        progress_logger.removeHandler(handler)
        progress_logger.setLevel(old_level)
    assert "| loading the model, first batch (0:00:0" in lines[2]
    assert lines[-1].startswith("progress: 12 seen, 10 already done, 1/2 processed | ")
    assert not progress._beat or not progress._beat.is_alive()  # close() stops the heartbeat


def test_commits_run_in_their_own_tasks_and_stream_reports_to_the_driver(
    pipeline_ray: None, pipeline_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(str(tmp_path), str(tmp_path / "out"), pipeline_model_dir)
    commit_stage(build_dataset(config, [{"ledger_key": "k"}], frame_size=64), config, {}).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(commit_rows)]\n+- ActorPoolMapOperator[MapBatches(Predictor)]" in optimized


SERIES = (  # name in the scrape, labels, what this run adds to it
    ("ray_svl_videos_total", 'status="ok"'),
    ("ray_svl_segments_total", ""),
    ("ray_svl_rows_total", 'status="ok"'),
    ("ray_svl_bytes_read_total", ""),
    ("ray_svl_decode_seconds_count", ""),
    ("ray_svl_model_batch_seconds_count", ""),
    ("ray_svl_equivalent_tokens_count", ""),
    ("ray_svl_equivalent_tokens_kept_total", ""),
    ("ray_svl_visual_tokens_in_total", ""),
    ("ray_svl_shadow_samples_total", 'task="qa"'),
    ("ray_svl_shadow_agreement_total", 'task="qa"'),
)


def _scrape() -> str:
    (endpoint,) = metrics_endpoints()
    assert endpoint.startswith("http://127.0.0.1:")
    return urllib.request.urlopen(endpoint, timeout=5).read().decode()


def _totals(text: str) -> dict[str, float]:
    """Each series of :data:`SERIES` summed over its label sets (Ray labels each worker's series)."""
    totals = {}
    for name, labels in SERIES:
        pattern = rf"^{name}\{{[^}}]*{labels}[^}}]*\}} ([0-9.e+]+)$"
        totals[name] = sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))
    return totals


@pytest.mark.slow  # 15 s here (2 cores): a Ray run scraped while it runs
def test_a_local_run_shows_progress_lines_and_its_metrics_on_the_endpoint(
    pipeline_ray: None, assets: Path, pipeline_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in CLIPS:
        shutil.copy(assets / name, videos / name)
    config = make_config(str(videos), str(tmp_path / "out"), pipeline_model_dir, shadow_fraction=1.0)
    before = _totals(_scrape())  # other tests of the session run pipelines on the same Ray
    caplog.set_level(logging.INFO, logger="pipeline.observability.progress")
    summary = run_pipeline(config, progress="log")  # pytest's stderr is no terminal: "auto" would log too
    assert (summary.processed, summary.failed) == (2, 0)

    lines = [r for r in caplog.records if r.name == "pipeline.observability.progress"]
    last = lines[-1].fields  # type: ignore[attr-defined]
    assert lines[0].getMessage().startswith("progress: 2 seen, 0 already done, 2 to process | starting Ray (")
    assert lines[-1].getMessage().startswith("progress: 2 seen, 0 already done, 2/2 processed | ")
    assert (last["videos_done"], last["videos_total"], last["error_rows"]) == (2, 2, 0)
    assert last["segments"] == summary.rows // 2  # a caption and one answer per segment
    assert 0 < last["tokens_kept_fraction"] < 1
    assert last["quality"] == summary.quality and summary.quality["qa"]["samples"] == last["segments"]
    assert f"| agreement caption {summary.quality['caption']['agreement']:.2f} [" in lines[-1].getMessage()

    added = {
        "ray_svl_videos_total": 2,
        "ray_svl_segments_total": last["segments"],
        "ray_svl_rows_total": summary.rows,
        "ray_svl_bytes_read_total": sum(p.stat().st_size for p in videos.iterdir()),
        "ray_svl_decode_seconds_count": 2,
        "ray_svl_model_batch_seconds_count": 1,
        "ray_svl_equivalent_tokens_count": summary.rows,
        "ray_svl_equivalent_tokens_kept_total": 0.99 * last["equivalent_tokens_per_answer"] * summary.rows,
        "ray_svl_visual_tokens_in_total": last["visual_tokens_per_answer"] * summary.rows,
        "ray_svl_shadow_samples_total": summary.quality["qa"]["samples"],  # every segment sampled
        "ray_svl_shadow_agreement_total": summary.quality["qa"]["agreement"] * summary.quality["qa"]["samples"],
    }
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while True:
        after = _totals(_scrape())
        missing = {k: (before[k], after[k], n) for k, n in added.items() if after[k] < before[k] + n}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"(before, after, this run) of the series that did not grow enough: {missing}"
