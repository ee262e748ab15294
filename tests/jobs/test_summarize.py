"""The summary task through the jobs (local Ray; a local output and moto S3): one ``summary`` row per video of
several segments, exactly once over reruns, added to an output that earlier runs made without reprocessing its
videos, and counted in the run record and the printed summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import s3fs

from jobs import caption
from jobs.common import config_from_args, parse_run_args
from jobs.summaries import format_plan, format_summary
from pipeline.commit.ledger import Ledger
from pipeline.query.results import open_results
from pipeline.run import run_pipeline
from pipeline.stages.schema import SUMMARY_TASK
from sparsevlm.prompt_text import SUMMARY_PROMPT
from tests.pipeline.crash_jobs import copy_clips

# The three clips of tests.pipeline.crash_jobs: 2 + 1 + 1 segments at 5 s, so only the pancake gets a summary.
SEVERAL = "decord_flipping_a_pancake.mkv"
FAST = ["--frames", "2", "--max-new-tokens", "8", "--segment-seconds", "5", "--shadow-fraction", "0"]
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials (tests/conftest.py)
TIMES = ("run_id", "created_at", "latency_ms")  # what differs between two runs of the same rows


def _argv(videos: Path, out: str, model: Path, *extra: str) -> list[str]:
    return ["--input", str(videos), "--output", out, "--model", str(model), *FAST, *extra]


def _rows(out: str, **s3: Any) -> list[dict[str, Any]]:
    rows = open_results(out, **s3).to_table().drop_columns(list(TIMES)).to_pylist()
    return sorted(rows, key=lambda r: (r["source_uri"], r["task"], r["segment_index"] or 0))


def _summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["task"] == SUMMARY_TASK]


def _check_summary(rows: list[dict[str, Any]]) -> None:
    """One summary row, of the video with several segments, spanning its captions, with the video's fields."""
    (summary,) = _summaries(rows)
    captions = [r for r in rows if r["task"] == "caption" and r["source_uri"] == summary["source_uri"]]
    assert summary["source_uri"].endswith(SEVERAL) and len(captions) == 2
    assert summary["segment_index"] is None and summary["question"] == SUMMARY_PROMPT
    assert (summary["segment_start_s"], summary["segment_end_s"]) == (
        captions[0]["segment_start_s"],
        captions[-1]["segment_end_s"],
    )
    for field in ("video_id", "source_size", "duration_s", "fps", "width", "height", "codec", "model_id"):
        assert summary[field] == captions[0][field], field
    assert summary["status"] == "ok" and summary["answer"] is not None and summary["visual_tokens_in"] == 0


@pytest.mark.slow  # about 40 s here (2 cores): four runs of the job
@pytest.mark.usefixtures("pipeline_ray")
def test_summaries_are_made_once_and_added_to_an_existing_output_without_reprocessing(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos = copy_clips(assets, tmp_path / "in")
    out = str(tmp_path / "out")
    plain = caption.main(_argv(videos, out, pipeline_model_dir))
    assert plain["processed"] == 3 and plain["summaries"] == {} and not _summaries(_rows(out))
    before = _rows(out)
    plan = caption.main(_argv(videos, out, pipeline_model_dir, "--summarize", "--dry-run"))
    assert plan["summaries"] == {"of_committed_videos": 1} and plan["to_process"] == 0
    assert "summaries: 1 of the videos already done" in format_plan(plan)

    added = caption.main(_argv(videos, out, pipeline_model_dir, "--summarize"))
    assert (added["processed"], added["skipped"], added["config_key"]) == (0, 3, plain["config_key"])
    assert {k: v for k, v in added["summaries"].items() if k != "wall_s"} == {
        "videos": 1,
        "committed": 1,
        "failed": 0,
        "rows": 1,
    }
    rows = _rows(out)
    _check_summary(rows)
    assert [r for r in rows if r["task"] != SUMMARY_TASK] == before  # the videos' rows untouched
    record = json.loads((tmp_path / "out" / "_runs" / f"{added['run_id']}.json").read_text())
    assert record["summaries"] == added["summaries"]
    assert "summary  1 of 1 videos summarized" in format_summary(added)
    page = (tmp_path / "out" / "_runs" / f"{added['run_id']}.html").read_text()
    assert 'id="figure-summaries">1<' in page and "of 1 videos summarized" in page
    plain_page = (tmp_path / "out" / "_runs" / f"{plain['run_id']}.html").read_text()
    assert "figure-summaries" not in plain_page
    ledger = Ledger(
        *config_from_args(
            parse_run_args(caption.build_parser(), _argv(videos, out, pipeline_model_dir))
        ).output.filesystem()
    )
    kinds = sorted(str(e.kind) for e in ledger.entries(ledger.committed()).values())
    assert kinds == ["None", "None", "None", SUMMARY_TASK]

    again = caption.main(_argv(videos, out, pipeline_model_dir, "--summarize"))
    assert (again["processed"], again["summaries"]["videos"], again["summaries"]["committed"]) == (0, 0, 0)
    assert _rows(out) == rows
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 4  # three videos and one summary

    # A fresh output with --summarize from the start: the same rows, made in one run.
    fresh = str(tmp_path / "fresh")
    one_run = caption.main(_argv(videos, fresh, pipeline_model_dir, "--summarize"))
    assert (one_run["processed"], one_run["summaries"]["committed"]) == (3, 1)
    assert _rows(fresh) == rows


@pytest.mark.slow  # about 15 s here (2 cores): a run into S3
@pytest.mark.usefixtures("pipeline_ray")
def test_a_run_commits_its_summaries_to_s3_once(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path, s3_server: str
) -> None:
    videos = copy_clips(assets, tmp_path / "in")
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir("summary-index")
    out = "s3://summary-index/captions"
    ns = parse_run_args(
        caption.build_parser(), _argv(videos, out, pipeline_model_dir, "--summarize", "--s3-endpoint-url", s3_server)
    )
    # The credentials go in as the API's s3_options: the session's Ray workers started before the moto fixture
    # put them in the environment.
    config = config_from_args(ns, s3_options={"key": S3_KEY, "secret": S3_SECRET})
    summary = run_pipeline(config)
    assert (summary.processed, summary.summaries["committed"], summary.summaries["failed"]) == (3, 1, 0)
    rows = _rows(out, s3_endpoint_url=s3_server)
    _check_summary(rows)
    assert len([p for p in fs.find("summary-index/captions") if p.endswith(".parquet")]) == 4
    again = run_pipeline(config.replace(run_id=config.run_id + "-again"))
    assert (again.processed, again.summaries["videos"]) == (0, 0)
    assert _rows(out, s3_endpoint_url=s3_server) == rows
