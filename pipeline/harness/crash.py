"""A test hook: SIGKILL (or SIGSTOP) a process at a named step of the commit protocol. Inert unless the variable
is set.

The crash tests (tests/pipeline/test_crash_processes.py) run the real jobs as subprocesses and need them to
die at one exact point, as a machine or a process really dies: no ``finally``, no ``atexit``, a lease left
behind, Ray's workers gone mid-write. With ::

    PIPELINE_CRASH_AT=<step>:<scope>:<flag file>

the first process of the job that reaches ``<step>`` creates ``<flag file>`` (``O_EXCL``: exactly one
process ever crashes, so Ray's retry of a killed write task runs through), writes ``<step> <pid>`` into it,
and sends SIGKILL to

- ``process``: itself (the driver for a driver step; the Ray worker that writes, for a commit step);
- ``job``: the job's driver, then itself: the driver is the leader of the process's session (start the job
  with ``start_new_session``), and is killed only if it carries the variable too (never a shell or pytest).
  A local Ray that the driver started goes down with it (Ray's reaper and the raylet follow their parent).
- ``pause``: as ``job``, but SIGSTOP instead of SIGKILL: the driver and the process stand still (a stopped VM,
  a driver and a write task paused past the lease's TTL) until the test sends them SIGCONT; the flag file
  names the process, and the driver is the session's leader. The rest of the job's Ray keeps running.

The variable is read once, at import; unset, :func:`crash_point` is one comparison with ``None``. Ray workers
of a local Ray inherit it from the driver that started that Ray. Never set it in production, nor in a
process that shares its process group with anything else (``job`` would kill that too).

Steps (:data:`STEPS`): in the writer (``pipeline/commit/ledger.py``), ``staged`` (a segment written to staging),
``fenced`` (the commit's lease check passed, nothing of it written yet), ``quality`` (the video's quality file
written, no part file yet), ``part`` (a part file written, no
marker yet), ``marker`` (the marker written and the key's other markers deleted), ``replaced`` (a retried
video's old part file deleted), ``committed`` (the key's staging deleted: the commit is complete); in the
driver, ``reconciled`` (after the reconcile), ``summary`` (the run record written), ``indexed`` (compaction:
the new index file written, the markers not yet deleted), ``compacted`` (the markers deleted).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "STEPS", "crash_point"]

ENV = "PIPELINE_CRASH_AT"
STEPS = (
    "staged",
    "fenced",
    "quality",
    "part",
    "marker",
    "replaced",
    "committed",
    "reconciled",
    "summary",
    "indexed",
    "compacted",
)
SCOPES = ("process", "job", "pause")


def _parse(value: str | None) -> tuple[str, str, str] | None:
    if not value:
        return None
    step, _, rest = value.partition(":")
    scope, _, flag = rest.partition(":")
    if step not in STEPS or scope not in SCOPES or not flag:
        raise ValueError(
            f"{ENV}={value!r}: expected <step>:<scope>:<flag file> with a step of {', '.join(STEPS)} "
            f"and a scope of {', '.join(SCOPES)} (a test hook; unset it outside the crash tests)"
        )
    return step, scope, flag


_ARMED = _parse(os.environ.get(ENV))


def crash_point(step: str) -> None:
    """SIGKILL (``pause``: SIGSTOP) this process, and for ``job`` and ``pause`` the job's driver, here if
    :data:`ENV` names ``step`` and no process of the job has reached it yet; otherwise do nothing."""
    if _ARMED is None or _ARMED[0] != step:
        return
    _, scope, flag = _ARMED
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process (or an earlier attempt of this task) crashed already
        return
    os.write(fd, f"{step} {os.getpid()}\n".encode())
    os.fsync(fd)
    os.close(fd)
    leader = os.getsid(0)
    sent = signal.SIGSTOP if scope == "pause" else signal.SIGKILL
    if scope != "process" and leader != os.getpid() and _armed_process(leader):
        os.kill(leader, sent)
    os.kill(os.getpid(), sent)


def _armed_process(pid: int) -> bool:
    """Whether process ``pid`` was started with :data:`ENV` set (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return any(item.startswith(f"{ENV}=".encode()) for item in f.read().split(b"\0"))
    except OSError:
        return False
