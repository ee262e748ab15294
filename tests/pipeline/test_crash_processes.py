"""Real jobs in subprocesses: crashes at chosen points of the commit protocol, and concurrent jobs on one output.

tests/pipeline/test_ledger_crash.py kills a simulated driver after each of its storage operations; these
tests add what it cannot: the real job (``python -m jobs.index_archive`` with its own local Ray), the commit
running in a Ray write worker, and death by SIGKILL (no ``finally``, the lease left with a dead pid, Ray's
workers gone mid-write). The kill comes from the test hook ``PIPELINE_CRASH_AT`` (pipeline/harness/crash.py), which
SIGKILLs the process that reaches the step (``process``) or the job's driver and that process (``job``).

After each crash, a rerun (in this process, on the test session's Ray) into the same or the next night's
partition; then the README's readers see every (video, segment, task) once, whole videos only, nothing in
``_staging/``, no lease, no orphan part file. Local disk only: the S3 commit path is the same Ledger code,
which test_ledger_crash.py crashes on S3 at every step; an S3 server here would double each case's time.

Then three jobs on one output at once: the lease lets one run, refuses one with exit code 1 (a run failure)
and the holder's name, and makes one that was told to wait (``--wait-for-lease``) skip everything the first
committed. And a
run whose lease expires and is taken over mid-run (fencing): it commits, deletes and compacts nothing more;
and the fencing window itself: a job stopped right after a write task's lease check, taken over, and resumed
after the taker completed, lands a commit that never counts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import signal
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from jobs import index_archive
from jobs.common import config_from_args
from pipeline.commit.lease import LeaseLost, OutputLease, host_identity
from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import now_iso
from pipeline.query.results import open_results
from pipeline.run import PipelineError, run_pipeline
from tests.pipeline.crash_jobs import (
    CLIPS,
    check_reader_invariant,
    copy_clips,
    finish,
    job_args,
    start_job,
    stopped,
)
from tests.pipeline.runs import MODEL_ACTOR_TITLE, pids_titled

pytestmark = pytest.mark.slow  # each case: one job with its own Ray (~45-90 s here), one rerun (~30-60 s)

NIGHTS = ("2026-11-21", "2026-11-22")


@pytest.mark.usefixtures("pipeline_ray")
@pytest.mark.parametrize(
    ("step", "scope", "rerun_night", "killed"),
    [
        # The Ray worker that writes dies after a part file, before its marker: Ray retries the write task in a
        # new worker, which stages and commits the video again (same file name): the run completes, once.
        ("part", "process", 1, "worker"),
        # The job dies while a worker commits: marker written, staging not yet deleted; rerun in the same dt=.
        ("marker", "job", 0, "driver"),
        # The job dies after a part file without a marker; the next night writes elsewhere: the orphan in the
        # first partition must not stay beside the new commit (the duplicates across partitions).
        ("part", "job", 1, "driver"),
        # The driver dies in its compaction: index file written, markers not yet deleted.
        ("indexed", "job", 0, "driver"),
    ],
    ids=["worker-after-part", "job-after-marker", "job-after-part-next-partition", "driver-after-index"],
)
def test_a_job_killed_in_its_commit_protocol_is_exact_after_the_rerun(
    step: str, scope: str, rerun_night: int, killed: str, assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos, output, flag = copy_clips(assets, tmp_path / "in"), tmp_path / "out", tmp_path / "crashed"
    crashed = start_job(
        job_args(videos, output, pipeline_model_dir, NIGHTS[0], "night-1"),
        tmp_path / "night-1.log",
        crash_at=f"{step}:{scope}:{flag}",
    )
    code = finish(crashed)
    log = (tmp_path / "night-1.log").read_text(errors="replace")
    assert flag.read_text().split()[0] == step, log[-3000:]  # the hook fired, at that step
    if killed == "worker":
        assert int(flag.read_text().split()[1]) != crashed.pid
        assert code == 0, log[-3000:]  # Ray retried the killed write task and the run completed
        record = json.loads((output / "_runs" / "night-1.json").read_text())
        assert (record["processed"], record["uncommitted"]) == (3, 0)
        check_reader_invariant(output)
    else:
        assert code == -9, log[-3000:]  # SIGKILLed: a lease of a dead process; a run record only if written before
        assert (output / "_lease").exists()
        assert (output / "_runs" / "night-1.json").exists() == (step in ("summary", "indexed", "compacted"))

    argv = job_args(videos, output, pipeline_model_dir, NIGHTS[rerun_night], "night-2")
    summary = index_archive.main(argv)
    assert summary["seen"] == 3 and summary["uncommitted"] == 0 and summary["failed"] == 0
    rows = check_reader_invariant(output)
    assert {r["run_id"] for r in rows} <= {"night-1", "night-2"}
    if killed == "worker":
        assert summary["processed"] == 0


def test_a_second_job_on_a_running_output_is_refused_or_waits_and_then_skips_everything(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    """Three real jobs on one output: the first runs; one started meanwhile exits 1 naming it; one started
    meanwhile with --wait-for-lease waits for it, then processes nothing it committed."""
    videos, output = copy_clips(assets, tmp_path / "in"), tmp_path / "out"
    first = start_job(job_args(videos, output, pipeline_model_dir, NIGHTS[0], "nightly-a"), tmp_path / "a.log")
    try:
        deadline = time.monotonic() + 120
        while not (output / "_lease").exists():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.05)
        refused = start_job(job_args(videos, output, pipeline_model_dir, NIGHTS[1], "caption-b"), tmp_path / "b.log")
        waiting = start_job(
            [*job_args(videos, output, pipeline_model_dir, NIGHTS[1], "late-c"), "--wait-for-lease", "600"],
            tmp_path / "c.log",
        )
        assert finish(refused, timeout_s=120) == 1  # a run failure (try again later), not a usage error
        assert first.poll() is None, "the first job ended before the others asked for the lease"
    finally:
        assert finish(first) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert finish(waiting) == 0, (tmp_path / "c.log").read_text()[-3000:]

    errors = [line for line in (tmp_path / "b.log").read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another run holds the output lease" in errors[0], errors
    assert f"run 'nightly-a' (host {host_identity()}, pid {first.pid})" in errors[0] and " until 20" in errors[0]
    assert "--wait-for-lease" in errors[0]
    assert not (output / "_runs" / "caption-b.json").exists()  # refused before it wrote anything
    assert "waiting for the output lease" in (tmp_path / "c.log").read_text()
    late = json.loads((output / "_runs" / "late-c.json").read_text())
    assert (late["seen"], late["skipped"], late["processed"]) == (3, 3, 0)
    rows = check_reader_invariant(output)
    assert {r["run_id"] for r in rows} == {"nightly-a"}


@pytest.mark.usefixtures("pipeline_ray")
def test_a_run_whose_lease_expires_and_is_taken_over_commits_and_compacts_nothing_more(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    """Fencing in a real run: at its first commit the run's lease expires (its document rewritten with a past
    expiry, as after a pause past the TTL) and another run takes it over. The run's write tasks commit nothing
    after that, its driver deletes and compacts nothing, the run fails naming the lease, and the taker's
    lease survives the loser's release."""
    videos, output = copy_clips(assets, tmp_path / "in"), tmp_path / "out"
    argv = job_args(videos, output, pipeline_model_dir, NIGHTS[0], "paused")
    config = config_from_args(index_archive.build_parser().parse_args(argv), partition=f"dt={NIGHTS[0]}")
    fs = pafs.LocalFileSystem()
    taken: list[tuple[str, OutputLease]] = []

    def expire_and_take_over() -> None:
        lease = output / "_lease"
        holder = json.loads(lease.read_text())
        lease.write_text(json.dumps({**holder, "expires_at": "2000-01-01T00:00:00.000+00:00"}))
        taker = OutputLease(fs, str(output), "taker").acquire()
        taken.append((now_iso(), taker))

    def committed() -> bool:
        return any((output / "_ledger").glob("*.json"))

    watcher = threading.Thread(target=_when(committed, expire_and_take_over), daemon=True)
    watcher.start()
    with pytest.raises((PipelineError, LeaseLost), match="lease"):
        run_pipeline(config)
    watcher.join(timeout=30)
    _end_the_failed_runs_actors()
    ((at, taker),) = taken
    try:
        # A commit that passed its check just before the takeover may finish after it (one commit's window).
        late = [
            e
            for e in Ledger(fs, str(output)).entries(Ledger(fs, str(output)).committed()).values()
            if e.committed_at > _plus_seconds(at, 5)
        ]
        assert late == []
        assert not (output / "_ledger" / "_index").exists()  # never compacted after losing the lease
        assert json.loads((output / "_lease").read_text())["run_id"] == "taker"  # release kept the taker's
        record = json.loads((output / "_runs" / "paused.json").read_text())
        assert record["status"] == "failed" and "lease" in record["error_message"]
    finally:
        taker.release()
    # The next run completes: as its own job with its own local Ray, like the other reruns here, so that it never
    # shares the test session's 2 CPUs with anything the failed run left behind (a hang in CI, 2026-12-03).
    after = start_job(job_args(videos, output, pipeline_model_dir, NIGHTS[0], "after"), tmp_path / "after.log")
    assert finish(after) == 0, (tmp_path / "after.log").read_text()[-3000:]
    check_reader_invariant(output)


def test_a_commit_paused_after_its_lease_check_and_landing_after_a_takeover_never_counts(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    """The fencing window (issue #25, item 7), with real jobs: the first job stands still right after a write
    task passed its lease check (``PIPELINE_CRASH_AT=fenced:pause``: SIGSTOP of that Ray worker and of the
    driver, as a stopped VM), its lease expires, a second job takes the output over and completes every video
    into the next night's partition. Then the paused writer resumes and lands its part file and marker in the
    first night's partition. Its marker carries the superseded epoch: the ledger, the index and the results
    reader (pipeline/query/results.py) see each video once, from the second job only; the paused job fails with
    the lease named; the next run's reconcile deletes the late part file, after which every reader is exact."""
    videos, output, flag = copy_clips(assets, tmp_path / "in"), tmp_path / "out", tmp_path / "paused"
    paused = start_job(
        job_args(videos, output, pipeline_model_dir, NIGHTS[0], "paused"),
        tmp_path / "paused.log",
        crash_at=f"fenced:pause:{flag}",
    )
    try:
        _wait_for(lambda: flag.exists() and len(flag.read_text().split()) == 2, paused, tmp_path / "paused.log")
        writer = int(flag.read_text().split()[1])
        _wait_for(lambda: stopped(writer) and stopped(paused.pid), paused, tmp_path / "paused.log")
        # No renewal comes from a stopped driver: its lease expires (rewritten as past its TTL, without a wait).
        lease = output / "_lease"
        lease.write_text(json.dumps({**json.loads(lease.read_text()), "expires_at": "2000-01-01T00:00:00.000+00:00"}))
        taker = start_job(job_args(videos, output, pipeline_model_dir, NIGHTS[1], "taker"), tmp_path / "taker.log")
        assert finish(taker) == 0, (tmp_path / "taker.log").read_text()[-3000:]
        taken = json.loads((output / "_runs" / "taker.json").read_text())
        assert taken["processed"] >= 1 and taken["uncommitted"] == 0, taken  # the paused video among them

        os.kill(writer, signal.SIGCONT)  # the write task goes on from its passed check: part file, marker
        _wait_for(lambda: bool(_markers_of(output, "paused")), paused, tmp_path / "paused.log")
        os.kill(paused.pid, signal.SIGCONT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(paused.pid, signal.SIGCONT)
        code = finish(paused)
    log = (tmp_path / "paused.log").read_text(errors="replace")
    assert code == 1 and "lease" in log, log[-3000:]

    ((marker, late),) = _markers_of(output, "paused")
    late_file = output / late["file"]
    assert late["file"].startswith(f"dt={NIGHTS[0]}/") and late_file.exists()  # the late commit did land
    fs = pafs.LocalFileSystem()
    ledger = Ledger(fs, str(output))
    newest = ledger.entries(ledger.committed())
    assert len(newest) == len(CLIPS)
    assert newest[late["key"]].run_id == "taker" and newest[late["key"]].file.startswith(f"dt={NIGHTS[1]}/")
    assert str(late_file) not in ledger.result_files()
    rows = open_results(str(output)).to_table().to_pylist()
    keys = Counter((Path(r["source_uri"]).name, r["segment_index"], r["task"]) for r in rows)
    assert set(keys) == {(name, i, task) for name, n in CLIPS.items() for i in range(n) for task in ("caption", "qa")}
    assert set(keys.values()) == {1}
    assert late["key"] not in {e.key for e in ledger.run_entries("paused")}
    assert (output / "_runs" / "paused.json").exists()

    after = start_job(job_args(videos, output, pipeline_model_dir, NIGHTS[1], "after"), tmp_path / "after.log")
    assert finish(after) == 0, (tmp_path / "after.log").read_text()[-3000:]
    assert not late_file.exists() and not marker.exists()  # the reconcile deleted what never counted
    check_reader_invariant(output)


def _markers_of(output: Path, run_id: str) -> list[tuple[Path, dict[str, Any]]]:
    """The loose commit markers ``run_id`` wrote, with their content."""
    found = []
    for path in (output / "_ledger").glob("*.json"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            content = json.loads(path.read_text())
            if content.get("run_id") == run_id:
                found.append((path, content))
    return found


def _wait_for(condition: Callable[[], bool], job: subprocess.Popen[bytes], log: Path, timeout_s: float = 300) -> None:
    """Wait until ``condition`` holds, failing with the job's log if the job ends first or it takes too long."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert job.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)


def _end_the_failed_runs_actors(timeout_s: float = 60) -> None:
    """Let the failed run's model actor go before the next run shares this 2-CPU Ray with it.

    Ray Data releases a failed dataset's actors by reference counting, and the failed run's dataset sits in a
    reference cycle with its exception's traceback: until the cyclic collector runs, its actor keeps a CPU, and
    the next run's decode tasks waited for it forever (a CI hang, 2026-12-03). A job's driver exits after a
    failure, so this concerns drivers that run again in one process. SIGKILL is the last resort, with a warning.
    """
    gc.collect()
    deadline = time.monotonic() + timeout_s
    while (pids := pids_titled(MODEL_ACTOR_TITLE)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids:
        warnings.warn(f"the failed run's model actor {pid} outlived its dataset; killed", stacklevel=1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _when(condition: Callable[[], bool], action: Callable[[], None], timeout_s: float = 300) -> Callable[[], None]:
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.02)

    return watch


def _plus_seconds(iso: str, seconds: float) -> str:
    return (dt.datetime.fromisoformat(iso) + dt.timedelta(seconds=seconds)).isoformat(timespec="microseconds")
