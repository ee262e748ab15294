"""Memory and CPU time of a process tree over time, for load runs: is a long run's memory flat, and what does
the whole job cost in CPU seconds?

A local Ray started by the driver (``ray.init()``) runs its raylet, object store and every worker below the
driver process, so the tree under the driver is the whole job. Sizes are PSS (``/proc/PID/smaps_rollup``):
shared pages, such as the object store's mapping, are split between the processes that map them instead of
being counted once per process as RSS would. CPU time is each process's own user + system time
(``/proc/PID/stat``), counted from the first sample for the processes already running then: CPU seconds, unlike
wall time, do not grow when other tenants share the machine. A process that ends between two samples loses its
time since the last one (a sampling period of a second loses little: Ray's workers and daemons live for the run).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


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


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    """``(start time, user + system time)`` of one process in clock ticks, or None when it has ended. The start
    time tells a process from a later one that reuses its id."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state (index 0), ..., utime (11), stime (12), ..., starttime (19).
    return int(fields[19]), int(fields[11]) + int(fields[12])


def process_name(pid: int) -> str:
    """What a process is, for attributing its CPU time: a Ray worker's title (``ray::IDLE``,
    ``ray::MapWorker(MapBatches(Predictor))``), a Python program's script or module, else the program's name;
    "" once it has ended."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    program = Path(argv[0]).name
    if argv[0].startswith("ray::"):
        return argv[0].split(" ")[0]
    if program.startswith("python"):
        args = [a for a in argv[1:] if a]
        if "-m" in args[:-1]:
            return args[args.index("-m") + 1]
        if "-c" in args:
            return f"{program} -c"
        rest = [a for a in args if not a.startswith("-")]
        return Path(rest[0]).name if rest else program
    return program


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
    """One look at the tree: seconds since sampling began, total PSS, process count, largest process, the root
    process's own PSS (the driver's, when the root is a job's driver), and the CPU seconds the tree has used
    since sampling began (every process that was in it at any sample)."""

    t_s: float
    total_bytes: int
    processes: int
    largest_bytes: int
    root_bytes: int = 0
    cpu_s: float = 0.0


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
    started_at: float = field(default=0.0, init=False)  # wall clock (time.time) of t_s = 0
    # CPU seconds per kind of process (process_name; a Ray worker under the last title other than ray::IDLE it
    # had), over the last block.
    cpu_by_name: dict[str, float] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> TreeMemorySampler:
        if not self.period_s > 0:
            raise ValueError(f"period_s must be positive, got {self.period_s}")
        self._stop.clear()
        began = time.monotonic()
        self.started_at = time.time()
        # (pid, start) -> CPU ticks when first seen (0 for a process born after the block's first look), and at
        # the latest look; its name for attribution.
        first: dict[tuple[int, int], int] = {}
        last: dict[tuple[int, int], int] = {}
        names: dict[tuple[int, int], str] = {}

        def take() -> None:
            opening = not last  # the block's first look: what the tree has used so far is not counted
            tree = process_tree(self.root)  # the root first
            sizes = [self.read(pid) for pid in tree]
            for pid in tree:
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    key = (pid, ticks[0])
                    first.setdefault(key, ticks[1] if opening else 0)
                    last[key] = ticks[1]
                    name = process_name(pid)
                    if name and (name != "ray::IDLE" or key not in names):
                        names[key] = name
            by_name: dict[str, float] = {}
            for key, used in last.items():
                name = names.get(key, "?")
                by_name[name] = by_name.get(name, 0.0) + (used - first[key]) / TICKS_PER_S
            self.cpu_by_name = by_name
            cpu = sum(by_name.values())
            at = time.monotonic() - began
            self.samples.append(MemorySample(at, sum(sizes), len(sizes), max(sizes), sizes[0], cpu))

        def loop() -> None:
            try:
                while not self._stop.wait(self.period_s):
                    take()
                take()  # the last look, when the block ends: the run's whole CPU time
            except BaseException as err:  # re-raised by __exit__: a sampler that died must not pass silently
                self._error = err

        take()  # the first look before the block's body runs: the CPU time counts from here
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


def cpu_seconds_between(samples: list[MemorySample], start_s: float, end_s: float) -> float:
    """The tree's CPU seconds between two times (seconds since sampling began), read linearly between the
    samples around each time (clamped to the first and last sample).

    Raises:
        ValueError: fewer than 2 samples, or ``end_s < start_s``.
    """
    if len(samples) < 2 or end_s < start_s:
        raise ValueError(f"need 2 or more samples and start_s <= end_s, got {len(samples)} and {start_s}..{end_s}")

    def at(t: float) -> float:
        if t <= samples[0].t_s:
            return samples[0].cpu_s
        for before, after in itertools.pairwise(samples):
            if t <= after.t_s:
                span = after.t_s - before.t_s
                share = (t - before.t_s) / span if span > 0 else 1.0
                return before.cpu_s + share * (after.cpu_s - before.cpu_s)
        return samples[-1].cpu_s

    return at(end_s) - at(start_s)


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
