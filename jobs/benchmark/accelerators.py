"""``pipeline --stand-in``: the pipeline in its production shape, model actors on (stand-in) accelerators and
decoders on the CPUs, at 1, 2 and 4 accelerators: are the accelerators fed, and what limits the throughput?

Per accelerator count, one run of the real chain (``run_pipeline``: list, decode, Predictor, ledger) in a Ray
started for it, with that many units of :data:`pipeline.harness.standin.STAND_IN_RESOURCE`; the model actors hold one
unit each and no CPU, and sleep for ``--stand-in-ms-per-segment`` per segment. Reported per run:

* ``segments_per_s``: over the steady state (every accelerator working) and over the whole run;
* ``bound``: ``min(decode capacity, accelerator capacity)``; decode capacity = segments per CPU-second of raw
  decord on the same inputs (measured in this process before the runs) × the CPUs the decoders have;
* ``busy``: each accelerator's busy fraction over the steady state;
* ``first_batch_s``: from Ray being up to the first batch's start;
* ``cpu_s_per_segment``: CPU seconds of the whole job's process tree (driver, Ray's daemons and workers) over the
  run, per segment, and ``of_raw_decode``: that over raw decord's CPU seconds per segment on the same inputs
  (the pipeline's own cost: decoding, resizing, Ray, the ledger; the stand-in model actors sleep); the same
  over the steady window only (``steady_cpu_s_per_segment``, ``steady_of_raw_decode``), which leaves out the
  start-up (Ray's workers importing their modules, the model actors loading) and the tail. CPU seconds do not
  grow when other tenants share the machine, so these ratios hold under load where the rates do not;
* memory: the driver's and the workers' PSS over time (the whole job's process tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import av
import numpy as np

from jobs.benchmark.table import print_table, write_report
from jobs.flags import positive
from pipeline.config import PipelineConfig
from pipeline.harness.benchmark import read_rows
from pipeline.harness.memory import MemorySample, TreeMemorySampler, cpu_seconds_between, growth
from pipeline.harness.standin import STAND_IN_ANSWER, STAND_IN_RESOURCE, StandInCost
from pipeline.harness.utilisation import RawDecode, batches, raw_decode, steady_state
from pipeline.ray_env import local_ray
from pipeline.run import run_pipeline
from sparsevlm.tiny import CHECKPOINT_DIR

ASSETS = Path(__file__).resolve().parents[2] / "tests" / "assets"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")
MIB = 2**20
QUESTION = ("what happens?",)


def write_moving_video(path: Path, seconds: float, fps: int, size: tuple[int, int], seed: int = 0) -> None:
    """An H.264 MP4 of a bright square moving over noise (``size`` = width, height): a synthetic video of any
    length, cheap to encode at a low resolution."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 96, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(2 * fps)}  # a keyframe every 2 s, as cameras write
        side = max(4, min(width, height) // 4)
        for i in range(round(seconds * fps)):
            frame = background.copy()
            x, y = (7 * i) % (width - side), (3 * i) % (height - side)
            frame[y : y + side, x : x + side] = (255, 200, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def real_clips(count: int) -> list[Path]:
    """The first ``count`` real clips of ``tests/assets``, by name."""
    return sorted(p for p in ASSETS.iterdir() if p.suffix in VIDEO_SUFFIXES)[:count]


def prepare_inputs(folder: Path, ns: argparse.Namespace) -> list[Path]:
    """The run's videos: ``--synthetic`` moving-square videos (320x240, 24 fps) of ``--synthetic-seconds`` each,
    and ``--copies`` copies of the first ``--real`` clips of ``tests/assets``."""
    for i in range(ns.synthetic):
        write_moving_video(folder / f"moving_{i:03d}.mp4", ns.synthetic_seconds, 24, (320, 240), seed=i)
    for copy in range(ns.copies):
        for clip in real_clips(ns.real):
            shutil.copy(clip, folder / f"{clip.stem}_{copy}{clip.suffix}")
    return sorted(folder.iterdir())


def run_standin_benchmark(ns: argparse.Namespace) -> None:
    cost = StandInCost(ns.stand_in_ms_per_segment, ns.stand_in_ms_per_batch, ns.frame_size)
    work = Path(tempfile.mkdtemp(prefix="sbench", dir="/tmp"))
    try:
        videos = work / "videos"
        videos.mkdir()
        inputs = prepare_inputs(videos, ns)
        base = PipelineConfig(
            input_uri=str(videos),
            output_uri=str(work / "out"),
            model=str(CHECKPOINT_DIR),  # never loaded: its name keys the rows; the stand-in answers
            questions=QUESTION,
            batch_size=ns.batch_size,
            decode_cpus=ns.decode_cpus,
            segment_seconds=ns.segment_seconds,
            stand_in=cost,
        )
        raw = _raw_decode_once(inputs, base)
        runs = [_one_run(base, work, count, ns, raw) for count in ns.accelerators]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "inputs": {"videos": len(inputs), "synthetic": ns.synthetic, "synthetic_seconds": ns.synthetic_seconds},
        "config": {
            "cpus": ns.cpus,
            "decode_cpus_per_task": ns.decode_cpus,
            "batch_size": ns.batch_size,
            "segment_seconds": ns.segment_seconds,
            "stand_in": {"ms_per_segment": cost.ms_per_segment, "ms_per_batch": cost.ms_per_batch},
            "frame_size": cost.frame_size,
        },
        "raw_decode": {
            "segments": raw.segments,
            "cpu_s": round(raw.cpu_s, 3),
            "segments_per_cpu_s": round(raw.segments_per_cpu_s, 3),
            "cpu_s_per_segment": round(1 / raw.segments_per_cpu_s, 4),
            "decord_cannot_open": raw.failed,
        },
        "runs": runs,
    }
    columns = ["accelerators", "segments_per_s_steady", "bound", "of_bound", "busy_min", "first_batch_s"]
    columns += [
        "cpu_s_per_segment",
        "of_raw_decode",
        "steady_of_raw_decode",
        "wall_s",
        "duplicates",
        "driver_mib_last",
        "workers_mib_last",
    ]
    print_table([{**r, **r["memory"]} for r in runs], columns)
    write_report(report, ns.out)


def _raw_decode_once(inputs: list[Path], config: PipelineConfig) -> RawDecode:
    """Raw decord on the inputs, each distinct file once, scaled to every copy of it."""
    distinct: dict[int, tuple[Path, int]] = {}
    for path in inputs:
        size = path.stat().st_size
        first, count = distinct.get(size, (path, 0))
        distinct[size] = (first, count + 1)
    parts = [(raw_decode([path], config), count) for path, count in distinct.values()]
    return RawDecode(
        segments=sum(r.segments * n for r, n in parts),
        cpu_s=sum(r.cpu_s * n for r, n in parts),
        wall_s=sum(r.wall_s * n for r, n in parts),
        failed=[name for r, _ in parts for name in r.failed],
    )


def _one_run(base: PipelineConfig, work: Path, count: int, ns: argparse.Namespace, raw: RawDecode) -> dict[str, Any]:
    config = base.replace(output_uri=str(work / f"out-{count}"), workers=count, run_id=f"stand-in-{count}")
    with local_ray(ns.cpus, resources={STAND_IN_RESOURCE: count}):
        ray_up = time.time()
        with TreeMemorySampler(os.getpid(), period_s=ns.sample_seconds) as sampler:
            began = time.perf_counter()
            summary = run_pipeline(config)
            wall = time.perf_counter() - began
    table = read_rows(config)
    found = batches(table)
    steady = steady_state(found)
    rows = table.to_pylist()
    keys = Counter((r["video_id"], r["segment_index"], r["task"], r["question"]) for r in rows)
    segments = len({k[:2] for k in keys})
    assert config.stand_in is not None
    accelerator_capacity = count * config.stand_in.segments_per_s(config.batch_size)
    decode_capacity = raw.segments_per_cpu_s * ns.cpus
    bound = min(accelerator_capacity, decode_capacity)
    cpu_per_segment = sampler.samples[-1].cpu_s / segments
    in_window = steady.segments_per_s * steady.window_s
    steady_cpu = cpu_seconds_between(
        sampler.samples, steady.start - sampler.started_at, steady.end - sampler.started_at
    )
    steady_per_segment = steady_cpu / in_window if in_window > 0 else float("nan")
    return {
        "accelerators": count,
        "videos": summary.processed,
        "segments": segments,
        "rows": len(rows),
        "duplicates": sum(n - 1 for n in keys.values()),
        "stand_in_rows": sum(r["answer"] == STAND_IN_ANSWER for r in rows),
        "error_rows": sum(r["status"] != "ok" for r in rows),
        "wall_s": round(wall, 2),
        "first_batch_s": round(found[0].start - ray_up, 2),
        "batches": len(found),
        "mean_batch_segments": round(sum(b.segments for b in found) / len(found), 2),
        "steady_window_s": round(steady.window_s, 2),
        "segments_per_s_steady": round(steady.segments_per_s, 3),
        "segments_per_s_whole": round(segments / wall, 3),
        "decode_capacity": round(decode_capacity, 3),
        "accelerator_capacity": round(accelerator_capacity, 3),
        "bound": round(bound, 3),
        "of_bound": round(steady.segments_per_s / bound, 3),
        "decode_bound": decode_capacity < accelerator_capacity,
        "busy": {w: round(b, 3) for w, b in steady.busy.items()},
        "busy_min": round(min(steady.busy.values()), 3),
        "cpu_s": round(sampler.samples[-1].cpu_s, 2),
        "cpu_s_per_segment": round(cpu_per_segment, 4),
        "of_raw_decode": round(cpu_per_segment * raw.segments_per_cpu_s, 2),
        "steady_cpu_s_per_segment": round(steady_per_segment, 4),
        "steady_of_raw_decode": round(steady_per_segment * raw.segments_per_cpu_s, 2),
        # the run's CPU seconds by kind of process, largest first: which stage costs what
        "cpu_s_by_process": {
            name: round(cpu, 2) for name, cpu in sorted(sampler.cpu_by_name.items(), key=lambda kv: -kv[1]) if cpu > 0
        },
        "memory": _memory(sampler.samples, ns.sample_seconds),
    }


def _memory(samples: list[MemorySample], period_s: float) -> dict[str, Any]:
    """The driver's and the workers' PSS over the run (workers = the job's tree below the driver)."""
    try:
        trend: dict[str, Any] = {"growth_after_warm_up": round(growth(samples), 4)}
    except ValueError as err:  # a run too short to show a trend
        trend = {"growth_after_warm_up": None, "growth_not_measured": str(err)}
    return {
        "sample_seconds": period_s,
        **trend,
        "driver_mib_peak": round(max(s.root_bytes for s in samples) / MIB, 1),
        "driver_mib_last": round(samples[-1].root_bytes / MIB, 1),
        "workers_mib_peak": round(max(s.total_bytes - s.root_bytes for s in samples) / MIB, 1),
        "workers_mib_last": round((samples[-1].total_bytes - samples[-1].root_bytes) / MIB, 1),
        # [seconds, driver MiB, workers MiB, processes, the tree's CPU seconds so far]
        "samples": [
            [
                round(s.t_s, 1),
                round(s.root_bytes / MIB, 1),
                round((s.total_bytes - s.root_bytes) / MIB, 1),
                s.processes,
                round(s.cpu_s, 2),
            ]
            for s in samples
        ],
    }


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The ``pipeline`` command's flags for its stand-in shape."""
    group = parser.add_argument_group("stand-in accelerators (--stand-in)")
    group.add_argument("--stand-in", action="store_true", help="model actors on stand-in accelerators, no model")
    group.add_argument("--accelerators", type=positive(int), nargs="+", default=[1, 2, 4])
    group.add_argument("--stand-in-ms-per-segment", type=positive(float), default=100.0)
    group.add_argument("--stand-in-ms-per-batch", type=float, default=0.0)
    group.add_argument("--frame-size", type=positive(int), default=224, help="decoded frame side (Video-LLaVA: 224)")
    group.add_argument(
        "--synthetic-seconds", type=positive(float), default=30.0, help="with --stand-in: length of each --synthetic"
    )
    group.add_argument("--segment-seconds", type=positive(float), default=10.0)
    group.add_argument("--sample-seconds", type=positive(float), default=1.0, help="memory sampling period")


def run_split_benchmark(ns: argparse.Namespace) -> None:
    """One long synthetic video through the stand-in pipeline on ``--cpus`` decoders: one decode task vs split."""
    work = Path(tempfile.mkdtemp(prefix="split", dir="/tmp"))
    try:
        videos = work / "videos"
        videos.mkdir()
        video = videos / "long.mp4"
        began = time.perf_counter()
        write_moving_video(video, ns.seconds, ns.fps, (320, 240))
        mib = video.stat().st_size / MIB
        print(f"wrote a {ns.seconds:.0f} s video ({mib:.1f} MiB) in {time.perf_counter() - began:.0f} s")
        base = PipelineConfig(
            input_uri=str(videos),
            output_uri=str(work / "out"),
            model=str(CHECKPOINT_DIR),  # never loaded
            questions=QUESTION,
            batch_size=8,
            decode_cpus=1.0,
            stand_in=StandInCost(ms_per_segment=0.5, frame_size=ns.frame_size),
        )
        split_bytes = -(-video.stat().st_size // ns.parts)
        runs = {}
        for name, split in (("one_task", None), ("split", split_bytes)):
            config = base.replace(output_uri=str(work / name), run_id=name, split_video_bytes=split)
            with local_ray(ns.cpus, resources={STAND_IN_RESOURCE: 1}):
                began = time.perf_counter()
                summary = run_pipeline(config)
                wall = time.perf_counter() - began
            table = read_rows(config)
            found = batches(table)
            rows = sorted(tuple(str(r[k]) for k in SPLIT_KEYS) for r in table.to_pylist())
            runs[name] = {
                "wall_s": round(wall, 2),
                "window_s": round(found[-1].end - found[0].start, 2),
                "committed": summary.processed,
                "rows": len(rows),
                "distinct_rows": len(set(rows)),
                "_rows": rows,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = runs["one_task"].pop("_rows") == runs["split"].pop("_rows")
    report = {
        "video": {"seconds": ns.seconds, "fps": ns.fps, "size": [320, 240], "frame_size": ns.frame_size},
        "cpus": ns.cpus,
        "parts": ns.parts,
        **runs,
        "same_rows": same,
        "wall_ratio": round(runs["split"]["wall_s"] / runs["one_task"]["wall_s"], 3),
        "window_ratio": round(runs["split"]["window_s"] / runs["one_task"]["window_s"], 3),
    }
    print_table([{"run": k, **v} for k, v in runs.items()], ["run", "wall_s", "window_s", "committed", "rows"])
    print(f"split / one task: wall {report['wall_ratio']}, window {report['window_ratio']}; same rows: {same}")
    write_report(report, ns.out)


SPLIT_KEYS = ("segment_index", "task", "segment_start_s", "segment_end_s", "frame_timestamps_s", "answer")


def add_split_command(sub: Any) -> None:
    """The ``split`` subcommand: a long video decoded by one task vs split across the decoders."""
    split = sub.add_parser("split", help="one long video: one decode task vs split across the decoders")
    split.add_argument("--out", required=True)
    split.add_argument("--seconds", type=positive(float), default=3600.0, help="the synthetic video's length")
    split.add_argument("--fps", type=positive(int), default=4)
    split.add_argument("--parts", type=positive(int), default=4, help="decode tasks of the split run")
    split.add_argument("--cpus", type=positive(int), default=2, help="Ray's CPUs: the decoders")
    split.add_argument("--frame-size", type=positive(int), default=224)
    split.set_defaults(run=run_split_benchmark)
