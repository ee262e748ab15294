"""The result-row schema: exact columns, defaults, validation messages, Parquet round trip."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages.schema import (
    COLUMNS,
    KEYED_SCHEMA_VERSION,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    TASKS,
    SchemaError,
    empty_row,
    error_row,
    make_rows,
    rows_to_table,
    validate_rows,
    validate_table,
)
from pipeline.stages.video import CorruptMedia

# DESIGN.md, "Result rows", in order.
DESIGN_COLUMNS = """video_id, source_uri, source_size, source_etag, duration_s, fps, width, height, codec,
segment_index, segment_start_s, segment_end_s, frame_timestamps_s, task, question, answer, model_id,
sparse_preset, sparse_config_json, visual_tokens_in, equivalent_tokens, prefill_flops, dense_prefill_flops,
latency_ms, status, error_class, error_message, run_id, pipeline_version, created_at"""
ADDED_SINCE = {
    "2": "model_revision",
    "3": "kept_visual_tokens",
}  # schema version -> the column it appended after the design list
TASKS_SINCE = {"4": "summary"}  # schema version -> the task it added to ("caption", "qa")

REQUIRED = {
    "video_id": "v1",
    "source_uri": "s3://b/v.mp4",
    "task": "caption",
    "run_id": "r1",
    "pipeline_version": "0.1.0",
}


def ok_row(**fields: Any) -> dict[str, Any]:
    values = {
        **REQUIRED,
        "source_size": 123,
        "duration_s": 36.3,
        "fps": 30.0,
        "width": 204,
        "height": 360,
        "codec": "h264",
        "segment_index": 0,
        "segment_start_s": 0.0,
        "segment_end_s": 10.0,
        "frame_timestamps_s": [0.6, 1.9],
        "answer": "a drummer plays",
        "visual_tokens_in": 2056,
        "equivalent_tokens": 512.5,
        "prefill_flops": 1.5e12,
        "dense_prefill_flops": 4.0e12,
        "latency_ms": 812.0,
    }
    return empty_row(**{**values, **fields})


def test_columns_are_exactly_the_design_list() -> None:
    assert list(COLUMNS) == [c.strip() for c in DESIGN_COLUMNS.split(",")] + list(ADDED_SINCE.values())
    assert max(*ADDED_SINCE, *TASKS_SINCE) == SCHEMA_VERSION  # each added column or task bumped the version
    assert ("caption", "qa", *TASKS_SINCE.values()) == TASKS
    assert max(ADDED_SINCE) == KEYED_SCHEMA_VERSION  # a new task keys no video's rows anew
    assert RESULT_SCHEMA.metadata == {b"result_schema_version": SCHEMA_VERSION.encode()}
    types = {f.name: f.type for f in RESULT_SCHEMA}
    assert types["frame_timestamps_s"] == pa.list_(pa.float64())
    assert types["kept_visual_tokens"] == pa.list_(pa.int64())
    assert types["created_at"] == pa.timestamp("us", tz="UTC")
    assert {types[c] for c in ("source_size", "width", "height", "segment_index", "visual_tokens_in")} == {pa.int64()}
    assert {types[c] for c in ("prefill_flops", "dense_prefill_flops", "equivalent_tokens")} == {pa.float64()}
    assert types["answer"] == types["error_message"] == pa.string()


def test_empty_row_fills_defaults_and_rejects_unknown_columns() -> None:
    row = empty_row(**REQUIRED)
    assert list(row) == list(COLUMNS)
    assert row["status"] == "ok" and row["created_at"].tzinfo is not None and row["answer"] is None
    with pytest.raises(SchemaError, match=r"unknown column 'frame_timestamps'; did you mean \['frame_timestamps_s'\]"):
        empty_row(frame_timestamps=[1.0])


def test_make_rows_and_error_rows() -> None:
    common = {**REQUIRED, "segment_index": 2}
    rows = make_rows(common, [{"task": "caption"}, {"task": "qa", "question": "Who?", "answer": "A man."}])
    assert [(r["task"], r["question"], r["segment_index"]) for r in rows] == [("caption", None, 2), ("qa", "Who?", 2)]
    failed = error_row(CorruptMedia("clip.mp4: empty file (0 bytes)"), **REQUIRED)
    assert (failed["status"], failed["error_class"], failed["error_message"]) == (
        "error",
        "CorruptMedia",
        "clip.mp4: empty file (0 bytes)",
    )
    validate_rows([*rows, failed])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source_size": "123"}, r"row 0: column 'source_size' = '123' \(str\); expected an int"),
        ({"width": True}, "column 'width' = True .* expected an int"),
        ({"fps": None, "prefill_flops": "1e12"}, "column 'prefill_flops'.*expected a float"),
        ({"frame_timestamps_s": [0.1, "x"]}, "column 'frame_timestamps_s'.*list of finite floats"),
        ({"frame_timestamps_s": [float("nan")]}, "list of finite floats"),
        ({"kept_visual_tokens": [1, 2.5]}, "column 'kept_visual_tokens'.*a list of ints"),
        ({"created_at": dt.datetime(2026, 1, 1)}, "timezone-aware datetime"),
        ({"task": "summarize"}, r"task 'summarize' is not one of \('caption', 'qa', 'summary'\)"),
        ({"status": "failed"}, "status 'failed' is not one of"),
        ({"status": "error"}, "status 'error' needs error_class"),
        ({"run_id": None}, "column 'run_id' must not be null"),
    ],
)
def test_validate_rows_names_the_bad_column(fields: dict[str, Any], message: str) -> None:
    row = ok_row()
    row.update(fields)
    with pytest.raises(SchemaError, match=message):
        validate_rows([row])


def test_validate_rows_requires_all_columns() -> None:
    row = ok_row()
    del row["latency_ms"]
    with pytest.raises(SchemaError, match=r"missing columns \['latency_ms'\]"):
        validate_rows([ok_row(), row])


def test_numpy_values_are_accepted() -> None:
    validate_rows([ok_row(width=np.int64(204), fps=np.float32(30.0), frame_timestamps_s=np.array([0.5, 1.5]))])


def test_parquet_round_trip_keeps_the_schema_even_for_all_null_error_columns(tmp_path: Path) -> None:
    table = rows_to_table([ok_row(), ok_row(task="qa", question="Why?")])
    assert table.column("error_class").null_count == 2
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet")
    assert back.schema.equals(RESULT_SCHEMA)
    assert back.schema.metadata[b"result_schema_version"] == SCHEMA_VERSION.encode()
    validate_table(back)
    assert back.column("frame_timestamps_s").to_pylist()[0] == [0.6, 1.9]
    assert rows_to_table([]).schema.equals(RESULT_SCHEMA)


def test_validate_table_names_the_difference() -> None:
    table = rows_to_table([ok_row()])
    with pytest.raises(SchemaError, match=r"missing \['latency_ms'\]"):
        validate_table(table.drop_columns(["latency_ms"]))
    retyped = table.set_column(COLUMNS.index("width"), "width", table.column("width").cast(pa.int32()))
    with pytest.raises(SchemaError, match="column 'width' is int32"):
        validate_table(retyped)
