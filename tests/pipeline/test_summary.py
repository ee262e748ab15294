"""The summary task's pieces without Ray: the text, the cut of long caption lists, the key, reading a part file,
and the Summarizer over a fake engine (levels of summaries, call sizes, failures), and over the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit.ledger import ledger_key
from pipeline.config import AnswerSettings, ModelSettings, PipelineConfig
from pipeline.stages.schema import (
    LAST_SEGMENT,
    LEDGER_KEY,
    RESULT_SCHEMA,
    SEGMENT_ROWS,
    SUMMARY_TASK,
    empty_row,
    validate_table,
)
from pipeline.stages.summary import (
    CLIPS,
    HEADER,
    Clip,
    Summarizer,
    SummaryTooLong,
    chunk_clips,
    read_clips,
    summary_key,
    summary_text,
)
from sparsevlm.engine_types import EngineAnswer
from sparsevlm.stats import SampleStats

INSTRUCTION = "Summarize the whole video in a few sentences."
VIDEO_ID = "ab" * 20


def clips(n: int, words: int = 3) -> list[Clip]:
    return [Clip(10.0 * i, 10.0 * (i + 1), " ".join([f"c{i}"] * words)) for i in range(n)]


def test_the_text_holds_every_caption_in_order_with_its_time_range() -> None:
    text = summary_text([Clip(0, 9.6, "A man  opens\na door."), Clip(9.6, 3725.0, "He leaves.")], INSTRUCTION)
    assert text.splitlines() == [HEADER, "[0:00-0:10] A man opens a door.", "[0:10-1:02:05] He leaves.", INSTRUCTION]


def test_captions_that_fit_stay_one_run_and_long_lists_are_cut_in_order() -> None:
    assert chunk_clips(clips(5), INSTRUCTION, lambda text: True) == [clips(5)]
    runs = chunk_clips(clips(9), INSTRUCTION, lambda text: text.count("\n[") <= 3)  # at most three lines a prompt
    assert [[c.text for c in run] for run in runs] == [[c.text for c in clips(9)[i : i + 3]] for i in (0, 3, 6)]
    assert [c for run in runs for c in run] == clips(9)


def test_a_list_where_no_two_captions_fit_together_is_refused_rather_than_looped() -> None:
    with pytest.raises(SummaryTooLong, match="lower --max-new-tokens"):
        chunk_clips(clips(4), INSTRUCTION, lambda text: text.count("\n[") <= 1)
    assert chunk_clips(clips(1), INSTRUCTION, lambda text: False) == [clips(1)]  # one caption: nothing to cut


def test_the_key_is_the_videos_own_form_and_changes_with_the_video_key_and_the_instruction() -> None:
    video = ledger_key("config", VIDEO_ID, ["q?"])
    key = summary_key(video, VIDEO_ID, INSTRUCTION)
    assert key.startswith(VIDEO_ID + "-") and key != video and len(key) == len(video)
    assert summary_key(video, VIDEO_ID, INSTRUCTION) == key
    assert summary_key(video, VIDEO_ID, "Say it in one word.") != key
    assert summary_key(ledger_key("other config", VIDEO_ID, ["q?"]), VIDEO_ID, INSTRUCTION) != key


class FakeEngine:
    """Answers ``sum(<prompt's first clip index>..)``-like text; a context of ``context`` words."""

    def __init__(self, context: int | None = None, fail: bool = False) -> None:
        self.context = context
        self.fail = fail
        self.calls: list[list[str]] = []

    def describe(self) -> dict[str, Any]:
        return {"model_id": "fake", "sparse_preset": "dense", "sparse_config_json": "{}"}

    def text_length(self, prompt: str) -> int:
        return len(prompt.split())

    def answer_text(self, prompts: list[str], max_new_tokens: int = 64, repeat_stop: int = 0) -> list[EngineAnswer]:
        self.calls.append(prompts)
        if self.fail:
            raise RuntimeError("out of memory")
        stats = SampleStats(0, [], 0.0, {}, {}, None, 10.0, 10.0)  # type: ignore[arg-type]
        # The answer names the lines it read, so the test can follow the levels.
        return [EngineAnswer(f"sum{p.count(chr(10) + '[')}", stats, 8.0) for p in prompts]


def config(tmp_path: Path, **changes: Any) -> PipelineConfig:
    fields: dict[str, Any] = {"max_new_tokens": 4, "batch_size": 2, **changes}
    return PipelineConfig(str(tmp_path / "in"), str(tmp_path / "out"), "bundled:tiny-synthetic", **fields).resolved()


def parts(config: PipelineConfig) -> tuple[ModelSettings, AnswerSettings]:
    """What the summary stage gets from a config."""
    return config.model_settings, config.answering


def work_row(n: int, key: str = "k", error: str | None = None) -> dict[str, Any]:
    source = {"video_id": VIDEO_ID, "source_uri": f"/v/{key}.mp4", "source_size": 10, "source_etag": None}
    info = {"duration_s": 10.0 * n, "fps": 25.0, "width": 64, "height": 48, "codec": "h264"}
    return {
        LEDGER_KEY: f"{VIDEO_ID}-{key * 16}"[:57],
        "file": f"part-{key}.parquet",
        **source,
        **info,
        CLIPS: json.dumps([list(c) for c in clips(n)]),
        "error": error,
    }


def run(summarizer: Summarizer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = summarizer(pa.Table.from_pylist(rows))
    assert out.column(LAST_SEGMENT).to_pylist() == [True] * len(rows)
    assert out.column(SEGMENT_ROWS).to_pylist() == [1] * len(rows)
    validate_table(out.select(RESULT_SCHEMA.names))
    return out.to_pylist()


def test_a_batch_of_videos_is_summarized_in_one_call_per_level(tmp_path: Path) -> None:
    engine = FakeEngine()
    rows = run(Summarizer(*parts(config(tmp_path)), engine), [work_row(2, "a"), work_row(3, "b")])
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 2
    assert [(r["task"], r["answer"], r["status"]) for r in rows] == [
        (SUMMARY_TASK, "sum2", "ok"),
        (SUMMARY_TASK, "sum3", "ok"),
    ]
    assert [(r["segment_index"], r["segment_start_s"], r["segment_end_s"]) for r in rows] == [
        (None, 0.0, 20.0),
        (None, 0.0, 30.0),
    ]
    assert rows[0]["question"] == INSTRUCTION and rows[0]["visual_tokens_in"] == 0
    assert rows[0]["latency_ms"] == pytest.approx(4.0) and rows[0]["prefill_flops"] == 10.0  # its share of the call
    assert rows[0]["model_id"] == "fake" and rows[0]["duration_s"] == 20.0


def test_a_long_video_is_summarized_in_levels_within_the_context(tmp_path: Path) -> None:
    # 12 lines of 4 words ("[0:00-0:10] c0 c0 c0"): a prompt of k lines has 18 + 4k words (the header's 10, the
    # instruction's 8) and the answer needs 4 more, so a context of 40 holds 4 lines: 12 -> 3 partial summaries -> 1.
    engine = FakeEngine(context=40)
    (result,) = run(Summarizer(*parts(config(tmp_path, batch_size=4)), engine), [work_row(12)])
    assert [len(call) for call in engine.calls] == [3, 1]
    assert all(engine.text_length(p) + 4 <= 40 for call in engine.calls for p in call)
    assert engine.calls[1][0].splitlines()[1:4] == ["[0:00-0:40] sum4", "[0:40-1:20] sum4", "[1:20-2:00] sum4"]
    assert (result["status"], result["answer"]) == ("ok", "sum3")
    assert result["latency_ms"] == pytest.approx(16.0)  # both calls held its prompts only: all of their time


def test_calls_hold_at_most_a_model_batch_of_prompts(tmp_path: Path) -> None:
    engine = FakeEngine()
    run(
        Summarizer(*parts(config(tmp_path, batch_size=2, questions=("q?",))), engine), [work_row(2, k) for k in "abcde"]
    )
    assert [len(call) for call in engine.calls] == [4, 1]  # batch_size x (1 + questions)


def test_failures_become_error_rows_of_their_videos_only(tmp_path: Path) -> None:
    rows = run(Summarizer(*parts(config(tmp_path)), FakeEngine(fail=True)), [work_row(2, "a")])
    assert (rows[0]["status"], rows[0]["error_class"], rows[0]["answer"]) == ("error", "RuntimeError", None)
    engine = FakeEngine(context=22)  # one line and the answer fit, never two
    rows = run(
        Summarizer(*parts(config(tmp_path)), engine), [work_row(3, "a"), work_row(2, "b", error="FileNotFoundError: x")]
    )
    assert [(r["status"], r["error_class"]) for r in rows] == [
        ("error", "SummaryTooLong"),
        ("error", "PartFileMissing"),
    ]
    assert engine.calls == [] and rows[1]["source_uri"] == "/v/b.mp4"


def test_read_clips_reads_the_captions_in_segment_order_and_a_missing_file_gives_an_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    common = {"video_id": VIDEO_ID, "source_uri": "/v/a.mp4", "source_size": 10, "duration_s": 20.0, "run_id": "r"}
    common |= {"pipeline_version": "t"}
    rows = [
        empty_row(**common, segment_index=i, segment_start_s=10.0 * i, segment_end_s=10.0 * i + 10, task=t, answer=a)
        for i, t, a in [(1, "caption", "second"), (0, "qa", "yes"), (0, "caption", "first")]
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), out / "part-a.parquet")
    item = {LEDGER_KEY: "k", "file": "part-a.parquet", "source_uri": "/v/a.mp4"}
    row = read_clips(item, config(tmp_path).output)
    assert json.loads(row[CLIPS]) == [[0.0, 10.0, "first"], [10.0, 20.0, "second"]]
    assert (row["video_id"], row["duration_s"], row["error"]) == (VIDEO_ID, 20.0, None)
    gone = read_clips({**item, "file": "part-b.parquet"}, config(tmp_path).output)
    assert gone[CLIPS] == "[]" and "part-b.parquet" in gone["error"]


@pytest.mark.slow  # about 5 s here: the tiny model's engine
def test_the_tiny_models_engine_answers_text_prompts_batched_as_one_by_one(tmp_path: Path) -> None:
    from sparsevlm.engine import VideoQAEngine
    from sparsevlm.tiny.loading import load_tiny

    model, tokenizer, _ = load_tiny()
    engine = VideoQAEngine.from_model(model, tokenizer, "video-xf-25")
    prompts = [summary_text(clips(3), INSTRUCTION), summary_text(clips(2, words=1), INSTRUCTION), "red?"]
    batched = engine.answer_text(prompts, 6)
    assert [a.text for a in batched] == [engine.answer_text([p], 6)[0].text for p in prompts]
    assert all(a.stats.visual_tokens_in == 0 and a.stats.prefill_flops > 0 for a in batched)
    assert engine.text_length(prompts[0]) > engine.text_length(prompts[1])
    (result,) = run(Summarizer(*parts(config(tmp_path)), engine), [work_row(3)])
    assert result["status"] == "ok" and result["model_id"] == engine.model_id
    with pytest.raises(Exception, match="placeholder"):
        engine.answer_text(["what is in <video>?"])
