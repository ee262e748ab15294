"""Are the accelerators fed? Their batches recovered from a run's result rows, each one's busy fraction over
the steady state, and the decode capacity that bounds what they can be fed.

* A batch: the rows of one model call share its ``latency_ms`` and its worker (the stand-in names its actor in
  ``sparse_config_json``; a real engine's rows all count as one worker) and are created right after the call
  returns: it ran from ``min(created_at) - latency`` to ``max(created_at)``.
* The steady state: from the moment every accelerator has started its first batch to the moment the first one
  ends its last (before, actors are still starting; after, the work has run out for some of them).
* Decode capacity: segments per CPU-second of raw decord ``get_batch`` of the pipeline's own frames at their
  stored resolution (process CPU time, so another tenant of the machine does not change it), times the CPUs the
  decoders get. The bound on throughput is ``min(decode capacity, accelerator capacity)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import PipelineConfig
from pipeline.harness.standin import STAND_IN
from pipeline.stages.decode import plan_segments

__all__ = ["Batch", "RawDecode", "SteadyState", "batches", "raw_decode", "steady_state"]


@dataclass(frozen=True)
class Batch:
    """One model call: its worker, when it ran (epoch seconds) and how many segments it took."""

    worker: str
    start: float
    end: float
    segments: int


@dataclass(frozen=True)
class SteadyState:
    """The window in which every accelerator had work, and each one's busy fraction over it."""

    start: float
    end: float
    busy: dict[str, float]  # worker -> busy seconds in the window / window length
    segments: int  # segments of the batches that ended inside the window

    @property
    def window_s(self) -> float:
        return self.end - self.start

    @property
    def segments_per_s(self) -> float:
        return self.segments / self.window_s if self.window_s > 0 else float("nan")


def batches(table: pa.Table) -> list[Batch]:
    """The model calls of a run, from its result rows (rows without a ``latency_ms`` never reached one).

    Raises:
        ValueError: no row came from a model call.
    """
    ok = table.filter(pc.is_valid(table["latency_ms"]))
    if ok.num_rows == 0:
        raise ValueError(f"no row came from a model call (all {table.num_rows} rows are errors)")
    calls: dict[tuple[str, float], tuple[float, float, set[tuple[str, int]]]] = {}
    columns = ("sparse_config_json", "latency_ms", "created_at", "video_id", "segment_index")
    for provenance, latency, created, video, segment in zip(*(ok[c].to_pylist() for c in columns), strict=True):
        key = (_worker(provenance), latency)
        at = created.timestamp()
        first, last, segments = calls.get(key, (at, at, set()))
        segments.add((video, segment))
        calls[key] = (min(first, at), max(last, at), segments)
    found = [Batch(w, first - latency / 1000, last, len(s)) for (w, latency), (first, last, s) in calls.items()]
    return sorted(found, key=lambda b: b.start)


def _worker(provenance: str | None) -> str:
    """The stand-in actor that wrote a row (:meth:`pipeline.harness.standin.StandInEngine.describe`), else "model"."""
    try:
        return str(json.loads(provenance or "{}")[STAND_IN]["worker"])
    except (KeyError, TypeError, json.JSONDecodeError):
        return "model"


def steady_state(found: list[Batch]) -> SteadyState:
    """Each worker's busy fraction between the last first start and the first last end of the workers.

    When that window is empty (one worker finished before another started), the whole span of the batches is
    used instead.
    """
    workers = sorted({b.worker for b in found})
    start = max(min(b.start for b in found if b.worker == w) for w in workers)
    end = min(max(b.end for b in found if b.worker == w) for w in workers)
    if end <= start:
        start, end = min(b.start for b in found), max(b.end for b in found)
    busy = {w: _overlap((b for b in found if b.worker == w), start, end) / (end - start) for w in workers}
    segments = sum(b.segments for b in found if start < b.end <= end + 1e-6)
    return SteadyState(start, end, busy, segments)


def _overlap(found: Iterable[Batch], start: float, end: float) -> float:
    return sum(max(0.0, min(b.end, end) - max(b.start, start)) for b in found)


@dataclass(frozen=True)
class RawDecode:
    """Raw decord on some videos: the segments the pipeline cuts from them and the CPU seconds of decoding
    their frames (open, timestamps and one ``get_batch`` per segment, at the stored resolution)."""

    segments: int
    cpu_s: float
    wall_s: float
    failed: list[str]  # videos decord could not open (the pipeline decodes them with PyAV)

    @property
    def segments_per_cpu_s(self) -> float:
        return self.segments / self.cpu_s if self.cpu_s > 0 else float("nan")


def raw_decode(paths: list[Path], config: PipelineConfig) -> RawDecode:
    """Decode the frames the pipeline samples from ``paths`` with raw decord, one thread, in this process."""
    import decord

    segments, cpu, wall, failed = 0, 0.0, 0.0, []
    for path in paths:
        began_cpu, began = time.process_time(), time.perf_counter()
        try:
            reader = decord.VideoReader(str(path), num_threads=1)
        except (decord.DECORDError, RuntimeError):
            failed.append(path.name)
            continue
        times = reader.get_frame_timestamp(range(len(reader)))
        plans = plan_segments(times[:, 0], float(times[-1, 1]), config.frames_per_segment, config.segment_seconds)
        for plan in plans:
            reader.get_batch(plan.frame_indices.tolist()).asnumpy()
        del reader
        cpu += time.process_time() - began_cpu
        wall += time.perf_counter() - began
        segments += len(plans)
    return RawDecode(segments, cpu, wall, failed)
