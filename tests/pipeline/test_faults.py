"""Faults really injected into running pipelines: a killed model actor, a killed driver, an S3 outage.

Each test starts a run over enough videos that work remains when the fault hits (the first commit marker is
the trigger), then checks the promise: every (video, segment, task) row exactly once, nothing half-committed
visible to readers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig
from pipeline.harness.memory import process_tree
from pipeline.run import PipelineError, run_pipeline
from tests.pipeline.runs import MODEL_ACTOR_TITLE, QUESTION, command_line, make_config, pids_titled, read_rows

CLIPS = ("decord_flipping_a_pancake.mkv", "mmaction2_test.avi", "gradio_video_sample.webm")
SYNTHETIC = 10
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fault_videos(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real clips and ten synthetic ones: 15 segments, enough to still be working after a commit."""
    from jobs.demo import write_synthetic_videos

    folder = tmp_path_factory.mktemp("fault-videos")
    for name in CLIPS:
        shutil.copy(assets / name, folder / name)
    write_synthetic_videos(folder, SYNTHETIC)
    return folder


def _config(videos: Path, output: str, model: Path, **changes: Any) -> PipelineConfig:
    # Many small batches: the fault lands between two of them.
    return make_config(str(videos), output, model, **{"batch_size": 1, **changes})


def assert_whole_videos_once(rows: list[dict[str, Any]], videos: Path, complete: bool = True) -> None:
    """No duplicate row; each video that has rows has all of them (segments 0..n-1, caption + question each);
    with ``complete`` every input video is there."""
    keys = Counter((r["source_uri"], r["segment_index"], r["task"], r["question"]) for r in rows)
    assert set(keys.values()) <= {1}, [k for k, n in keys.items() if n > 1]
    segments: dict[str, set[int]] = {}
    for r in rows:
        assert r["status"] == "ok", r
        segments.setdefault(Path(r["source_uri"]).name, set()).add(r["segment_index"])
    for name, found in segments.items():
        assert found == set(range(len(found))), (name, found)
        tasks = Counter(r["task"] for r in rows if Path(r["source_uri"]).name == name)
        assert tasks == {"caption": len(found), "qa": len(found)}, (name, tasks)
    if complete:
        assert set(segments) == {p.name for p in videos.iterdir()}


def _as_soon_as(markers: Callable[[], bool], action: Callable[[], None], timeout_s: float = 300) -> list[str]:
    """Run ``action`` in a thread as soon as ``markers()`` is true; returns a list that holds "done" after."""
    done: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if markers():
                action()
                done.append("done")
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return done


def _staged_or_committed(output: Path) -> bool:
    """Whether the writers have received model output: a segment staged or a video committed."""
    staged = any(p.is_file() for p in (output / "_staging").rglob("*")) if (output / "_staging").is_dir() else False
    return staged or any((output / "_ledger").glob("*.json"))


def test_a_killed_model_actor_is_replaced_and_nothing_is_lost(
    pipeline_ray: None, fault_videos: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    config = _config(fault_videos, str(output), pipeline_model_dir)
    killed: list[int] = []

    def kill_actor() -> None:
        pids = pids_titled(MODEL_ACTOR_TITLE)
        assert pids, "no model actor process found"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    # The first staged segment, not the first marker: on a loaded machine the tiny model can answer every batch
    # (and its actors end) before the slower commit stage writes its first marker.
    done = _as_soon_as(lambda: _staged_or_committed(output), kill_actor)
    summary = run_pipeline(config)
    assert done and killed, "the actor was not killed while the run was working"
    assert summary.processed == summary.seen == len(CLIPS) + SYNTHETIC and summary.uncommitted == 0
    assert_whole_videos_once(read_rows(config), fault_videos)


def test_a_killed_driver_resumes_on_rerun_exactly_once(
    pipeline_ray: None, fault_videos: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    import ray

    output = tmp_path / "out"
    args = ["--input", str(fault_videos), "--output", str(output), "--model", str(pipeline_model_dir)]
    args += ["--question", QUESTION, "--segment-seconds", "5", "--frames", "2", "--max-new-tokens", "4"]
    args += ["--batch-size", "1", "--decode-cpus", "0.5", "--run-id", "killed"]
    # The driver joins the test session's Ray, as a job's driver joins its cluster; killing it ends the job.
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.caption", *args, "--ray-address", address],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not any((output / "_ledger").glob("*.json")):
            assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before its first commit"
            assert time.monotonic() < deadline, "no commit within 300 s"
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)  # the fault (or the cleanup of a failed wait)
        driver.wait(timeout=60)
    first = read_rows(_config(fault_videos, str(output), pipeline_model_dir))
    assert_whole_videos_once(first, fault_videos, complete=False)  # readers see whole videos only
    assert 0 < len({r["source_uri"] for r in first}) < len(CLIPS) + SYNTHETIC

    from jobs.caption import main

    time.sleep(2)  # Ray notices the dead driver and stops its job's actors and tasks
    summary = main([*args[:-1], "resumed"])
    assert summary["skipped"] >= len({r["source_uri"] for r in first})
    rows = read_rows(_config(fault_videos, str(output), pipeline_model_dir))
    assert_whole_videos_once(rows, fault_videos)
    assert {r["run_id"] for r in rows} <= {"killed", "resumed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_s3_outage_while_writing_completes_or_fails_cleanly_then_a_rerun_is_exact(
    pipeline_ray: None, fault_videos: Path, pipeline_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "outage", "AWS_SECRET_ACCESS_KEY": "outage"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="outage-out")
        config = _config(
            fault_videos,
            "s3://outage-out/rows",
            pipeline_model_dir,
            s3_endpoint_url=endpoint,
            s3_options={"key": "outage", "secret": "outage"},
            run_id="outage",
        )

        def committed() -> bool:  # a marker (.json), not the run's _ledger/_epoch
            listing = client.list_objects_v2(Bucket="outage-out", Prefix="rows/_ledger/")
            return any(o["Key"].endswith(".json") for o in listing.get("Contents", []))

        def outage() -> None:
            servers[0].stop()  # moto keeps its buckets in this process: the restarted server serves them again
            time.sleep(4)
            servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
            servers[-1].start()

        done = _as_soon_as(committed, outage)
        try:
            summary = run_pipeline(config)
            outcome = f"completed: {summary}"
        except PipelineError as err:
            outcome = f"failed: {err}"
            assert str(err).strip(), "the failure has no message"
        deadline = time.monotonic() + 30
        while not done:
            assert time.monotonic() < deadline, f"the outage never happened ({outcome})"
            time.sleep(0.1)
        # Whatever happened, readers see whole videos only, and a rerun completes the set exactly once.
        assert_whole_videos_once(read_rows(config), fault_videos, complete=False)
        run_pipeline(config.replace(run_id="after-outage"))
        assert_whole_videos_once(read_rows(config), fault_videos)
    finally:
        servers[-1].stop()


# Process titles of our pipeline's tasks and actors (idle pooled workers are ``ray::IDLE``).
OUR_WORK = ("ray::MapWorker(", "ray::FlatMap(", "ray::ReadItems", "ray::Write")


def _runs_our_work(raylet: int) -> bool:
    """Whether one of this pipeline's tasks or actors runs below ``raylet``."""
    return any(command_line(pid).startswith(OUR_WORK) for pid in process_tree(raylet)[1:])


def test_a_lost_worker_node_leaves_the_run_to_the_head_exactly_once(
    fault_videos: Path, pipeline_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Ray nodes on one machine (``ray.cluster_utils.Cluster``: ``ray start --address`` refuses to join
    unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, which moves Ray off loopback). While the worker node runs one
    of our tasks or actors, the node's workers and then its raylet and agents are SIGKILLed; the head has CPUs
    for every stage (driver, decode, the model actor, the writer), so the run finishes there after Ray
    declares the node dead.

    The kill fires at the first moment our work runs on the worker node, the one moment every schedule has:
    waiting for a first commit as well made it depend on whether decoding outlasted that commit, and on a
    loaded machine it did not (the worker's tasks had all ended, nothing was lost, CI stop 32)."""
    import ray._private.utils
    from ray import ray_constants
    from ray.cluster_utils import Cluster

    # Cluster records its address in /tmp/ray for `ray.init("auto")`; nothing here needs it.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)

    def ports() -> dict[str, int]:  # the test session's Ray holds the default agent ports
        names = ("metrics_export_port", "runtime_env_agent_port", "dashboard_agent_listen_port")
        return {name: _free_port() for name in names}

    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 * 2**20}
    temp_dir = tempfile.mkdtemp(prefix="r2", dir="/tmp")
    cluster = Cluster()
    try:
        cluster.add_node(**common, **ports(), num_cpus=4, include_dashboard=False, temp_dir=temp_dir)
        worker = cluster.add_node(**common, **ports(), num_cpus=2)
        raylet = worker.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        output = tmp_path / "out"
        args = ["--input", str(fault_videos), "--output", str(output), "--model", str(pipeline_model_dir)]
        args += ["--question", QUESTION, "--segment-seconds", "5", "--frames", "2", "--max-new-tokens", "4"]
        args += ["--batch-size", "1", "--decode-cpus", "0.5", "--run-id", "two-nodes"]
        args += ["--ray-address", cluster.address]
        finished: list[float] = []
        killed: list[float] = []

        def lose_the_node() -> None:
            for pid in process_tree(raylet)[1:]:  # the workers first: an abrupt loss, not a fate-shared exit
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            cluster.remove_node(worker, allow_graceful=False)  # SIGKILLs the raylet and the node's agents
            killed.append(time.monotonic())

        done = _as_soon_as(  # stops polling /proc once the driver has ended
            lambda: not finished and _runs_our_work(raylet),
            lose_the_node,
        )
        loopback = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # or 127.0.0.1 means the node IP
        driver = subprocess.run(
            [sys.executable, "-m", "jobs.caption", *args],
            cwd=ROOT,
            env=loopback,
            capture_output=True,
            text=True,
            timeout=900,
        )
        finished.append(time.monotonic())
        assert done and killed[0] < finished[0], "the worker node was not lost while it ran our work"
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert_whole_videos_once(read_rows(_config(fault_videos, str(output), pipeline_model_dir)), fault_videos)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
