"""The run report page: pure rendering (escaping, failed runs, throughput), and a real run's page in Chromium."""

from __future__ import annotations

import logging
import os
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.observability.report import ErrorExample, ReportData, SampledVideo, render_report, throughput
from pipeline.observability.report_data import pick_samples, report_path, write_report
from pipeline.run import run_pipeline
from sparsevlm.config import DEFAULT_PRESET
from tests.pipeline import browser
from tests.pipeline.runs import make_config, read_rows

DOCS_SCREENSHOT = Path(__file__).parents[2] / "docs" / "run-report.png"
NO_CHROMIUM = "chromium is not installed: `make install` installs it with apt-get (root or sudo); elsewhere install it"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class PageText(HTMLParser):
    """The text of every element with an id, the ``src`` of every image, and every tag name seen."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.sources: list[str] = []
        self.tags: Counter[str] = Counter()
        self._open: list[str | None] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags[tag] += 1
        if tag == "img":
            self.sources.append(found.get("src") or "")
        if tag not in ("img", "br", "meta", "path", "line", "rect"):
            self._open.append(found.get("id"))
            if found.get("id"):
                self.by_id[str(found["id"])] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("img", "br", "meta", "path", "line", "rect") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in filter(None, self._open):
            self.by_id[name] += data


def entry(key: str, status: str, at: str, segments: int = 1, classes: tuple[str, ...] = ()) -> LedgerEntry:
    return LedgerEntry(
        key, key, f"/v/{key}.mp4", f"part-{key}.parquet", 2 * segments, segments, status, list(classes), "r1", at
    )


def test_the_page_escapes_what_runs_wrote_and_runs_no_script() -> None:
    record = {
        "run_id": "r1",
        "status": "failed",
        "error_class": "PipelineError",
        "error_message": HOSTILE,
        "output_uri": "s3://b/<out>",
        "error_classes": {HOSTILE: 1},
        "model": HOSTILE,
        "questions": ["describe the video.", HOSTILE],
    }
    data = ReportData(
        record=record,
        entries=[entry("a", "ok", "2026-12-01T10:00:01+00:00"), entry("b", "error", "2026-12-01T10:00:03+00:00")],
        rows_by_status={"ok": 2, "error": 2},
        errors=[ErrorExample(HOSTILE, 1, "/v/<b>.mp4", HOSTILE)],
        samples=[SampledVideo("a" * 40, "/v/a&b.mp4", "segment 0", HOSTILE, ((HOSTILE, HOSTILE),), None, None, "gone")],
    )
    page = render_report(data)
    parsed = PageText(page)
    assert parsed.tags["script"] == 0 and parsed.tags["img"] == 0 and "<script" not in page and "<img" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    # the model and a question in the header, the error banner, the error table's class and message, the
    # caption, a question and its answer (the banner's message is not repeated in the record below)
    assert page.count(escaped) == 8
    assert HOSTILE in parsed.by_id["run-model"] and HOSTILE in parsed.by_id["run-questions"]
    assert parsed.by_id["run-status"] == "failed" and HOSTILE in parsed.by_id["run-error"]
    assert (parsed.by_id["videos-ok"], parsed.by_id["videos-error"], parsed.by_id["rows-total"]) == ("1", "1", "4")


def test_throughput_counts_videos_and_segments_from_the_commit_times() -> None:
    entries = [
        entry("a", "ok", "2026-12-01T10:00:02+00:00", segments=3),
        entry("b", "ok", "2026-12-01T10:00:10+00:00", segments=1),
        entry("c", "partial", "2026-12-01T10:00:20+00:00", segments=2),
    ]
    points, bars = throughput(entries, started_at="2026-12-01T10:00:00.000+00:00")
    assert points == [(2.0, 1.0), (10.0, 2.0), (20.0, 3.0)]
    assert len(bars) == 20 and bars[-1][1] == pytest.approx(20.0)
    assert sum(value * (end - start) for start, end, value in bars) == pytest.approx(6)  # segments, all of them
    assert bars[2][2] == pytest.approx(3.0)  # the slice 2-3 s holds a's 3 segments: 3 per second
    assert throughput([], None) == ([], [])


def test_the_sample_shows_every_kind_of_video_and_no_failed_one() -> None:
    synthetic = [entry(f"s{i}", "ok", "2026-12-01T10:00:01+00:00") for i in range(6)]
    real = LedgerEntry("z", "z", "/v/real.MKV", "part-z.parquet", 2, 1, "partial", ["X"], "r1", "2026-12-01T10:00:02")
    failed = entry("a0", "error", "2026-12-01T10:00:01+00:00")
    picked = pick_samples([*synthetic, failed, real], count=4)
    assert [e.key for e in picked] == ["s0", "z", "s1", "s2"]  # the one MKV among MP4s is shown, the failed one not
    assert [e.key for e in pick_samples(synthetic, count=4)] == ["s0", "s1", "s2", "s3"]


def test_a_page_that_cannot_be_made_is_logged_and_nothing_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(str(tmp_path), str(tmp_path / "out"), tmp_path)
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path / "out"))
    broken = [entry("a", "error", "2026-12-01T10:00:02+00:00", classes=("X",))]  # its part file does not exist
    with caplog.at_level(logging.WARNING):
        assert write_report(ledger, config, {"run_id": "r1", "error_classes": {"X": 1}}, broken, 64) is None
    assert "could not write its report page _runs/r1.html" in caplog.text
    assert not (tmp_path / "out" / "_runs" / "r1.html").exists()


def test_chromium_logs_console_messages_where_the_test_looks() -> None:
    """The control for the check below: a page that logs an error is caught (so silence means none)."""
    if browser.find_chromium() is None:
        pytest.skip(NO_CHROMIUM)
    page = Path(os.environ.get("TMPDIR", "/tmp")) / f"console-{os.getpid()}.html"
    page.write_text("<html><body><script>console.error('report-console-check')</script></body></html>")
    try:
        _, messages = browser.dump_dom(page)
    finally:
        page.unlink()
    assert any("report-console-check" in m for m in messages), messages


@pytest.mark.slow  # 9 s here (2 cores): a Ray run, then Chromium
def test_a_real_runs_page_in_chromium_shows_its_parquet_rows(
    pipeline_ray: None, pipeline_videos: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    if browser.find_chromium() is None:
        pytest.skip(NO_CHROMIUM)
    config = make_config(str(pipeline_videos), str(tmp_path / "out"), pipeline_model_dir, run_id="report-test")
    summary = run_pipeline(config)
    page = tmp_path / "out" / report_path(config.run_id)
    rows = read_rows(config)

    dom, messages = browser.dump_dom(page)
    assert messages == []  # no console errors or warnings, and no fetch (it would fail and log)
    shown = PageText(dom)
    assert shown.tags["script"] == 0 and shown.tags["link"] == 0
    assert shown.sources and all(s.startswith("data:image/jpeg;base64,") for s in shown.sources)
    assert shown.by_id["run-status"] == "ok" and "run-error" not in shown.by_id
    # the header says what produced the rows, before any figure
    assert shown.by_id["run-model"] == config.model_label and shown.by_id["run-preset"] == DEFAULT_PRESET
    assert shown.by_id["run-revision"] == config.model_revision
    for prompt in (config.caption_prompt, *config.questions):
        assert prompt in shown.by_id["run-questions"]
    assert dom.index('id="run-model"') < dom.index('id="figure-processed"')
    assert "run-toy" not in shown.by_id  # a copy of the checkpoint elsewhere is not labelled bundled
    assert "summary-processed" not in shown.by_id  # the cards' numbers are not repeated in the record
    assert shown.tags["details"] >= len(shown.sources)  # every picture opens to full size, without a script
    by_status = Counter(r["status"] for r in rows)
    assert (shown.by_id["rows-ok"], shown.by_id["rows-error"]) == (str(by_status["ok"]), str(by_status["error"]))
    assert shown.by_id["rows-total"] == str(len(rows)) == str(summary.rows)
    videos = {r["video_id"]: r["status"] for r in rows if r["status"] == "error"}
    assert shown.by_id["videos-error"] == str(len(videos)) == str(summary.failed)
    assert shown.by_id["figure-processed"] == str(len({r["video_id"] for r in rows}))
    firsts = [r for r in rows if r["task"] == "caption" and r["segment_index"] == 0]
    assert len(shown.sources) == len(firsts) == 3  # three decodable clips, each with its frames
    text = dom.replace("&amp;", "&")
    for row in firsts:  # its caption, and how many visual tokens the model kept for it
        assert f'<span class="caption">{row["answer"]}</span>' in text
        assert f"{len(row['kept_visual_tokens'])} of {row['visual_tokens_in']} visual tokens kept" in text
    (error,) = [r for r in rows if r["status"] == "error"]
    assert error["error_class"] in shown.by_id["errors"] and error["error_message"] in shown.by_id["errors"]

    shot = tmp_path / "report.png"
    assert browser.screenshot(page, shot) == []
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1800, 1100) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn
    if os.environ.get("UPDATE_REPORT_SCREENSHOT"):  # the README's picture: UPDATE_REPORT_SCREENSHOT=1 pytest -k ...
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        Image.open(shot).convert("RGB").quantize(colors=128).save(DOCS_SCREENSHOT, optimize=True)


def test_the_page_shows_the_shadow_samples_agreement_and_cost_only_when_it_sampled() -> None:
    quality = {
        "caption": {"samples": 12, "agreement": 0.9312, "ci_low": 0.8801, "ci_high": 0.9744},
        "qa": {"samples": 15, "agreement": 1.0, "ci_low": 0.7961, "ci_high": 1.0},
    }
    shadow = {
        "fraction": 0.02,
        "prompts": 27,
        "failed": 0,
        "answers_share": 0.021,
        "dense_s": 3.2,
        "model_time_share": 0.04,
    }
    entries = [entry("a", "ok", "2026-12-01T10:00:01+00:00")]
    sampled = PageText(
        render_report(
            ReportData(
                record={"run_id": "r1", "quality": quality, "shadow": shadow}, entries=entries, rows_by_status={}
            )
        )
    )
    assert sampled.by_id["quality-caption"] == "caption120.931[0.880, 0.974]"
    assert sampled.by_id["quality-qa"] == "qa151.000[0.796, 1.000]"
    assert sampled.by_id["quality-cost"] == (
        "Cost: 27 dense prompts (2.1 % of the answers), 3.2 s, 4.0 % of the model's generate time."
    )
    assert "summary-quality" not in sampled.by_id and "summary-shadow" not in sampled.by_id  # not again below
    off = PageText(
        render_report(
            ReportData(record={"run_id": "r1", "quality": {}, "shadow": {}}, entries=entries, rows_by_status={})
        )
    )
    assert not [name for name in off.by_id if name.startswith("quality")]
