"""The crash test hook (pipeline/harness/crash.py): inert unless set, kills (or stops) exactly once, refuses a malformed
value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.harness.crash import ENV
from tests.pipeline.crash_jobs import stopped

ROOT = Path(__file__).resolve().parents[2]
PROBE = "from pipeline.harness.crash import crash_point; crash_point('marker'); crash_point('part'); print('alive')"


def _probe(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if value is not None:
        env[ENV] = value
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)


def test_the_hook_kills_at_its_step_once_and_is_inert_otherwise(tmp_path: Path) -> None:
    flag = tmp_path / "crashed"
    assert _probe(None).stdout == "alive\n"
    assert _probe(f"indexed:process:{flag}").stdout == "alive\n" and not flag.exists()  # another step
    killed = _probe(f"part:process:{flag}")
    assert killed.returncode == -9 and killed.stdout == ""
    step, pid = flag.read_text().split()
    assert step == "part" and int(pid) > 0
    assert _probe(f"part:process:{flag}").stdout == "alive\n"  # the flag exists: a retried task runs through


def test_a_malformed_value_names_the_variable() -> None:
    done = _probe("after-part:process:/tmp/x")
    assert done.returncode == 1 and f"{ENV}='after-part:process:/tmp/x': expected <step>:<scope>" in done.stderr


def test_the_pause_scope_stops_the_process_until_it_is_continued(tmp_path: Path) -> None:
    flag = tmp_path / "paused"
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env[ENV] = f"part:pause:{flag}"  # not the session's leader here: only the process itself stops
    probe = subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        while not stopped(probe.pid):
            assert probe.poll() is None, "the probe ran through instead of stopping"
            time.sleep(0.02)
        step, pid = flag.read_text().split()
        assert step == "part" and int(pid) == probe.pid
        os.kill(probe.pid, signal.SIGCONT)
        out, _ = probe.communicate(timeout=60)
    finally:
        probe.kill()
    assert probe.returncode == 0 and out == "alive\n"
