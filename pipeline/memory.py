"""Memory of a process tree over time, for load runs: is a long run's memory flat?

A local Ray started by the driver (``ray.init()``) runs its raylet, object store and every worker below the
driver process, so the tree under the driver is the whole job. Sizes are PSS (``/proc/PID/smaps_rollup``):
shared pages, such as the object store's mapping, are split between the processes that map them instead of
being counted once per process as RSS would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PROC = Path("/proc")


def process_tree(root: int) -> list[int]:
    """``root`` and every live process below it (from the parent links in ``/proc/PID/stat``)."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                # The field after the ")" that closes the command name is the state, then the parent id.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we read
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process; 0 when it has ended or cannot be read."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


@dataclass(frozen=True)
class MemorySample:
    """One look at the tree: seconds since sampling began, total PSS, process count, largest process, and
    the root process's own PSS (the driver's, when the root is a job's driver)."""

    t_s: float
    total_bytes: int
    processes: int
    largest_bytes: int
    root_bytes: int = 0


@dataclass
class TreeMemorySampler:
    """Samples the PSS of the tree under ``root`` every ``period_s`` in a background thread while in use
    (``read`` gives one process's size; an error in the thread is raised when the block ends).

    Usage::

        with TreeMemorySampler(os.getpid()) as sampler:
            run()
        sampler.samples
    """

    root: int
    period_s: float = 2.0
    read: Callable[[int], int] = pss_bytes
    samples: list[MemorySample] = field(default_factory=list, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> TreeMemorySampler:
        if not self.period_s > 0:
            raise ValueError(f"period_s must be positive, got {self.period_s}")
        self._stop.clear()
        began = time.monotonic()

        def loop() -> None:
            try:
                while True:
                    sizes = [self.read(pid) for pid in process_tree(self.root)]  # the root first
                    at = time.monotonic() - began
                    self.samples.append(MemorySample(at, sum(sizes), len(sizes), max(sizes), sizes[0]))
                    if self._stop.wait(self.period_s):
                        return
            except BaseException as err:  # re-raised by __exit__: a sampler that died must not pass silently
                self._error = err

        self._thread = threading.Thread(target=loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60 + self.period_s)
            if self._thread.is_alive():
                raise RuntimeError("the memory sampler did not stop within 60 s (a /proc read hung?)")
        if self._error is not None and error is None:
            raise self._error


def growth(samples: list[MemorySample], warm_fraction: float = 0.25) -> float:
    """Relative growth of total PSS from just after warm-up to the end of the run.

    The median of the samples in the second quarter of the run's time (by default) against the median of
    the last quarter: medians, because a single batch in flight moves one sample, not a trend.

    Raises:
        ValueError: fewer than 8 samples (the run was too short to say anything about a trend).
    """
    if len(samples) < 8:
        raise ValueError(f"{len(samples)} memory samples: a trend needs at least 8; sample more often or run longer")
    end = samples[-1].t_s
    early = [s.total_bytes for s in samples if warm_fraction * end <= s.t_s < 2 * warm_fraction * end]
    late = [s.total_bytes for s in samples if s.t_s >= (1 - warm_fraction) * end]
    if not early or not late:
        raise ValueError("the samples do not cover the run evenly; sample more often")
    return _median(late) / _median(early) - 1


def _median(values: list[int]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
