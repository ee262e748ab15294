"""``python -m jobs.search`` end to end on outputs written through the ledger, on a local folder and on S3."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import search
from pipeline.commit.ledger import Ledger, ledger_key
from pipeline.stages.s3_keys import LiteralKeyS3FileSystem
from pipeline.stages.schema import LAST_SEGMENT, LEDGER_KEY, RESULT_SCHEMA, SEGMENT_ROWS, make_rows
from tests.jobs.imports import imported_packages
from tests.pipeline.ledgers import CONFIG_KEY, make_ledger

# video -> per segment: (caption, answer to "what colour?"); segments are 10 s long.
VIDEOS = {
    "a": [("a red circle moves left", "red"), ("a blue square stays still", "blue")],
    "b": [("a green triangle bounces on a red floor", "green")],
}


def _rows(video: str, index: int, caption: str, answer: str, last: bool) -> pa.Table:
    """One segment's rows as the model stage hands them to the ledger (result columns + internal columns)."""
    common = {
        "video_id": video,
        "source_uri": f"/videos/{video}.mp4",
        "segment_index": index,
        "segment_start_s": 10.0 * index,
        "segment_end_s": 10.0 * index + 10.0,
        "model_id": "bundled:tiny-synthetic",
        "sparse_preset": "video-25",
        "run_id": "r1",
        "pipeline_version": "test",
        "created_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    }
    own = [{"task": "caption", "answer": caption}, {"task": "qa", "question": "what colour?", "answer": answer}]
    table = pa.Table.from_pylist(make_rows(common, own), schema=RESULT_SCHEMA)
    n = table.num_rows
    table = table.append_column(LEDGER_KEY, pa.array([ledger_key(CONFIG_KEY, video, ["q"])] * n))
    table = table.append_column(LAST_SEGMENT, pa.array([last] * n))
    return table.append_column(SEGMENT_ROWS, pa.array([n] * n, pa.int64()))


def _write_output(ledger: Ledger) -> None:
    """Commit VIDEOS through the ledger, plus an error row and internal files that a search must not read."""
    for video, segments in VIDEOS.items():
        for index, (caption, answer) in enumerate(segments):
            ledger.write_rows(_rows(video, index, caption, answer, index == len(segments) - 1), "r1")
    error = {"video_id": "c", "source_uri": "/videos/c.mp4", "run_id": "r1", "pipeline_version": "test"}
    failed = {"task": "caption", "status": "error", "error_class": "CorruptMedia", "error_message": "blue square"}
    table = pa.Table.from_pylist(make_rows(error, [failed]), schema=RESULT_SCHEMA)
    key = ledger_key(CONFIG_KEY, "c", ["q"])
    table = table.append_column(LEDGER_KEY, pa.array([key])).append_column(LAST_SEGMENT, pa.array([True]))
    ledger.write_rows(table.append_column(SEGMENT_ROWS, pa.array([1], pa.int64())), "r1")
    # A Parquet file inside an internal folder (as a half-done staging of another tool would leave): not results.
    stray = pa.Table.from_pylist(make_rows(error, [{"task": "caption", "answer": "blue square blue square"}]))
    ledger.fs.create_dir(f"{ledger.base}/_staging/x")
    with ledger.fs.open_output_stream(f"{ledger.base}/_staging/x/part-stray.parquet") as sink:
        pq.write_table(stray, sink)


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[str]]:
    """A results output with VIDEOS committed; yields its URI and the flags that reach it."""
    ledger = make_ledger(request.param, tmp_path, request)
    _write_output(ledger)
    if request.param == "local":
        return ledger.base, []
    return f"s3://{ledger.base}", ["--s3-endpoint-url", request.getfixturevalue("s3_server")]


def _json_hits(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict]:
    search.main([*argv, "--format", "json"])
    return json.loads(capsys.readouterr().out)


def test_search_ranks_the_matching_caption_first(output: tuple[str, list[str]], capsys: pytest.CaptureFixture) -> None:
    uri, flags = output
    hits = _json_hits(capsys, [uri, "blue square", *flags])
    # The caption holding both words first, then the answer "blue"; never the error row or the stray file.
    assert [(h["source_uri"], h["segment_index"], h["task"]) for h in hits] == [
        ("/videos/a.mp4", 1, "caption"),
        ("/videos/a.mp4", 1, "qa"),
    ]
    first = hits[0]
    assert (first["segment_start_s"], first["segment_end_s"]) == (10.0, 20.0)
    assert first["answer"] == "a blue square stays still"
    assert first["score"] > hits[1]["score"] > 0
    assert {"source_uri", "segment_start_s", "segment_end_s", "task", "answer", "score"} <= first.keys()

    red = _json_hits(capsys, [uri, "red circle", *flags])
    assert [(h["source_uri"], h["task"], h["answer"]) for h in red[:2]] == [
        ("/videos/a.mp4", "caption", "a red circle moves left"),
        ("/videos/a.mp4", "qa", "red"),  # one word in a one-word answer beats one word in a long caption
    ]
    assert red[2]["answer"] == "a green triangle bounces on a red floor"

    assert [h["answer"] for h in _json_hits(capsys, [uri, "red", "--video", "/videos/b.mp4", *flags])] == [
        "a green triangle bounces on a red floor"
    ]
    assert len(_json_hits(capsys, [uri, "red", "--limit", "1", *flags])) == 1
    assert _json_hits(capsys, [uri, "zebra", *flags]) == []


def test_text_output_names_video_time_range_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(pa.fs.LocalFileSystem(), str(tmp_path / "out"))
    _write_output(ledger)
    search.main([ledger.base, "green triangle"])
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"  1\. +\d+\.\d\d  /videos/b\.mp4  0\.0-10\.0 s  caption: a green triangle bounces on a red floor", lines[0]
    ), lines[0]
    assert "'what colour?': green" in lines[1]
    search.main([ledger.base, "zebra"])
    assert capsys.readouterr().out.strip() == "no match for 'zebra' in 6 answers"


def test_the_nightly_jobs_dt_partitions_are_all_searched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for day, video in (("dt=2026-12-01", "a"), ("dt=2026-12-02", "b")):
        ledger = Ledger(pa.fs.LocalFileSystem(), str(tmp_path / "out"), partition=day)
        for index, (caption, answer) in enumerate(VIDEOS[video]):
            ledger.write_rows(_rows(video, index, caption, answer, index == len(VIDEOS[video]) - 1), "r1")
    assert sorted(p.parent.name for p in (tmp_path / "out").rglob("part-*.parquet")) == [
        "dt=2026-12-01",
        "dt=2026-12-02",
    ]
    hits = _json_hits(capsys, [str(tmp_path / "out"), "red"])
    assert {(h["source_uri"], h["task"]) for h in hits} == {
        ("/videos/a.mp4", "caption"),
        ("/videos/a.mp4", "qa"),
        ("/videos/b.mp4", "caption"),
    }


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["{out}", "  "], 2, "error: the query is empty: give one or more words to search for"),
        (["{out}", "?!"], 2, "error: the query '?!' has no word to search for: give one or more words"),
        (["{missing}", "red"], 2, "error: no results folder at {missing}: give the --output of a caption or"),
        (["{empty}", "red"], 2, "error: {empty} holds no result files (part-*.parquet): has a run committed any"),
    ],
)
def test_bad_input_ends_with_one_line_and_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    ledger = Ledger(pa.fs.LocalFileSystem(), str(tmp_path / "out"))
    _write_output(ledger)
    (tmp_path / "empty" / "_runs").mkdir(parents=True)
    names = {"out": ledger.base, "missing": str(tmp_path / "nowhere"), "empty": str(tmp_path / "empty")}
    with pytest.raises(SystemExit) as exited:
        search.main([a.format(**names) for a in argv])
    assert exited.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(**names)), err


def test_a_bad_limit_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        search.main(["/tmp", "red", "--limit", "0"])
    assert exited.value.code == 2
    assert "argument --limit: expected an int >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.slow  # 11 s here (2 cores): the S3 client's retries against a closed port
def test_an_unreachable_store_is_a_run_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials present: what fails is the connection
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # s3fs caches a file system per endpoint and options: another test's client for this endpoint, made without
    # credentials, would answer instead of one that reads the variables above.
    LiteralKeyS3FileSystem.clear_instance_cache()
    with pytest.raises(SystemExit) as exited:  # nothing listens on port 9 of loopback
        search.main(["s3://bucket/out", "red", "--s3-endpoint-url", "http://127.0.0.1:9"])
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("error: storage is not reachable or refused the request: ")


def test_the_command_imports_no_model_library_and_no_ray(tmp_path: Path) -> None:
    ledger = Ledger(pa.fs.LocalFileSystem(), str(tmp_path / "out"))
    _write_output(ledger)
    done, modules = imported_packages("jobs.search", [ledger.base, "blue square", "--format", "json"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)[0]["answer"] == "a blue square stays still"
    assert "pyarrow" in modules  # the probe sees imports at all
    assert not modules & {"torch", "transformers", "ray"}, sorted(modules & {"torch", "transformers", "ray"})
