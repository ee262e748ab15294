"""The decode and model row stages without Ray: real clips in, schema rows out, errors pass through."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import PIPELINE_VERSION, PipelineConfig
from pipeline.observability.quality import SHADOW_COLUMNS, shadow_sampled
from pipeline.stages.decode import decode_rows, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.schema import (
    COLUMNS,
    INTERNAL_COLUMNS,
    LAST_SEGMENT,
    LEDGER_KEY,
    RESULT_SCHEMA,
    SEGMENT_ROWS,
    validate_table,
)
from pipeline.stages.sources import list_sources
from sparsevlm.config import SparseConfig
from sparsevlm.engine import VideoQAEngine
from sparsevlm.patch import current_config
from sparsevlm.prompt_text import CAPTION_PROMPT

QUESTION = "What is happening?"
BROKEN_CLIP = "broken_truncated.mp4"  # made by the pipeline_videos fixture


@pytest.fixture(scope="module")
def config(pipeline_videos: Path, pipeline_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    return PipelineConfig(
        input_uri=str(pipeline_videos),
        output_uri=str(tmp_path_factory.mktemp("out")),
        model=str(pipeline_model_dir),
        questions=(QUESTION,),
        segment_seconds=5.0,
        frames_per_segment=2,
        max_new_tokens=4,
        sparse=SparseConfig.preset("video-25"),
        run_id="test-run",
    ).resolved()


@pytest.fixture(scope="module")
def predictor(config: PipelineConfig) -> Predictor:
    return Predictor(config.model_settings, config.answering)


def decoded(config: PipelineConfig, name: str) -> list[dict[str, Any]]:
    source = next(s for s in list_sources(config.input_uri) if s.uri.endswith(name))
    return list(decode_rows(source_row(source, config.config_key(), config.questions), config.decoding, frame_size=64))


def test_decode_rows_split_a_video_into_flagged_segments(config: PipelineConfig) -> None:
    rows = decoded(config, "decord_flipping_a_pancake.mkv")  # 10.38 s -> [0, 5) and [5, 10.38)
    assert [r["segment_index"] for r in rows] == [0, 1]
    assert [r[LAST_SEGMENT] for r in rows] == [False, True]
    for row in rows:
        assert row["error_class"] is None and row["questions"] == [QUESTION]
        assert row["frames_shape"] == [2, 64, 64, 3] and len(row["frames"]) == 2 * 64 * 64 * 3
        ts = row["frame_timestamps_s"]
        assert row["segment_start_s"] <= ts[0] < ts[1] < row["segment_end_s"]
    assert rows[1]["segment_end_s"] == pytest.approx(rows[0]["duration_s"]) and rows[0]["codec"] == "h264"


def test_decode_rows_turn_bad_files_into_one_error_row(config: PipelineConfig, tmp_path: Path) -> None:
    (broken,) = decoded(config, BROKEN_CLIP)
    assert broken["error_class"] == "CorruptMedia" and BROKEN_CLIP in broken["error_message"]
    assert broken["segment_index"] is None and broken[LAST_SEGMENT] and broken["frames"] == b""
    row = {
        **source_row(list_sources(config.input_uri)[0], config.config_key(), config.questions),
        "source_uri": str(tmp_path / "gone.mp4"),
    }
    (missing,) = decode_rows(row, config.decoding, frame_size=64)
    assert missing["error_class"] == "MissingMedia" and missing["duration_s"] is None


def test_predictor_makes_a_caption_and_an_answer_per_segment(config: PipelineConfig, predictor: Predictor) -> None:
    rows = decoded(config, "decord_flipping_a_pancake.mkv") + decoded(config, BROKEN_CLIP)
    out = predictor(pa.Table.from_pylist(rows))
    assert out.column_names == [*COLUMNS, *INTERNAL_COLUMNS, *(name for name, _ in SHADOW_COLUMNS)]
    assert out.column("shadow_answer").null_count == out.num_rows  # shadow_fraction 0: nothing sampled
    validate_table(out.select(list(COLUMNS)))
    results = out.to_pylist()
    assert [(r["segment_index"], r["task"], r["question"]) for r in results] == [
        (0, "caption", CAPTION_PROMPT),
        (0, "qa", QUESTION),
        (1, "caption", CAPTION_PROMPT),
        (1, "qa", QUESTION),
        (None, "caption", None),
    ]
    assert [r[SEGMENT_ROWS] for r in results] == [2, 2, 2, 2, 1]
    assert [r[LAST_SEGMENT] for r in results] == [False, False, True, True, True]
    for result, source in zip(results[:4], [rows[0], rows[0], rows[1], rows[1]], strict=True):
        assert result["status"] == "ok" and isinstance(result["answer"], str)
        assert result["frame_timestamps_s"] == source["frame_timestamps_s"]
        assert result["visual_tokens_in"] == 2 * 65 and 0 < result["equivalent_tokens"] < 2 * 65
        assert 0 < result["prefill_flops"] < result["dense_prefill_flops"] and result["latency_ms"] > 0
        assert result["model_id"] == config.model and result["sparse_preset"] == "video-25"
        assert result["sparse_config_json"] == config.sparse.to_json()
        assert (result["run_id"], result["pipeline_version"]) == ("test-run", PIPELINE_VERSION)
        assert result[LEDGER_KEY] == source[LEDGER_KEY] and result["video_id"] == source["video_id"]
        kept = result["kept_visual_tokens"]  # the first pruning layer's, a strict subset of the 2 x (1 + 8 x 8)
        assert kept == sorted(set(kept)) and 0 < len(kept) < 2 * 65 and kept[0] >= 0 and kept[-1] < 2 * 65
    error = results[4]
    assert (error["status"], error["error_class"], error["answer"]) == ("error", "CorruptMedia", None)
    assert error["source_uri"].endswith(BROKEN_CLIP) and error["visual_tokens_in"] is None
    assert error["kept_visual_tokens"] is None


def test_predictor_answers_equal_the_engine_row_by_row(config: PipelineConfig, predictor: Predictor) -> None:
    rows = decoded(config, "mmaction2_test.avi")
    out = predictor(pa.Table.from_pylist(rows)).to_pylist()
    frames = np.frombuffer(rows[0]["frames"], np.uint8).reshape(rows[0]["frames_shape"])
    engine = predictor.engine
    alone = [engine.answer([frames], [p], config.max_new_tokens)[0].text for p in (CAPTION_PROMPT, QUESTION)]
    assert [r["answer"] for r in out] == alone


def test_a_failing_generate_becomes_error_rows(config: PipelineConfig, predictor: Predictor) -> None:
    class Broken(VideoQAEngine):
        def answer(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("CUDA out of memory (simulated)")

    broken = Predictor(
        config.model_settings,
        config.answering,
        engine=Broken.from_model(predictor.engine.model, predictor.engine.tokenizer),
    )
    out = broken(pa.Table.from_pylist(decoded(config, "gradio_video_sample.webm"))).to_pylist()
    assert [(r["task"], r["status"], r["error_class"]) for r in out] == [
        ("caption", "error", "RuntimeError"),
        ("qa", "error", "RuntimeError"),
    ]
    assert out[0]["segment_index"] == 0 and "simulated" in out[0]["error_message"]


def test_empty_batch_gives_an_empty_table_with_the_schema(predictor: Predictor) -> None:
    empty = pa.Table.from_pylist([], schema=pa.schema([("error_class", pa.string())]))
    out = predictor(empty)
    assert out.num_rows == 0 and out.schema.names[: len(COLUMNS)] == RESULT_SCHEMA.names


# -- the shadow dense sample (pipeline/observability/quality.py) -------------------------------------------------------

COMPARED = ("answer", "task", "question", "segment_index", "status", "visual_tokens_in", "equivalent_tokens")


def all_clips(config: PipelineConfig) -> list[dict[str, Any]]:
    return [r for name in ("decord_flipping_a_pancake.mkv", "mmaction2_test.avi") for r in decoded(config, name)]


def without_times(table: pa.Table) -> list[dict[str, Any]]:
    """The result columns of the model stage's rows, without the wall-clock ones (created_at, latency_ms)."""
    return table.select(list(COLUMNS)).drop_columns(["created_at", "latency_ms"]).to_pylist()


@pytest.fixture
def engine_of(predictor: Predictor) -> Iterator[Callable[[str], VideoQAEngine]]:
    """Engines of other presets on the predictor's model (patched again to the module's preset afterwards)."""
    model, tokenizer = predictor.engine.model, predictor.engine.tokenizer
    yield lambda preset: VideoQAEngine.from_model(model, tokenizer, preset)
    VideoQAEngine.from_model(model, tokenizer, predictor.engine.sparse)


@pytest.mark.parametrize("preset", ["dense", "video-onestep-5"])
def test_the_sampled_prompts_are_answered_again_dense_and_the_results_do_not_change(
    config: PipelineConfig, engine_of: Callable[[str], VideoQAEngine], preset: str
) -> None:
    rows = all_clips(config)
    engine = engine_of(preset)
    plain_config = config.replace(sparse=engine.sparse)
    plain = Predictor(plain_config.model_settings, plain_config.answering, engine=engine)
    sampled_config = plain_config.replace(shadow_fraction=1.0)
    sampled = Predictor(sampled_config.model_settings, sampled_config.answering, engine=engine)
    with_sample, without = sampled(pa.Table.from_pylist(rows)), plain(pa.Table.from_pylist(rows))
    assert current_config(engine.model) == SparseConfig.preset(preset)  # the dense calls put it back
    assert without_times(with_sample) == without_times(without)  # the sample changes no result row
    out = with_sample.to_pylist()
    assert all(r["shadow_answer"] is not None and r["shadow_ms"] > 0 and r["model_ms"] > 0 for r in out)
    # independent: the engine asked directly under the dense preset, one prompt at a time
    frames = {r["segment_index"]: np.frombuffer(r["frames"], np.uint8).reshape(r["frames_shape"]) for r in rows[:1]}
    alone = [
        engine.answer([frames[0]], [p], config.max_new_tokens, sparse=SparseConfig.preset("dense"))[0].text
        for p in (CAPTION_PROMPT, QUESTION)
    ]
    assert [r["shadow_answer"] for r in out[:2]] == alone
    agree = [r["shadow_answer"] == r["answer"] for r in out]
    if preset == "dense":
        assert all(agree)
    else:
        assert not all(agree)  # 5 % of the tokens changes some answers of the bundled model (measured: 4 of 8)


def test_only_the_hashed_segments_are_sampled(config: PipelineConfig, predictor: Predictor) -> None:
    rows = all_clips(config)
    keys = [(r[LEDGER_KEY], r["segment_index"]) for r in rows]
    fraction = next(f / 10 for f in range(1, 10) if 0 < sum(shadow_sampled(k, i, f / 10) for k, i in keys) < len(keys))
    sampling = config.replace(shadow_fraction=fraction)
    out = Predictor(sampling.model_settings, sampling.answering, engine=predictor.engine)(pa.Table.from_pylist(rows))
    got = {(r[LEDGER_KEY], r["segment_index"]) for r in out.to_pylist() if r["shadow_answer"] is not None}
    assert got == {(k, i) for k, i in keys if shadow_sampled(k, i, fraction)}


def test_a_failing_dense_call_changes_no_result_row(config: PipelineConfig, predictor: Predictor) -> None:
    class DenseBroken(VideoQAEngine):
        def answer(self, *args: Any, sparse: SparseConfig | None = None, **kwargs: Any) -> Any:
            if sparse is not None:
                raise RuntimeError("CUDA out of memory (simulated, dense only)")
            return super().answer(*args, **kwargs)

    engine = DenseBroken.from_model(predictor.engine.model, predictor.engine.tokenizer, config.sparse)
    rows = pa.Table.from_pylist(decoded(config, "mmaction2_test.avi"))
    sampling = config.replace(shadow_fraction=1.0)
    out = Predictor(sampling.model_settings, sampling.answering, engine=engine)(rows)
    assert without_times(out) == without_times(predictor(rows))
    assert out.column("shadow_answer").null_count == out.num_rows
    assert out.column("shadow_error").to_pylist() == ["RuntimeError"] * out.num_rows
