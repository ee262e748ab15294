"""The crash-point matrix: a driver killed after every single storage operation of a nightly run, then a
rerun into the same or into the next night's partition, and the reader invariant after it.

The runs drive the ledger as ``run_pipeline`` does (lease, reconcile, pending, staged segments in two write
tasks, commits, ``remove_replaced``, run record, compaction, release), with small tables instead of Ray. The
kill is a ``BaseException`` raised right after the k-th write or delete of the output, for every k: after
staging, after a part file, after a marker, after deleting markers, after deleting a replaced file or the
staging folder, after writing an index file, between the deletes of a compaction and of a merge. The killed
driver's lease stays behind with the pid of a process that is gone, as after a SIGKILL.

Invariant after the rerun: every (video, segment, task) exactly once for pyarrow's dataset reader, whole
videos only (each with all its segments), every key committed ``ok``, every part file the committed file of
its key, nothing under ``_staging/``, no lease left; the shadow sample's quality rows of the videos it
processed exactly once, and every quality file the one its key's record names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import pipeline.commit.ledger_index
from pipeline.commit.lease import OutputLease
from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import LedgerEntry
from tests.pipeline.ledgers import CONFIG_KEY, ledger_key, make_ledger, quality_files, read_all, read_quality, segment

NIGHTS = ("dt=2026-11-21", "dt=2026-11-22", "dt=2026-11-23")
# Segments per video once it decodes; "bad" failed as a whole on night 1, and "fresh" had an earlier attempt
# that left a stale error row for its segment 1, flagged last, in staging.
VIDEOS = {"old": 2, "bad": 2, "fresh": 3, "new": 1}
WRITES = ("write_parquet", "write_arrow", "write_bytes", "delete_file", "delete_files", "delete_dir")


class Killed(BaseException):
    """The driver dies here; no ``except Exception`` on the way catches it."""


def key_of(video: str) -> str:
    return ledger_key(CONFIG_KEY, video, ["q"])


def night1(ledger: Ledger) -> None:
    """The first night: "old" and "bad" (an error) committed and compacted; a stale staged row of "fresh"."""
    with OutputLease(ledger.fs, ledger.base, "night-1").acquire():
        entries = ledger.write_rows(pa.concat_tables([segment("old", 0, False), segment("old", 1, True)]), "night-1")
        entries += ledger.write_rows(segment("bad", None, last=True, error=True), "night-1")
        ledger.write_rows(segment("fresh", 1, last=True, error=True), "night-0")  # the earlier attempt
        ledger.compact(entries)


def nightly(ledger: Ledger, run_id: str, dead_pid: int) -> None:
    """One driver as run_pipeline runs it, retrying errors; a Killed leaves its lease as a SIGKILL would."""
    lease = OutputLease(ledger.fs, ledger.base, run_id).acquire(wait_s=0)
    try:
        ledger.reconcile()
        done = ledger.committed()
        pending = set(ledger.pending([key_of(v) for v in VIDEOS], retry_errors=True, done=done))
        previous = ledger.entries(k for k in pending if k in done)
        replaces = {k: e.file for k, e in previous.items()}
        todo = [v for v in VIDEOS if key_of(v) in pending]
        tasks: list[list[pa.Table]] = [[], []]  # two write tasks; a video's segments spread over both
        for video in todo:
            for i in range(VIDEOS[video]):
                tasks[i % 2].append(segment(video, i, last=i == VIDEOS[video] - 1, shadow=i == 0))
        entries: list[LedgerEntry] = []
        for tables in tasks:
            if tables:
                entries += ledger.write_rows(pa.concat_tables(tables), run_id, replaces)
        ledger.remove_replaced(previous, entries)
        ledger.write_json(f"_runs/{run_id}.json", {"run_id": run_id, "processed": len(entries)})
        lease.check()
        ledger.compact(entries)
    except Killed:
        lease._stop.set()  # a killed driver renews nothing and releases nothing
        abandon(ledger, dead_pid)
        raise
    lease.release()


def abandon(ledger: Ledger, dead_pid: int) -> None:
    """Leave the lease as a SIGKILLed driver of this host does: present, unexpired, its process gone."""
    with ledger.fs.open_input_stream(f"{ledger.base}/_lease") as f:
        holder = json.loads(f.read())
    with ledger.fs.open_output_stream(f"{ledger.base}/_lease") as f:
        f.write(json.dumps({**holder, "pid": dead_pid}).encode())


def kill_after(ledger: Ledger, k: int | None, log: list[str]) -> None:
    """Make ``ledger``'s k-th write or delete (from 0) the last one before Killed; log every operation.

    Only outermost operations count (an atomic write's temporary-file cleanup is part of the write)."""
    depth = [0]
    for name in WRITES:
        real: Callable[..., Any] = getattr(ledger.files, name)

        def operation(*args: Any, _name: str = name, _real: Callable[..., Any] = real) -> Any:
            depth[0] += 1
            try:
                result = _real(*args)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                log.append(f"{_name} {_what(args[-1] if _name.startswith('delete') else args[1])}")
                if k is not None and len(log) > k:
                    raise Killed
            return result

        setattr(ledger.files, name, operation)


def _what(path: Any) -> str:
    """What a written or deleted path is: staging, part file, marker, index, run record (or nothing)."""
    if isinstance(path, list):
        if not path:
            return "nothing"
        path = path[0]
    kinds = (("/_staging", "staging"), ("/_ledger/_index", "index"), ("/_ledger", "marker"), ("/_runs", "run record"))
    kinds += (("/_quality", "quality file"),)
    return next((kind for part, kind in kinds if part in path), "part file" if "/part-" in path else path)


def check_reader_invariant(ledger: Ledger) -> None:
    rows = read_all(ledger)
    expected = sorted(((v, i, f"{v}-{i}-{t}") for v, n in VIDEOS.items() for i in range(n) for t in (0, 1)), key=str)
    assert rows == expected  # every (video, segment, task) exactly once, whole videos, no error rows left
    keys = {key_of(v) for v in VIDEOS}
    assert ledger.committed() == dict.fromkeys(keys, "ok")
    files = {ledger.files.path(e.file) for e in ledger.entries(keys).values()}
    assert set(ledger.part_files()) == files  # no orphan part file
    assert ledger.files.list_files(ledger.files.path("_staging"), recursive=True) == []
    # the shadow sample of the videos the second or third night processed (segment 0), once, and no orphan
    redone = [v for v in VIDEOS if v != "old"]
    assert read_quality(ledger) == sorted(
        ((v, 0, task, f"dense-{v}-0-{t}") for v in redone for t, task in enumerate(("caption", "qa"))), key=str
    )
    assert quality_files(ledger) == {e.quality_file for e in ledger.entries(keys).values() if e.quality_file}
    assert ledger.fs.get_file_info(f"{ledger.base}/_lease").type == pafs.FileType.NotFound


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has ended (a killed driver's, for its lease)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


@pytest.mark.parametrize("rerun_night", [1, 2], ids=["same-partition", "next-partition"])
@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.slow)])  # S3: 1-1.5 min each
def test_a_driver_killed_after_any_write_is_repaired_by_the_rerun(
    kind: str,
    rerun_night: int,
    dead_pid: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline.commit.ledger_index, "MAX_INDEX_FILES", 1)  # the run's compaction also merges
    root = make_ledger(kind, tmp_path, request)

    def case(name: str) -> tuple[Ledger, Ledger]:
        night1(Ledger(root.fs, f"{root.base}/{name}", NIGHTS[0]))
        return Ledger(root.fs, f"{root.base}/{name}", NIGHTS[1]), Ledger(
            root.fs, f"{root.base}/{name}", NIGHTS[rerun_night]
        )

    steps: list[str] = []
    complete, _ = case("complete")
    kill_after(complete, None, steps)
    nightly(complete, "night-2", dead_pid)  # uninterrupted: counts the operations and names them
    check_reader_invariant(complete)
    named = ("write_arrow staging", "write_arrow quality file", "write_parquet part file", "write_bytes marker")
    named += ("delete_files marker",)
    named += ("delete_file part file", "delete_dir staging", "write_arrow index", "delete_files index")
    for step in named:
        assert step in steps, (step, steps)

    for k, step in enumerate(steps):
        crashed, rerun = case(f"k{k}")
        kill_after(crashed, k, [])
        with pytest.raises(Killed):
            nightly(crashed, "night-2", dead_pid)
        nightly(rerun, "night-3", dead_pid)
        try:
            check_reader_invariant(rerun)
        except AssertionError as err:
            raise AssertionError(f"killed after operation {k} ({step}) of {steps}") from err


def test_every_common_reader_sees_each_row_once_after_a_crash_and_a_rerun(dead_pid: int, tmp_path: Path) -> None:
    """pyarrow, pandas, DuckDB and Polars on a nightly output whose second night was killed after the part
    file of the retried video (an orphan, plus index files, markers, staging and a run record beside it)."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads

    fs = pafs.LocalFileSystem()
    steps: list[str] = []
    dry = Ledger(fs, str(tmp_path / "dry"), NIGHTS[1])
    night1(Ledger(fs, dry.base, NIGHTS[0]))
    kill_after(dry, None, steps)
    nightly(dry, "night-2", dead_pid)
    second_part_file = [i for i, step in enumerate(steps) if step == "write_parquet part file"][1]

    out = tmp_path / "out"
    night1(Ledger(fs, str(out), NIGHTS[0]))
    crashed = Ledger(fs, str(out), NIGHTS[1])
    kill_after(crashed, second_part_file, [])
    with pytest.raises(Killed):
        nightly(crashed, "night-2", dead_pid)
    internal = [p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0].startswith("_")]
    assert internal and not [p for p in internal if p.suffix == ".parquet"]  # staging, markers, lease: no .parquet
    nightly(Ledger(fs, str(out), NIGHTS[2]), "night-3", dead_pid)
    assert {p.relative_to(out).parts[0] for p in out.rglob("*.parquet")} == set(NIGHTS)  # results only

    expected = sorted(((v, i, f"{v}-{i}-{t}") for v, n in VIDEOS.items() for i in range(n) for t in (0, 1)), key=str)
    glob = f"{out}/**/*.parquet"
    columns = "video_id, segment_index, answer"
    seen = {
        "pyarrow.dataset": pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist(),
        "pandas.read_parquet": pd.read_parquet(out).to_dict("records"),
        "duckdb glob": duckdb.sql(f"SELECT {columns} FROM read_parquet('{glob}')").pl().to_dicts(),
        "duckdb glob, hive": duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
        .pl()
        .to_dicts(),
        "polars glob": pl.scan_parquet(glob).select(columns.split(", ")).collect().to_dicts(),
    }
    for reader, rows in seen.items():
        got = sorted(((r["video_id"], r["segment_index"], r["answer"]) for r in rows), key=str)
        assert got == expected, reader
    assert {str(r["dt"]) for r in seen["duckdb glob, hive"]} <= {n.removeprefix("dt=") for n in NIGHTS}
