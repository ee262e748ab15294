"""Pipeline throughput: the Ray pipeline against a plain sequential loop on the same inputs and machine.

Both runs use the same config, model and inputs and write through the same ledger, one after the other in
one process. For each:

* whole run: wall time from start to the last committed row (Ray start-up, model load and all);
* steady state: from the start of the first batched ``generate`` to the end of the last one, so start-up
  and model load are left out; videos/s and segments/s over that window;
* model busy: the summed wall time of the batched ``generate`` calls over the steady-state window (per model
  worker). The batches are recovered from the result rows: the rows of one batch share its ``latency_ms``
  and are created right after its ``generate`` returns.

Plus the decode cost per segment in process CPU time: our decode stage (probe, plan, decode, resize and crop to
model resolution), the same stage on PyAV (the fallback), and raw decord ``get_batch`` of the same frames at
their stored resolution.

And the cost of segmenting by shots (:func:`segmenting_cost`): the decode stage's process CPU time on one video
with fixed segments and with shots (the detection pass over a few frames a second, then the segments' frames).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.commit.ledger import Ledger
from pipeline.config import PipelineConfig
from pipeline.harness.utilisation import raw_decode
from pipeline.stages.decode import decode_rows, decode_segments, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.shots import ShotSegmenting
from pipeline.stages.sources import list_sources

__all__ = ["DecodeCost", "RunMeasure", "SegmentingCost", "decode_cost", "measure_rows", "plain_loop", "segmenting_cost"]


@dataclass(frozen=True)
class RunMeasure:
    """One run's throughput. Times in seconds; ``busy_fraction`` is per model worker."""

    mode: str
    wall_s: float
    videos: int
    segments: int
    rows: int
    window_s: float
    batches: int
    busy_s: float
    busy_fraction: float
    videos_per_s_whole: float
    segments_per_s_whole: float
    videos_per_s_steady: float
    segments_per_s_steady: float
    startup_s: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def measure_rows(mode: str, table: pa.Table, wall_s: float, workers: int = 1) -> RunMeasure:
    """Throughput of a finished run from its result rows.

    Args:
        mode: a label ("ray" or "loop").
        table: every result row of the run.
        wall_s: the run's whole wall time.
        workers: model workers that ran in parallel (the busy time is shared among them).

    Raises:
        ValueError: the rows hold no successful model batch (nothing to measure).
    """
    ok = table.filter(pc.is_valid(table["latency_ms"]))
    if ok.num_rows == 0:
        raise ValueError(f"{mode}: no row came from a model batch (all {table.num_rows} rows are errors)")
    batches: dict[float, tuple[float, float]] = {}  # latency_ms -> (first created, last created), epoch s
    for latency, created in zip(ok["latency_ms"].to_pylist(), ok["created_at"].to_pylist(), strict=True):
        at = created.timestamp()
        first, last = batches.get(latency, (at, at))
        batches[latency] = (min(first, at), max(last, at))
    starts = [first - latency / 1000 for latency, (first, _) in batches.items()]
    window = max(last for _, last in batches.values()) - min(starts)
    busy = sum(batches) / 1000
    videos = len(set(table["video_id"].to_pylist()))
    segments = len(set(zip(table["video_id"].to_pylist(), table["segment_index"].to_pylist(), strict=True)))
    return RunMeasure(
        mode=mode,
        wall_s=wall_s,
        videos=videos,
        segments=segments,
        rows=table.num_rows,
        window_s=window,
        batches=len(batches),
        busy_s=busy,
        busy_fraction=busy / (workers * window) if window > 0 else 1.0,
        videos_per_s_whole=videos / wall_s,
        segments_per_s_whole=segments / wall_s,
        videos_per_s_steady=videos / window if window > 0 else float("nan"),
        segments_per_s_steady=segments / window if window > 0 else float("nan"),
        startup_s=wall_s - window,
    )


def read_rows(config: PipelineConfig) -> pa.Table:
    """Every committed result row under ``config.output_uri``."""
    fs, base = config.output.filesystem()
    return pads.dataset(base, filesystem=fs, format="parquet").to_table()


def plain_loop(config: PipelineConfig) -> float:
    """The baseline: list, decode, infer and write one video after another in this process, with the same
    stages, batch size and ledger as the pipeline (but no Ray and no overlap). Returns its wall time."""
    began = time.perf_counter()
    config = config.resolved()
    fs = config.storage.fsspec(config.input_uri)
    ledger = Ledger(*config.output.filesystem(), partition=config.partition)
    key = config.config_key()
    items = [source_row(s, key, config.questions) for s in list_sources(config.input_uri, fs)]
    pending = set(ledger.pending([i["ledger_key"] for i in items], config.retry_errors))
    predictor = Predictor(config.model_settings, config.answering)
    from sparsevlm.engine import inspect_checkpoint

    frame_size = inspect_checkpoint(config.model).frame_size
    batch: list[dict[str, Any]] = []
    for item in (i for i in items if i["ledger_key"] in pending):
        for row in decode_rows(item, config.decoding, frame_size):
            batch.append(row)
            if len(batch) == config.batch_size:
                ledger.write_rows(predictor(pa.Table.from_pylist(batch)), config.run_id)
                batch = []
    if batch:
        ledger.write_rows(predictor(pa.Table.from_pylist(batch)), config.run_id)
    return time.perf_counter() - began


@dataclass(frozen=True)
class DecodeCost:
    """CPU time per segment of decoding one video: our decode stage (``decoder`` is the one it chose), the same
    stage forced onto PyAV, and raw decord (None where decord cannot open the file)."""

    video: str
    segments: int
    decoder: str
    ours_ms_per_segment: float
    pyav_ms_per_segment: float
    raw_decord_ms_per_segment: float | None

    @property
    def ratio(self) -> float | None:
        """Ours over raw decord."""
        raw = self.raw_decord_ms_per_segment
        return self.ours_ms_per_segment / raw if raw else None


def decode_cost(path: Path, config: PipelineConfig, frame_size: int, repeats: int = 3) -> DecodeCost:
    """The least process CPU time over ``repeats`` of decoding every segment of ``path`` (the least: another
    tenant of the machine only ever adds time), ours vs ours on PyAV vs raw decord of the same frames."""
    ours: list[float] = []
    pyav: list[float] = []
    raw: list[float] = []
    segments, decoder = 0, ""
    for _ in range(repeats):
        for times, choice in ((ours, "auto"), (pyav, "pyav")):
            began = time.process_time()
            info, stream = decode_segments(
                path,
                frames_per_segment=config.frames_per_segment,
                segment_seconds=config.segment_seconds,
                shots=config.shots,
                size=frame_size,
                max_duration_s=None,
                max_bytes=None,
                decoder=choice,  # type: ignore[arg-type]
            )
            segments = sum(1 for _ in stream)
            times.append(time.process_time() - began)
            decoder = info.decoder if choice == "auto" else decoder
        measured = raw_decode([path], config)
        if not measured.failed:
            raw.append(measured.cpu_s)
    per = 1000 / max(segments, 1)
    return DecodeCost(path.name, segments, decoder, per * min(ours), per * min(pyav), per * min(raw) if raw else None)


@dataclass(frozen=True)
class SegmentingCost:
    """Process CPU seconds of decoding every segment of one video (the least over the repeats), with fixed
    segments and with shots, on the decoder the pipeline picks (``decoder``)."""

    video: str
    decoder: str
    duration_s: float
    fixed_segments: int
    shot_segments: int
    fixed_cpu_s: float
    shots_cpu_s: float

    @property
    def ratio(self) -> float:
        """Shots over fixed."""
        return self.shots_cpu_s / self.fixed_cpu_s

    @property
    def extra_cpu_s_per_minute(self) -> float:
        """What shots add per minute of video."""
        return (self.shots_cpu_s - self.fixed_cpu_s) * 60 / self.duration_s


def segmenting_cost(
    path: Path,
    shots: ShotSegmenting,
    *,
    segment_seconds: float = 10.0,
    frames_per_segment: int = 8,
    frame_size: int = 224,
    repeats: int = 3,
) -> SegmentingCost:
    """The least process CPU time over ``repeats`` (another tenant of the machine only ever adds time) of
    :func:`~pipeline.stages.decode.decode_segments` on ``path`` with ``segment_seconds`` and with ``shots``."""
    cpu: dict[str, list[float]] = {"fixed": [], "shots": []}
    counts: dict[str, int] = {}
    decoder, duration = "", 0.0
    for _ in range(repeats):
        for mode, by_shots in (("fixed", None), ("shots", shots)):
            began = time.process_time()
            info, segments = decode_segments(
                path,
                frames_per_segment=frames_per_segment,
                segment_seconds=segment_seconds,
                shots=by_shots,
                size=frame_size,
                max_duration_s=None,
                max_bytes=None,
            )
            counts[mode] = sum(1 for _ in segments)
            cpu[mode].append(time.process_time() - began)
            decoder, duration = info.decoder, info.duration_s
    return SegmentingCost(
        path.name, decoder, duration, counts["fixed"], counts["shots"], min(cpu["fixed"]), min(cpu["shots"])
    )
