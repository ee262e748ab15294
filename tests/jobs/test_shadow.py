"""The shadow dense sample through the jobs (local Ray; a local output and moto S3): agreement 1 when the main
preset is dense, below 1 at an aggressive one, the same sample on a rerun, and results that are the same rows
with or without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import s3fs

from jobs import caption
from jobs.common import config_from_args, parse_run_args
from pipeline.commit.ledger import Ledger
from pipeline.observability.quality import (
    QualityTally,
    mean_interval,
    normalise_answer,
    shadow_sampled,
    token_f1,
    wilson_interval,
)
from pipeline.query.results import open_quality, open_results
from pipeline.run import run_pipeline
from tests.pipeline.crash_jobs import CLIPS, copy_clips

FAST = ["--frames", "2", "--max-new-tokens", "8", "--segment-seconds", "5", "--question", "what happens?"]
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials (tests/conftest.py)
TIMES = ("run_id", "created_at", "latency_ms")  # what differs between two runs of the same rows


def _argv(videos: Path, out: str, model: Path, *extra: str) -> list[str]:
    return ["--input", str(videos), "--output", out, "--model", str(model), *FAST, *extra]


def _results(out: str, **s3: Any) -> list[dict[str, Any]]:
    rows = open_results(out, **s3).to_table().drop_columns(list(TIMES)).to_pylist()
    return sorted(rows, key=lambda r: (r["source_uri"], r["segment_index"], r["task"]))


def _quality(out: str, **s3: Any) -> list[dict[str, Any]]:
    rows = open_quality(out, **s3).to_table().to_pylist()
    return sorted(rows, key=lambda r: (r["source_uri"], r["segment_index"], r["task"]))


def _expected_agreement(quality: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The run record's ``quality`` computed again from the quality rows' answers."""
    found = {}
    f1 = [token_f1(r["sparse_answer"], r["dense_answer"]) for r in quality if r["task"] == "caption"]
    if f1:
        low, high = mean_interval(sum(f1), sum(v * v for v in f1), len(f1))
        found["caption"] = {"samples": len(f1), "agreement": round(sum(f1) / len(f1), 4)}
        found["caption"].update(ci_low=round(low, 4), ci_high=round(high, 4))
    exact = [normalise_answer(r["sparse_answer"]) == normalise_answer(r["dense_answer"]) for r in quality]
    exact = [e for e, r in zip(exact, quality, strict=True) if r["task"] == "qa"]
    if exact:
        low, high = wilson_interval(sum(exact), len(exact))
        found["qa"] = {"samples": len(exact), "agreement": round(sum(exact) / len(exact), 4)}
        found["qa"].update(ci_low=round(low, 4), ci_high=round(high, 4))
    return found


@pytest.mark.slow  # about 25 s here (2 cores): four runs of the job
@pytest.mark.usefixtures("pipeline_ray")
def test_the_sample_agrees_fully_at_dense_less_when_pruned_and_changes_no_result(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos = copy_clips(assets, tmp_path / "in")
    dense_out = str(tmp_path / "dense")
    dense = caption.main(_argv(videos, dense_out, pipeline_model_dir, "--preset", "dense", "--shadow-fraction", "1"))
    assert dense["quality"] == {
        "caption": {"samples": 4, "agreement": 1.0, "ci_low": round(wilson_interval(4, 4)[0], 4), "ci_high": 1.0},
        "qa": {"samples": 4, "agreement": 1.0, "ci_low": round(wilson_interval(4, 4)[0], 4), "ci_high": 1.0},
    }
    quality = _quality(dense_out)
    assert [(r["segment_index"], r["task"]) for r in quality] == [
        (r["segment_index"], r["task"]) for r in _results(dense_out)
    ]  # every segment sampled at 1, each row once
    assert dense["shadow"]["prompts"] == 8 and dense["shadow"]["answers_share"] == 1.0
    assert 0 < dense["shadow"]["model_time_share"] < 1 and dense["shadow"]["dense_s"] > 0

    pruned_out = str(tmp_path / "pruned")
    argv = _argv(videos, pruned_out, pipeline_model_dir, "--preset", "video-onestep-5", "--shadow-fraction", "1")
    pruned = caption.main(argv)
    assert pruned["quality"] == _expected_agreement(_quality(pruned_out))  # the record, from the rows again
    assert min(pruned["quality"][task]["agreement"] for task in ("caption", "qa")) < 1.0
    record = json.loads((tmp_path / "pruned" / "_runs" / f"{pruned['run_id']}.json").read_text())
    assert record["quality"] == pruned["quality"] and record["shadow"] == pruned["shadow"]
    page = (tmp_path / "pruned" / "_runs" / f"{pruned['run_id']}.html").read_text()
    assert 'id="quality-qa"' in page and 'id="quality-cost"' in page

    # The same preset without the sample: the same result rows, no quality file, nothing in the record.
    off_out = str(tmp_path / "off")
    off = caption.main(
        _argv(videos, off_out, pipeline_model_dir, "--preset", "video-onestep-5", "--shadow-fraction", "0")
    )
    assert (off["quality"], off["shadow"]) == ({}, {})
    assert off["config_key"] == pruned["config_key"]
    assert _results(off_out) == _results(pruned_out)
    assert not (tmp_path / "off" / "_quality").exists() and _quality(off_out) == []
    off_page = (tmp_path / "off" / "_runs" / f"{off['run_id']}.html").read_text()
    assert "quality-" not in off_page

    # A rerun into the output skips its videos and samples nothing again; into a fresh one, the same segments.
    again = caption.main(argv)
    assert (again["processed"], again["quality"]) == (0, {}) and _quality(pruned_out) == _quality(pruned_out)
    half = [_argv(videos, str(tmp_path / name), pipeline_model_dir, "--shadow-fraction", "0.5") for name in "ab"]
    first, second = caption.main(half[0]), caption.main(half[1])
    picked = [{(r["source_uri"], r["segment_index"], r["task"]) for r in _quality(str(tmp_path / n))} for n in "ab"]
    # The sample is the hash of each segment's ledger key and index, whatever the output (the keys hold the
    # input paths, which differ between test runs, so how many are sampled is not fixed: compute it).
    ledger = Ledger(*config_from_args(parse_run_args(caption.build_parser(), half[0])).output.filesystem())
    key_of = {key.rsplit("-", 1)[0]: key for key in ledger.committed()}  # "<video_id>-<16 hex>"
    expected = {
        (r["source_uri"], r["segment_index"], r["task"])
        for r in _results(str(tmp_path / "a"))
        if shadow_sampled(key_of[r["video_id"]], r["segment_index"], 0.5)
    }
    assert picked[0] == picked[1] == expected
    assert first["quality"] == second["quality"]


@pytest.mark.slow  # about 8 s here (2 cores): a run into S3
@pytest.mark.usefixtures("pipeline_ray")
def test_a_run_commits_the_sample_to_s3_once(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path, s3_server: str
) -> None:
    videos = copy_clips(assets, tmp_path / "in")
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir("shadow-index")
    out = "s3://shadow-index/captions"
    extra = ("--preset", "video-onestep-5", "--shadow-fraction", "1", "--s3-endpoint-url", s3_server)
    ns = parse_run_args(caption.build_parser(), _argv(videos, out, pipeline_model_dir, *extra))
    # The caption job's flags make the config; the credentials go in as the API's s3_options, since the session's
    # Ray workers started before the moto fixture put them in the environment.
    config = config_from_args(ns, s3_options={"key": S3_KEY, "secret": S3_SECRET})
    summary = run_pipeline(config)
    s3 = {"s3_endpoint_url": s3_server}
    quality = _quality(out, **s3)
    assert summary.quality == _expected_agreement(quality) and len(quality) == 8
    assert [(r["segment_index"], r["task"]) for r in quality] == [
        (r["segment_index"], r["task"]) for r in _results(out, **s3)
    ]
    ledger = Ledger(*config.output.filesystem())
    entries = ledger.entries(ledger.committed()).values()
    assert QualityTally.total(e.quality for e in entries).prompts == len(quality)
    files = {i.path for i in ledger.files.list_files(ledger.files.path("_quality"), recursive=True)}
    assert files == {ledger.files.path(e.quality_file) for e in entries if e.quality_file}  # one per video
    assert len(files) == len(CLIPS) and not [
        p for p in fs.find("shadow-index/captions") if p.endswith(".parquet") and "_quality" in p
    ]
