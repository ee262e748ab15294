"""The result-row schema, declared up front and versioned. No Ray here.

One row per video x segment x task (docs/pipeline.md, "Output and exactly-once"), and with ``--summarize`` one
``summary`` row per video of several segments (no ``segment_index``; pipeline/stages/summary.py). Declaring the
Arrow schema before any data exists means a batch whose error columns happen to be all null still writes the
same Parquet schema (the failure mode of Ray PR #60572). Bump `SCHEMA_VERSION` on any change to the columns,
their types or the task vocabulary, and only ever add.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = "4"  # 2: model_revision; 3: kept_visual_tokens; 4: the task "summary"
# What config keys hash: the last version that changed the rows a video's own key commits. Version 4 added a
# task that only a summary's key holds (pipeline/stages/summary.py), so the keys made under 3 name the same rows.
KEYED_SCHEMA_VERSION = "3"
SUMMARY_TASK = "summary"  # one row about a whole video, under its own ledger key (pipeline/stages/summary.py)
TASKS = ("caption", "qa", SUMMARY_TASK)
STATUSES = ("ok", "error")

_FIELDS: list[tuple[str, pa.DataType, bool]] = [  # (name, type, nullable)
    ("video_id", pa.string(), False),
    ("source_uri", pa.string(), False),
    ("source_size", pa.int64(), True),
    ("source_etag", pa.string(), True),
    ("duration_s", pa.float64(), True),
    ("fps", pa.float64(), True),
    ("width", pa.int64(), True),
    ("height", pa.int64(), True),
    ("codec", pa.string(), True),
    ("segment_index", pa.int64(), True),  # null on rows about the whole video (e.g. it failed to open)
    ("segment_start_s", pa.float64(), True),
    ("segment_end_s", pa.float64(), True),
    ("frame_timestamps_s", pa.list_(pa.float64()), True),
    ("task", pa.string(), False),  # "caption" | "qa" | "summary"
    ("question", pa.string(), True),
    ("answer", pa.string(), True),
    ("model_id", pa.string(), True),
    ("sparse_preset", pa.string(), True),
    ("sparse_config_json", pa.string(), True),
    ("visual_tokens_in", pa.int64(), True),
    ("equivalent_tokens", pa.float64(), True),
    ("prefill_flops", pa.float64(), True),
    ("dense_prefill_flops", pa.float64(), True),
    ("latency_ms", pa.float64(), True),
    ("status", pa.string(), False),  # "ok" | "error"
    ("error_class", pa.string(), True),
    ("error_message", pa.string(), True),
    ("run_id", pa.string(), False),
    ("pipeline_version", pa.string(), False),
    ("created_at", pa.timestamp("us", tz="UTC"), False),
    # what model_id named when the rows were made: a hub commit hash or sha256:... of a local checkpoint
    ("model_revision", pa.string(), True),
    # original visual-token indices (per frame a CLS token, then the patches) the model kept at its first
    # pruning layer, or that survived the reduction before the LLM when it prunes nowhere; null when it kept
    # every token (dense) and on error rows. The run report draws them (pipeline/observability/report_data.py).
    ("kept_visual_tokens", pa.list_(pa.int64()), True),
]

# The rows between the stages (no Ray here either: both sides import these names from this one module).
# A work item and a segment row carry the video's identity and, once it is open, its metadata:
VIDEO_FIELDS = ("video_id", "source_uri", "source_size", "source_etag")
INFO_FIELDS = ("duration_s", "fps", "width", "height", "codec")
SOURCE_MTIME = "source_mtime"  # a work item's listed modification time: pins a local file's version (never written)
# Columns the model stages append to result rows for the writer; they are never written to Parquet.
LEDGER_KEY = "ledger_key"  # str: ledger_key() of the row's video (pipeline/commit/ledger.py)
LAST_SEGMENT = "last_segment"  # bool: no segment of this video follows this one
SEGMENT_ROWS = "segment_rows"  # int: rows the model stage produced for this segment (a completeness check)
INTERNAL_COLUMNS = (LEDGER_KEY, LAST_SEGMENT, SEGMENT_ROWS)

RESULT_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, type_, nullable=nullable) for name, type_, nullable in _FIELDS],
    metadata={"result_schema_version": SCHEMA_VERSION},
)
COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)


class SchemaError(ValueError):
    """A result row does not match `RESULT_SCHEMA`."""


def empty_row(**fields: Any) -> dict[str, Any]:
    """A complete row: every column None except `status="ok"` and `created_at=now (UTC)`, then `fields`.

    Args:
        **fields: Column values; unknown names raise `SchemaError` (with the closest column names).

    Returns:
        A dict with exactly the columns of `RESULT_SCHEMA`, in order.
    """
    _check_names(fields)
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row["status"] = "ok"
    row["created_at"] = dt.datetime.now(dt.UTC)
    row.update(fields)
    return row


def error_row(error: BaseException, **fields: Any) -> dict[str, Any]:
    """A complete row recording a failure: status "error", the exception's class name and message."""
    return empty_row(status="error", error_class=type(error).__name__, error_message=str(error), **fields)


def make_rows(common: Mapping[str, Any], per_row: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Complete rows from the fields shared by a video or segment plus each row's own fields.

    Args:
        common: Fields shared by every row (e.g. video_id, source_uri, run_id...).
        per_row: One mapping per row (e.g. task, question, answer); it wins over `common`.

    Returns:
        Rows as returned by `empty_row`.
    """
    return [empty_row(**{**common, **own}) for own in per_row]


def validate_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    """Check rows against `RESULT_SCHEMA` before they are written.

    Checks exact column names, Python types per Arrow type, non-null columns, the `task` and `status`
    vocabularies, that error rows name an `error_class`, and that `created_at` is timezone-aware.

    Args:
        rows: Row dicts (as built by `empty_row` / `make_rows`).

    Raises:
        SchemaError: naming the first bad row index, column, value and what was expected.
    """
    for number, row in enumerate(rows):
        _check_names(row, where=f"row {number}")
        missing = [name for name in COLUMNS if name not in row]
        if missing:
            raise SchemaError(f"row {number}: missing columns {missing}; build rows with empty_row()")
        for field in RESULT_SCHEMA:
            value = row[field.name]
            if value is None:
                if not field.nullable:
                    raise SchemaError(f"row {number}: column {field.name!r} must not be null")
                continue
            expected = _type_problem(value, field.type)
            if expected:
                raise SchemaError(
                    f"row {number}: column {field.name!r} = {value!r} ({type(value).__name__}); expected {expected}"
                )
        if row["task"] not in TASKS:
            raise SchemaError(f"row {number}: task {row['task']!r} is not one of {TASKS}")
        if row["status"] not in STATUSES:
            raise SchemaError(f"row {number}: status {row['status']!r} is not one of {STATUSES}")
        if row["status"] == "error" and not row["error_class"]:
            raise SchemaError(f"row {number}: status 'error' needs error_class (use error_row())")


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validate rows and build an Arrow table with exactly `RESULT_SCHEMA` (also when `rows` is empty)."""
    validate_rows(rows)
    return pa.Table.from_pylist([dict(row) for row in rows], schema=RESULT_SCHEMA)


def validate_table(table: pa.Table) -> None:
    """Check that an Arrow table (e.g. a Ray Data batch) has exactly the result schema's columns and types."""
    if table.schema.equals(RESULT_SCHEMA, check_metadata=False):
        return
    if table.column_names != list(COLUMNS):
        extra = sorted(set(table.column_names) - set(COLUMNS))
        missing = [name for name in COLUMNS if name not in table.column_names]
        raise SchemaError(f"table columns differ: missing {missing}, unexpected {extra} (or out of order)")
    for field in RESULT_SCHEMA:
        found = table.schema.field(field.name)
        if found.type != field.type or found.nullable != field.nullable:
            raise SchemaError(
                f"column {field.name!r} is {found.type} (nullable={found.nullable}), "
                f"expected {field.type} (nullable={field.nullable})"
            )


def _check_names(fields: Iterable[str], where: str = "") -> None:
    for name in fields:
        if name not in RESULT_SCHEMA.names:
            close = difflib.get_close_matches(name, COLUMNS, n=3)
            hint = f"; did you mean {close}?" if close else f"; columns are {list(COLUMNS)}"
            raise SchemaError(f"{where + ': ' if where else ''}unknown column {name!r}{hint}")


def _type_problem(value: Any, type_: pa.DataType) -> str | None:
    """None if `value` fits `type_`, else a description of what would."""
    if pa.types.is_string(type_):
        return None if isinstance(value, str) else "a str"
    if pa.types.is_int64(type_):
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
        return None if ok else "an int"
    if pa.types.is_float64(type_):
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        return None if ok else "a float"
    if pa.types.is_list(type_) and pa.types.is_int64(type_.value_type):
        ok = isinstance(value, list | tuple | np.ndarray) and all(_type_problem(v, pa.int64()) is None for v in value)
        return None if ok else "a list of ints"
    if pa.types.is_list(type_):
        ok = isinstance(value, list | tuple | np.ndarray) and all(
            _type_problem(v, pa.float64()) is None and math.isfinite(v) for v in value
        )
        return None if ok else "a list of finite floats"
    if pa.types.is_timestamp(type_):
        ok = isinstance(value, dt.datetime) and value.utcoffset() is not None
        return None if ok else "a timezone-aware datetime (e.g. datetime.now(datetime.UTC))"
    raise AssertionError(f"no check for Arrow type {type_}")  # every type in _FIELDS is handled above
