"""The cluster path for real: a Ray head on loopback, `ray job submit` of the caption job, status, logs, output.

Runs its own head (`ray start --head --block`, stopped with SIGTERM, which drains and stops only that head),
so it never touches the test session's in-process Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",  # `python` in the entrypoint = this one
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A local head with a dashboard on 127.0.0.1; yields the job-submission address.

    4 logical CPUs on this 2-core machine: the driver (0.5), a decode task (1), the model actor (1) and the
    writer (0.25) must all fit at once, or the actor waits for a CPU that never frees (a scheduling deadlock).
    """
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")
    dashboard = _free_port()
    head = subprocess.Popen(
        [
            *(RAY, "start", "--head", "--block", "--num-cpus=4", "--dashboard-host=127.0.0.1"),
            *(f"--dashboard-port={dashboard}", f"--port={_free_port()}", f"--temp-dir={temp_dir}"),
            # Own ports for every agent: the test session's Ray already holds the defaults, and a head whose
            # dashboard agent cannot bind answers every submission with "No available agent".
            *(f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}"),
            *(f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"),
            *(f"--ray-client-server-port={_free_port()}", f"--node-manager-port={_free_port()}"),
            f"--object-manager-port={_free_port()}",
            "--disable-usage-stats",
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([RAY, "job", "list", "--address", address], env=ENV, capture_output=True).returncode:
            if time.monotonic() > deadline or head.poll() is not None:
                pytest.fail("the Ray head did not start within 90 s")
            time.sleep(2)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops this head's processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_caption(ray_head: str, assets: Path, pipeline_model_dir: Path, tmp_path: Path) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    shutil.copy(assets / "gradio_video_sample.webm", videos / "earth.webm")
    runtime_env = '{"excludes": [".venv", ".git", "tests/assets", "*.egg-info"]}'
    entrypoint = ["python", "-m", "jobs.caption", "--input", str(videos), "--output", str(out)]
    entrypoint += ["--model", str(pipeline_model_dir), "--frames", "2", "--max-new-tokens", "3", "--question", "what?"]
    command = [
        *(RAY, "job", "submit", "--address", ray_head, "--working-dir", str(REPO)),
        *("--runtime-env-json", runtime_env, "--entrypoint-num-cpus", "0.5", "--submission-id", "caption-test"),
        *("--", *entrypoint),
    ]
    for _ in range(10):  # the dashboard answers before the node's job agent is up ("No available agent")
        submit = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        time.sleep(3)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    status = subprocess.run(
        [RAY, "job", "status", "--address", ray_head, "caption-test"], env=ENV, capture_output=True, text=True
    )
    assert "succeeded" in status.stdout.lower()
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", ray_head, "caption-test"], env=ENV, capture_output=True, text=True
    )
    assert "1 processed (0 failed, 0 partial)" in logs.stdout  # the summary block jobs print
    table = ds.dataset(out, format="parquet").to_table()
    assert table.num_rows == 2 and set(table["status"].to_pylist()) == {"ok"}
