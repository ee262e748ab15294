"""Segmenting by shots through the caption job (local Ray; a local input and one on moto S3): the rows' segment
boundaries are the video's known cuts, the mode is in the config key, and a rerun skips the video."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import s3fs

from jobs import caption
from jobs.common import config_from_args, parse_run_args
from pipeline.query.results import open_results
from pipeline.run import run_pipeline
from pipeline.stages.shots import ShotSegmenting
from tests.pipeline.media import encode, shot_frames

FPS = 15
CUTS = (50, 107)  # frames of a 10 s clip at 15 fps: 3.33 s and 7.13 s, between the detector's sampling ticks
TICK = 1 / ShotSegmenting().sample_fps  # a detected cut lies within one sampling interval after the true one
FAST = ["--frames", "2", "--max-new-tokens", "4", "--shadow-fraction", "0", "--segment-by", "shots"]
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials (tests/conftest.py)


def _cut_video(folder: Path) -> Path:
    folder.mkdir()
    encode(folder / "cuts.mp4", shot_frames(list(CUTS), 150), fps=FPS)
    return folder


def _check_boundaries(rows: list[dict[str, Any]]) -> None:
    captions = sorted((r for r in rows if r["task"] == "caption"), key=lambda r: r["segment_index"])
    assert [r["segment_index"] for r in captions] == [0, 1, 2] and all(r["status"] == "ok" for r in captions)
    assert captions[0]["segment_start_s"] == 0 and captions[-1]["segment_end_s"] == pytest.approx(10, abs=0.1)
    for cut, (before, after) in zip(CUTS, itertools.pairwise(captions), strict=False):
        assert before["segment_end_s"] == after["segment_start_s"]
        assert cut / FPS <= after["segment_start_s"] <= cut / FPS + TICK
    for row in captions:  # each segment's frames are sampled inside it
        assert all(row["segment_start_s"] <= t < row["segment_end_s"] for t in row["frame_timestamps_s"])


@pytest.mark.slow  # about 15 s here (2 cores): two runs of the job
@pytest.mark.usefixtures("pipeline_ray")
def test_the_job_cuts_at_the_shots_and_keys_the_mode(pipeline_model_dir: Path, tmp_path: Path) -> None:
    videos = _cut_video(tmp_path / "in")
    out = str(tmp_path / "out")
    argv = ["--input", str(videos), "--output", out, "--model", str(pipeline_model_dir), *FAST]
    shots = caption.main(argv)
    assert shots["processed"] == 1
    _check_boundaries(open_results(out).to_table().to_pylist())
    assert caption.main(argv)["skipped"] == 1  # exactly once: the rerun does nothing
    fixed = config_from_args(parse_run_args(caption.build_parser(), [*argv[:-2], "--segment-seconds", "5"]))
    assert fixed.resolved().config_key() != shots["config_key"]  # the mode is keyed: fixed segments are other rows


@pytest.mark.slow  # about 10 s here (2 cores): a run from S3
@pytest.mark.usefixtures("pipeline_ray")
def test_a_video_on_s3_is_cut_at_its_shots(pipeline_model_dir: Path, tmp_path: Path, s3_server: str) -> None:
    local = _cut_video(tmp_path / "in")
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir("shot-videos")
    fs.put(str(local / "cuts.mp4"), "shot-videos/in/cuts.mp4")
    out = str(tmp_path / "out")
    argv = ["--input", "s3://shot-videos/in/", "--output", out, "--model", str(pipeline_model_dir), *FAST]
    ns = parse_run_args(caption.build_parser(), [*argv, "--s3-endpoint-url", s3_server])
    # The credentials go in as the API's s3_options: the session's Ray workers started before the moto fixture
    # put them in the environment.
    summary = run_pipeline(config_from_args(ns, s3_options={"key": S3_KEY, "secret": S3_SECRET}))
    assert (summary.processed, summary.failed) == (1, 0)
    _check_boundaries(open_results(out).to_table().to_pylist())
