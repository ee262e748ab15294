"""Issue #25's cases, each through the caption job in its own process: what the reconcile may delete, what a
local --input/--output means, what a listing survives, what the preflight judges. Runs that find nothing to
decode start no Ray, so most of these take the job's start-up time only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit.ledger import ledger_key

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--frames", "2", "--max-new-tokens", "3", "--question", "what?", "--batch-size", "1", "--decode-cpus", "0.5"]


def caption(*argv: str, model: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m jobs.caption`` with the tiny model and the short settings; bounded by ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "jobs.caption", "--model", str(model), *FAST, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _parquet(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1]}), path)
    return path


def test_the_reconcile_deletes_only_what_this_pipeline_wrote(pipeline_model_dir: Path, tmp_path: Path) -> None:
    out, empty = tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    key = ledger_key("cfg", "a" * 40, ["what?"])
    # A killed writer's leftovers: its staged segment and the part file it wrote before its marker.
    orphan = _parquet(out / "dt=2026-01-01" / f"part-{key}.parquet")
    (out / "_staging" / key / "r1").mkdir(parents=True)
    (out / "_staging" / key / "r1" / "seg-000000-last.arrow").write_bytes(b"x")
    kept = [
        _parquet(out / "other_table" / "part-00000-a.snappy.parquet"),  # Spark's names
        _parquet(out / "dt=2026-01-01" / "part-00000-1b2c.snappy.parquet"),
        _parquet(out / f"part-{ledger_key('cfg', 'b' * 40, ['what?'])}.parquet"),  # the pattern, a key no one staged
        _parquet(out / "sub" / f"part-{key}.parquet"),  # a nested pipeline output, its ledger beside it
        _parquet(out / "dt=2026-01-02" / f"part-{key}.parquet"),  # a nested output named like a partition
    ]
    (out / "sub" / "_ledger").mkdir()
    (out / "dt=2026-01-02" / "_ledger").mkdir()
    video = out / "videos" / "part-01.avi"  # an input video below the output
    video.parent.mkdir()
    video.write_bytes(b"not really a video")
    kept.append(video)

    done = caption("--input", str(empty), "--output", str(out), model=pipeline_model_dir)

    assert done.returncode == 0, done.stderr
    assert not orphan.exists() and not (out / "_staging").exists()
    assert [p for p in kept if not p.exists()] == []


@pytest.mark.slow  # 9 s here (2 cores): five caption jobs in subprocesses
def test_local_paths_are_paths_not_uris(pipeline_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "in #1 ?x %41 é"
    empty.mkdir()
    for name in ("out#1", "o?x", "o%41", "my out", "ünï"):
        done = caption("--input", str(empty), "--output", str(tmp_path / name), model=pipeline_model_dir)
        assert done.returncode == 0, (name, done.stderr)
        assert (tmp_path / name / "_runs").is_dir(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in #1 ?x %41 é", "out#1", "o?x", "o%41", "my out", "ünï"]
    )


def test_a_bad_local_input_or_output_is_a_usage_error_before_any_write(
    pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "in"
    videos.mkdir()
    missing = caption("--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o1"), model=pipeline_model_dir)
    assert missing.returncode == 2 and "--input" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "o1").exists()
    (tmp_path / "file").write_text("x")
    a_file = caption("--input", str(videos), "--output", str(tmp_path / "file"), model=pipeline_model_dir)
    assert a_file.returncode == 2 and "--output" in a_file.stderr, a_file.stderr
    assert (tmp_path / "file").read_text() == "x"


def test_a_dangling_or_looping_symlink_is_skipped_by_name(pipeline_model_dir: Path, tmp_path: Path) -> None:
    videos = tmp_path / "in"
    videos.mkdir()
    os.symlink(tmp_path / "gone.webm", videos / "dangling.webm")
    os.symlink(videos / "loop.mp4", videos / "loop.mp4")
    done = caption("--input", str(videos), "--output", str(tmp_path / "out"), "--dry-run", model=pipeline_model_dir)
    assert done.returncode == 0, done.stderr
    assert "dangling.webm" in done.stderr and "loop.mp4" in done.stderr


def test_manifest_confinement_follows_symlinks(pipeline_model_dir: Path, assets: Path, tmp_path: Path) -> None:
    outside, folder = tmp_path / "outside", tmp_path / "m"
    outside.mkdir()
    folder.mkdir()
    shutil.copy(assets / "gradio_video_sample.webm", outside / "v.webm")
    os.symlink(outside / "v.webm", folder / "link.webm")
    os.symlink(outside, folder / "sublink")
    for entry in ("link.webm", "sublink/v.webm"):
        (folder / "list.txt").write_text(entry + "\n")
        done = caption(
            "--input", str(folder / "list.txt"), "--output", str(tmp_path / "o"), "--dry-run", model=pipeline_model_dir
        )
        assert done.returncode == 2 and "outside the manifest's own folder" in done.stderr, (entry, done.stderr)


@pytest.mark.slow  # 25 s here (2 cores): a caption job in a subprocess
def test_the_preflight_never_stops_a_run_that_has_a_decodable_video(
    pipeline_model_dir: Path, assets: Path, tmp_path: Path
) -> None:
    """Missing entries and broken files first in URI order: the run goes on and records them as error rows."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("a-bad-1.mp4", "a-bad-2.mp4", "a-bad-3.mp4", "a-bad-4.mp4"):
        (folder / name).write_bytes(b"not a video" * 10)
    shutil.copy(assets / "gradio_video_sample.webm", folder / "z-real.webm")
    (folder / "list.txt").write_text(
        "gone-1.mp4\ngone-2.mp4\ngone-3.mp4\n"
        + "".join(f"{p.name}\n" for p in sorted(folder.iterdir()) if p.suffix != ".txt")
    )
    done = caption(
        "--input",
        str(folder / "list.txt"),
        "--output",
        str(tmp_path / "o"),
        "--log-format",
        "json",
        model=pipeline_model_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["processed"], summary["failed"]) == (8, 7), summary


@pytest.mark.slow  # 10 s each here (2 cores): a job in a subprocess, stopped
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_records_releases_and_says_one_line(
    pipeline_model_dir: Path, assets: Path, tmp_path: Path, signum: int, code: int
) -> None:
    videos, out = tmp_path / "in", tmp_path / "out"
    videos.mkdir()
    shutil.copy(assets / "gradio_video_sample.webm", videos)
    argv = ["--run-id", "stopped", "--input", str(videos), "--output", str(out), "--progress", "off"]
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.caption", "--model", str(pipeline_model_dir), *FAST, *argv],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert job.stderr is not None
    seen = []
    for line in job.stderr:  # the run is inside Ray once it logs its metrics endpoint (the job's timeout bounds it)
        seen.append(line)
        if "metrics at" in line:
            break
    job.send_signal(signum)
    _, rest = job.communicate(timeout=120)
    assert job.returncode == code, "".join(seen) + rest
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by" in errors[0] and "rerunning" in errors[0], rest
    assert "Traceback" not in rest
    record = json.loads((out / "_runs" / "stopped.json").read_text())
    assert record["status"] == "failed" and record["error_class"] == "Interrupted"
    assert not (out / "_lease").exists()


@pytest.mark.slow  # 25 s here (2 cores): two caption jobs in subprocesses
def test_the_same_model_from_another_path_skips_what_it_did(
    pipeline_model_dir: Path, assets: Path, tmp_path: Path
) -> None:
    videos, out, moved = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere" / "model"
    videos.mkdir()
    shutil.copy(assets / "gradio_video_sample.webm", videos)
    first = caption("--input", str(videos), "--output", str(out), model=pipeline_model_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copytree(pipeline_model_dir, moved)
    again = caption("--input", str(videos), "--output", str(out), "--log-format", "json", model=moved)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (json.loads(again.stdout)["processed"], json.loads(again.stdout)["skipped"]) == (0, 1)
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 2 and {r["model_id"] for r in rows} == {str(pipeline_model_dir)}  # as given, once


HOLD_LEASE = """
import os, sys
import pyarrow.fs as pafs
from pipeline.commit.lease import OutputLease
target = int(sys.argv[2])  # a PID no process of the parent namespace has: the holder takes it in its own
for _ in range(target + 10):  # PIDs of a new namespace count up from 1
    child = os.fork()
    if child == 0:
        if os.getpid() != target:
            os._exit(0)
        lease = OutputLease(pafs.LocalFileSystem(), sys.argv[1], "in-a-container")
        lease.acquire(0)
        with lease:
            print("held", os.getpid(), flush=True)
            sys.stdin.read()  # until the test closes stdin
        os._exit(0)
    os.waitpid(child, 0)
    if child == target:
        break
"""


@pytest.mark.slow  # 2-5 s here (2 cores): a lease holder in its own PID namespace, then a job
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_a_live_lease_in_another_pid_namespace_is_not_taken_over(pipeline_model_dir: Path, tmp_path: Path) -> None:
    out, empty = tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    free_pid = next(pid for pid in range(300, 32768) if not Path(f"/proc/{pid}").exists())
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", HOLD_LEASE, str(out), str(free_pid)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        line = holder.stdout.readline()  # "" if the holder could not start (then its stderr says why)
        if not line and "Operation not permitted" in holder.communicate(timeout=30)[1]:
            pytest.skip("unshare --pid is not permitted here")
        assert line == f"held {free_pid}\n", line
        second = caption("--input", str(empty), "--output", str(out), model=pipeline_model_dir)
        assert second.returncode == 1 and "another run holds the output lease" in second.stderr, second.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0, holder.stderr.read() if holder.stderr else ""
