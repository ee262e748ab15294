"""The stand-in accelerator: its cost model, its marked rows through the real Predictor, and a Ray run on it."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.harness.standin import STAND_IN, STAND_IN_ANSWER, StandInCost, StandInEngine
from pipeline.run import PipelineError, run_pipeline
from pipeline.stages.predictor import Predictor
from sparsevlm.engine_types import PromptError
from tests.pipeline.runs import make_config, read_rows

COST = StandInCost(ms_per_segment=40.0, ms_per_batch=10.0)


def test_the_cost_is_per_distinct_segment_and_spends_no_cpu() -> None:
    engine = StandInEngine(COST)
    first, second = (np.zeros((2, 8, 8, 3), np.uint8) for _ in range(2))
    prompts = ["caption", "q1", "caption", "q1"]
    frames = [first, first[:], second, second[:]]  # two segments, each asked twice through views of its buffer
    cpu, began = time.process_time(), time.perf_counter()
    answers = engine.answer(frames, prompts)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert COST.seconds(2) == pytest.approx(0.09)
    assert wall >= 0.09 and wall < 0.09 + 0.5  # two segments, not four prompts
    assert cpu < 0.5 * wall  # it sleeps: the CPUs stay with the decoders
    assert [a.text for a in answers] == [STAND_IN_ANSWER] * 4
    assert {a.latency_ms for a in answers} == {answers[0].latency_ms} and answers[0].latency_ms >= 90
    assert answers[0].stats.prefill_flops == 0 and answers[0].stats.visual_tokens_in == 0
    assert COST.segments_per_s(4) == pytest.approx(4 / 0.17)


def test_the_cost_model_is_checked() -> None:
    with pytest.raises(ValueError, match="ms_per_segment must be > 0"):
        StandInCost(ms_per_segment=0)
    with pytest.raises(ValueError, match="ms_per_batch must be >= 0"):
        StandInCost(ms_per_segment=1, ms_per_batch=-1)
    with pytest.raises(PromptError, match="placeholder"):
        StandInEngine(COST).check_prompt("what is <video>?", 8, 4)


def test_predictor_rows_are_marked_and_keyed_apart(pipeline_model_dir: Path, tmp_path: Path) -> None:
    real = make_config(str(tmp_path), str(tmp_path / "out"), pipeline_model_dir)
    stand_in = real.replace(stand_in=COST)
    assert (
        len({real.config_key(), stand_in.config_key(), stand_in.replace(stand_in=StandInCost(41.0)).config_key()}) == 3
    )
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    row = {
        "ledger_key": "k",
        "video_id": "v",
        "source_uri": "v.mp4",
        "source_size": 1,
        "source_etag": None,
        "questions": ["What is happening?"],
        "duration_s": 1.0,
        "fps": 2.0,
        "width": 64,
        "height": 64,
        "codec": "h264",
        "segment_index": 0,
        "segment_start_s": 0.0,
        "segment_end_s": 1.0,
        "frame_timestamps_s": [0.0, 0.5],
        "frames": frames.tobytes(),
        "frames_shape": [2, 64, 64, 3],
        "last_segment": True,
        "error_class": None,
        "error_message": None,
    }
    out = Predictor(stand_in.model_settings, stand_in.answering)(pa.Table.from_pylist([row])).to_pylist()
    assert [r["task"] for r in out] == ["caption", "qa"]
    for result in out:
        assert result["answer"] == STAND_IN_ANSWER and result["status"] == "ok"
        assert result["model_id"] == result["sparse_preset"] == STAND_IN
        assert json.loads(result["sparse_config_json"])[STAND_IN]["ms_per_segment"] == 40.0


@pytest.mark.slow  # 7 s here (2 cores): a Ray run
@pytest.mark.usefixtures("pipeline_ray")
def test_a_ray_run_on_stand_ins_commits_every_segment_once(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("decord_flipping_a_pancake.mkv", "gradio_video_sample.webm"):
        (videos / name).write_bytes((assets / name).read_bytes())
    config = make_config(str(videos), str(tmp_path / "out"), pipeline_model_dir, stand_in=COST, workers=2)
    summary = run_pipeline(config)
    rows = read_rows(config)
    assert summary.processed == 2 and summary.failed == 0
    keys = Counter((r["video_id"], r["segment_index"], r["task"]) for r in rows)
    assert set(keys.values()) == {1} and len(rows) == summary.rows > 2
    assert {r["answer"] for r in rows} == {STAND_IN_ANSWER}
    with pytest.raises(PipelineError, match="stand_in_accelerator"):
        run_pipeline(config.replace(output_uri=str(tmp_path / "out-9"), workers=9))
