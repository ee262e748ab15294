"""Crashes of real processes at chosen points of the commit protocol, then a rerun and the reader invariant.

tests/pipeline/test_ledger_crash.py kills a simulated driver after each of its storage operations; these
tests add what it cannot: the real job (``python -m jobs.index_archive`` with its own local Ray), the commit
running in a Ray write worker, and death by SIGKILL (no ``finally``, the lease left with a dead pid, Ray's
workers gone mid-write). The kill comes from the test hook ``PIPELINE_CRASH_AT`` (pipeline/crash.py), which
SIGKILLs the process that reaches the step (``process``) or the job's driver and that process (``job``).

After each crash, a rerun (in this process, on the test session's Ray) into the same or the next night's
partition; then the README's readers see every (video, segment, task) once, whole videos only, nothing in
``_staging/``, no lease, no orphan part file. Local disk only: the S3 commit path is the same Ledger code,
which test_ledger_crash.py crashes on S3 at every step; an S3 server here would double each case's time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import index_archive
from tests.pipeline.crash_jobs import check_reader_invariant, copy_clips, finish, job_args, start_job

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
