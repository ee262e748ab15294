"""The ledger's commit protocol on a local folder and on S3 (moto): exactly-once rows under reruns."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import s3fs

from pipeline.ledger import LAST_SEGMENT, LEDGER_KEY, SEGMENT_ROWS, Ledger, LedgerError, ledger_key
from pipeline.schema import RESULT_SCHEMA, make_rows

CONFIG_KEY = "0123456789abcdef"
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials (tests/conftest.py)


def segment(video: str, index: int | None, last: bool, tasks: int = 2, error: bool = False) -> pa.Table:
    """Rows of one segment as the model stage emits them (result columns + internal columns)."""
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
    return table.append_column(SEGMENT_ROWS, pa.array([n] * n, pa.int64()))


@pytest.fixture(params=["local", "s3"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "local":
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


def test_a_video_commits_when_all_its_segments_are_staged(ledger: Ledger) -> None:
    key = ledger_key(CONFIG_KEY, "v1", ["q"])
    assert ledger.write_rows(segment("v1", 2, last=True), "r1") == []  # out of order, across calls
    assert ledger.write_rows(segment("v1", 0, last=False), "r1") == []
    assert ledger.committed() == {} and ledger.pending([key]) == [key]
    (entry,) = ledger.write_rows(pa.concat_tables([segment("v1", 1, last=False), segment("v2", 0, True)]), "r1")[:1]
    assert (entry.key, entry.rows, entry.segments, entry.status) == (key, 6, 3, "ok")
    assert set(ledger.committed()) == {key, ledger_key(CONFIG_KEY, "v2", ["q"])}
    assert ledger.pending([key]) == []
    part = pads.dataset(ledger.part_files()[0], format="parquet", filesystem=ledger.fs).to_table()
    assert part.column("segment_index").to_pylist() == [0, 0, 1, 1, 2, 2]  # sorted by segment
    assert ledger.fs.get_file_info(f"{ledger.base}/_staging/{key}").type == pafs.FileType.NotFound
    assert len(read_all(ledger)) == 8


def test_reruns_and_interrupted_runs_leave_every_row_once(ledger: Ledger) -> None:
    ledger.write_rows(segment("v1", 0, last=False), "r1")  # run 1 stops here: v1 half staged
    ledger.write_rows(pa.concat_tables([segment("v2", 0, False), segment("v2", 1, True)]), "r1")
    assert [v for v, _, _ in read_all(ledger)] == ["v2"] * 4  # readers never see the half video
    for _ in range(2):  # run 2 redoes v1 (its keys overwrite), run 3 repeats everything
        ledger.write_rows(pa.concat_tables([segment("v1", 0, False), segment("v1", 1, True)]), "r2")
        ledger.write_rows(pa.concat_tables([segment("v2", 0, False), segment("v2", 1, True)]), "r2")
    rows = read_all(ledger)
    assert len(rows) == len(set(rows)) == 8
    assert len(ledger.part_files()) == 2


def test_failed_videos_commit_as_errors_and_retry_on_request(ledger: Ledger) -> None:
    key = ledger_key(CONFIG_KEY, "bad", ["q"])
    (entry,) = ledger.write_rows(segment("bad", None, last=True, error=True), "r1")
    assert (entry.status, entry.error_classes, entry.segments) == ("error", ["CorruptMedia"], 0)
    assert ledger.pending([key]) == [] and ledger.pending([key], retry_errors=True) == [key]
    (retried,) = ledger.write_rows(segment("bad", 0, last=True), "r2")  # fixed: now it decodes
    assert retried.status == "ok" and ledger.committed() == {key: "ok"}  # the error marker is gone
    assert ledger.entry(key) == retried and len(read_all(ledger)) == 2


def test_a_partial_video_records_its_failing_segment(ledger: Ledger) -> None:
    rows = pa.concat_tables([segment("v", 0, last=False), segment("v", 1, last=True, error=True)])
    (entry,) = ledger.write_rows(rows, "r1")
    assert (entry.status, entry.rows, entry.segments) == ("partial", 3, 2)


def test_rows_of_one_segment_split_across_calls_are_refused(tmp_path: Path) -> None:
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path))
    with pytest.raises(LedgerError, match="segment 0: got 1 rows, the model stage made"):
        ledger.write_rows(segment("v", 0, last=True).slice(0, 1), "r1")
    with pytest.raises(LedgerError, match="lack columns"):
        ledger.write_rows(segment("v", 0, last=True).drop_columns([SEGMENT_ROWS]), "r1")


def test_keys_change_with_config_video_and_questions() -> None:
    base = ledger_key(CONFIG_KEY, "v", ["q"])
    assert base.startswith("v-") and base == ledger_key(CONFIG_KEY, "v", ["q"])
    others = {ledger_key("f" * 16, "v", ["q"]), ledger_key(CONFIG_KEY, "w", ["q"]), ledger_key(CONFIG_KEY, "v", [])}
    assert base not in others and len(others) == 3


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path))
    ledger.write_rows(segment("v", 0, last=True), "r1")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    key = ledger_key(CONFIG_KEY, "v", ["q"])
    assert names == [f"_ledger/{key}.ok.json", f"part-{key}.parquet"]
