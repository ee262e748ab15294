"""Ledgers on a local folder and on S3 (moto), and result rows as the model stage hands them to the writer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import s3fs

from pipeline.commit.ledger import Ledger, ledger_key
from pipeline.observability.quality import SHADOW_COLUMNS
from pipeline.stages.schema import LAST_SEGMENT, LEDGER_KEY, RESULT_SCHEMA, SEGMENT_ROWS, make_rows

CONFIG_KEY = "0123456789abcdef"
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials (tests/conftest.py)


def segment(
    video: str, index: int | None, last: bool, tasks: int = 2, error: bool = False, shadow: bool | None = None
) -> pa.Table:
    """Rows of one segment as the model stage emits them (result columns + internal columns). With ``shadow``
    given, the shadow sample's columns too: True puts the segment in the sample (every ok row gets the dense
    answer ``dense-<its answer>``), False leaves them null (not sampled)."""
    key = ledger_key(CONFIG_KEY, video, ["q"])
    common = {
        "video_id": video,
        "source_uri": f"/videos/{video}.mp4",
        "segment_index": index,
        "run_id": "r1",
        "pipeline_version": "test",
        "created_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    }
    own = [{"task": "caption" if t == 0 else "qa", "answer": f"{video}-{index}-{t}"} for t in range(tasks)]
    if error:
        own = [{"task": "caption", "status": "error", "error_class": "CorruptMedia", "error_message": "bad"}]
    table = pa.Table.from_pylist(make_rows(common, own), schema=RESULT_SCHEMA)
    n = table.num_rows
    table = table.append_column(LEDGER_KEY, pa.array([key] * n))
    table = table.append_column(LAST_SEGMENT, pa.array([last] * n))
    table = table.append_column(SEGMENT_ROWS, pa.array([n] * n, pa.int64()))
    if shadow is None:
        return table
    answers, statuses = table["answer"].to_pylist(), table["status"].to_pylist()
    dense = [f"dense-{a}" if shadow and s == "ok" else None for a, s in zip(answers, statuses, strict=True)]
    timed = [1.0 if d is not None else None for d in dense]
    columns = {"shadow_answer": dense, "shadow_error": [None] * n, "shadow_ms": timed, "model_ms": [2.0] * n}
    for name, type_ in SHADOW_COLUMNS:
        table = table.append_column(name, pa.array(columns[name], type_))
    return table


def make_ledger(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Ledger:
    """A ledger on a local folder or, for ``"s3"``, on a fresh bucket of the moto server."""
    if kind == "local":
        return Ledger(pafs.LocalFileSystem(), str(tmp_path / "out"))
    endpoint = request.getfixturevalue("s3_server")
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=endpoint)
    bucket = f"ledger-{tmp_path.name.replace('_', '-').lower()[-40:]}"
    fs.mkdir(bucket)
    return Ledger(pafs.PyFileSystem(pafs.FSSpecHandler(fs)), f"{bucket}/results")


def read_all(ledger: Ledger) -> list[tuple[str, int | None, str]]:
    """Every row a dataset reader of the output prefix sees, as (video_id, segment_index, answer)."""
    table = pads.dataset(ledger.base, format="parquet", filesystem=ledger.fs).to_table()
    assert table.schema.equals(RESULT_SCHEMA, check_metadata=False)
    rows = zip(*(table.column(c).to_pylist() for c in ("video_id", "segment_index", "answer")), strict=True)
    return sorted(rows, key=str)


def read_quality(ledger: Ledger) -> list[tuple[str, int, str, str]]:
    """Every quality row the ledger names, as (video_id, segment_index, task, dense_answer)."""
    from pipeline.query.results import quality_dataset

    table = quality_dataset(ledger.fs, ledger.base).to_table()
    rows = zip(
        *(table.column(c).to_pylist() for c in ("video_id", "segment_index", "task", "dense_answer")), strict=True
    )
    return sorted(rows, key=str)


def quality_files(ledger: Ledger) -> set[str]:
    """Every file under the prefix's _quality/ folder, relative to the prefix."""
    found = ledger.files.list_files(ledger.files.path("_quality"), recursive=True)
    return {i.path.removeprefix(ledger.base + "/") for i in found}
