"""Real jobs as subprocesses, for the process-level crash and concurrency tests: start, crash, clean up, check.

A job runs as ``python -m jobs.index_archive`` in its own session (``start_new_session``), so the crash hook
(pipeline/harness/crash.py) can find its driver and the test can end every process the job left (Ray's agents
outlive a SIGKILLed driver for a while) by session id, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipeline.commit.ledger import Ledger
from pipeline.harness.crash import ENV

ROOT = Path(__file__).resolve().parents[2]
# Segments of 5 s: the 10.4 s Matroska clip has two, the 6.6 s AVI and the 5 s WebM one each.
CLIPS = {"decord_flipping_a_pancake.mkv": 2, "mmaction2_test.avi": 1, "gradio_video_sample.webm": 1}
QUESTION = "what happens?"


def copy_clips(assets: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in CLIPS:
        shutil.copy(assets / name, folder / name)
    return folder


def job_args(videos: Path, output: Path, model: Path, date: str, run_id: str) -> list[str]:
    """index_archive flags for a small run (a few seconds of model time per video, one segment per batch)."""
    return [
        *("--input", str(videos), "--output", str(output), "--model", str(model), "--question", QUESTION),
        *("--segment-seconds", "5", "--frames", "2", "--max-new-tokens", "3", "--batch-size", "1"),
        *("--decode-cpus", "0.5", "--date", date, "--run-id", run_id),
    ]


def start_job(args: list[str], log: Path, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m jobs.index_archive ARGS`` in its own session with its own local Ray; output to ``log``."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "RAY_ADDRESS")}
    if crash_at is not None:
        env[ENV] = crash_at
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.index_archive", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(job: subprocess.Popen[bytes], timeout_s: float = 600) -> int:
    """Wait for the job, then SIGKILL what is left of its session (a killed driver's Ray agents); its exit code."""
    try:
        code = job.wait(timeout=timeout_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            job.kill()
        job.wait()
        end_session(job.pid)
    return code


def end_session(sid: int) -> None:
    """SIGKILL every remaining process of session ``sid`` (the job's, which this test started)."""
    for _ in range(3):
        left = [pid for pid in _pids() if _sid(pid) == sid]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state ``T`` in ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def check_reader_invariant(output: Path) -> list[dict[str, Any]]:
    """What the README promises after a completed run, with its documented readers: pyarrow's dataset and
    DuckDB's recursive glob each see every (video, segment, task) exactly once and every video whole; every key
    is committed ``ok``; every part file is its key's committed file; ``_staging/`` is empty; no lease is left.
    Returns pyarrow's rows."""
    rows = pads.dataset(output, format="parquet", partitioning="hive").to_table().to_pylist()
    glob = duckdb.sql(f"SELECT source_uri, segment_index, task FROM read_parquet('{output}/**/*.parquet')")
    for reader, got in (("pyarrow", rows), ("duckdb", glob.pl().to_dicts())):
        keys = Counter((Path(r["source_uri"]).name, r["segment_index"], r["task"]) for r in got)
        expected = {(name, i, task) for name, n in CLIPS.items() for i in range(n) for task in ("caption", "qa")}
        assert set(keys) == expected, (reader, sorted(keys))  # every video whole, nothing else
        assert set(keys.values()) == {1}, (reader, [k for k, n in keys.items() if n > 1])  # each row once
    assert {r["status"] for r in rows} == {"ok"}
    ledger = Ledger(pafs.LocalFileSystem(), str(output))
    done = ledger.committed()
    assert len(done) == len(CLIPS) and set(done.values()) == {"ok"}, done
    assert set(ledger.part_files()) == {ledger.files.path(e.file) for e in ledger.entries(done).values()}
    assert not [p for p in (output / "_staging").rglob("*") if p.is_file()]
    assert not (output / "_lease").exists()
    return rows
