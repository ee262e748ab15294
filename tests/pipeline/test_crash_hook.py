"""The crash test hook (pipeline/crash.py): inert unless set, kills exactly once, refuses a malformed value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.crash import ENV

ROOT = Path(__file__).resolve().parents[2]
PROBE = "from pipeline.crash import crash_point; crash_point('marker'); crash_point('part'); print('alive')"


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
