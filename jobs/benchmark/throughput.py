"""The pipeline under load: ``pipeline`` (Ray vs a plain loop on the same videos), ``load`` (many short
videos in one Ray run: exactly once, memory over time) and ``shots`` (the decode cost of segmenting by shots)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobs.benchmark.accelerators import add_flags as add_stand_in_flags
from jobs.benchmark.accelerators import add_split_command, real_clips, run_standin_benchmark
from jobs.benchmark.table import print_table, write_report
from jobs.demo import QUESTIONS, write_synthetic_videos
from jobs.flags import positive
from pipeline.config import PipelineConfig
from pipeline.harness.benchmark import decode_cost, measure_rows, plain_loop, read_rows, segmenting_cost
from pipeline.harness.memory import TreeMemorySampler, growth
from pipeline.ray_env import local_ray
from pipeline.run import run_pipeline
from pipeline.stages.shots import ShotSegmenting
from sparsevlm.config import SparseConfig
from sparsevlm.engine import inspect_checkpoint
from sparsevlm.tiny import CHECKPOINT_DIR

MIB = 2**20


def run_pipeline_benchmark(ns: argparse.Namespace) -> None:
    if ns.stand_in:
        run_standin_benchmark(ns)
        return
    work = Path(tempfile.mkdtemp(prefix="pbench", dir="/tmp"))
    try:
        videos = work / "videos"
        videos.mkdir()
        write_synthetic_videos(videos, ns.synthetic)
        real = real_clips(ns.real)
        for copy in range(ns.copies):
            for clip in real:
                shutil.copy(clip, videos / f"{clip.stem}_{copy}{clip.suffix}")
        base = pipeline_config(ns, videos, work / "out-ray", QUESTIONS)
        # The plain loop: the whole machine's cores for the model, decoding in between batches.
        loop_config = base.replace(output_uri=str(work / "out-loop"), cpus_per_worker=float(ns.cpus))
        loop_wall = plain_loop(loop_config)
        loop = measure_rows("loop", read_rows(loop_config), loop_wall)
        began = time.perf_counter()
        with local_ray(ns.cpus):
            run_pipeline(base)
        ray_run = measure_rows("ray", read_rows(base), time.perf_counter() - began, base.workers)
        frame_size = inspect_checkpoint(base.model).frame_size
        costs = [decode_cost(clip, base, frame_size) for clip in real]
        report: dict[str, Any] = {
            "inputs": {"videos": len(list(videos.iterdir())), "synthetic": ns.synthetic, "real": len(real)},
            "config": {
                "model": base.model,
                "preset": ns.preset,
                "batch_size": ns.batch_size,
                "questions": list(QUESTIONS),
                "cpus": ns.cpus,
                "ray_model_cpus": ns.model_cpus,
                "ray_decode_cpus": ns.decode_cpus,
            },
            "loop": loop.as_dict(),
            "ray": ray_run.as_dict(),
            "steady_state_ratio": round(ray_run.segments_per_s_steady / loop.segments_per_s_steady, 4),
            "whole_run_ratio": round(ray_run.segments_per_s_whole / loop.segments_per_s_whole, 4),
            "decode": [{**asdict(c), "ratio": c.ratio} for c in costs],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    columns = ["mode", "wall_s", "startup_s", "window_s", "segments", "segments_per_s_steady", "busy_fraction"]
    print_table([report["loop"], report["ray"]], columns)
    print(f"steady-state ratio (ray / loop): {report['steady_state_ratio']}; whole run: {report['whole_run_ratio']}")
    columns = ["video", "segments", "decoder", "ours_ms_per_segment", "raw_decord_ms_per_segment", "ratio"]
    print_table(report["decode"], [*columns, "pyav_ms_per_segment"])
    write_report(report, ns.out)


def run_load_benchmark(ns: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="lbench", dir="/tmp"))
    try:
        videos = work / "videos"
        videos.mkdir()
        began = time.perf_counter()
        write_synthetic_videos(videos, ns.videos)
        print(f"wrote {ns.videos} videos in {time.perf_counter() - began:.0f} s")
        config = pipeline_config(ns, videos, work / "out", QUESTIONS[:1]).replace(run_id="load")
        with local_ray(ns.cpus) as started_ray:
            # The job's processes are this one and, for a Ray it started, everything below it.
            with TreeMemorySampler(os.getpid(), period_s=ns.sample_seconds) as sampler:
                summary = run_pipeline(config)
            rerun = run_pipeline(config.replace(run_id="load-rerun"))
        rows = read_rows(config).to_pylist()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = Counter((r["video_id"], r["segment_index"], r["task"], r["question"]) for r in rows)
    report: dict[str, Any] = {
        "videos": ns.videos,
        "config": {
            "cpus": ns.cpus,
            "model_cpus": ns.model_cpus,
            "decode_cpus": ns.decode_cpus,
            "batch_size": ns.batch_size,
            "preset": ns.preset,
            "model": config.model,
        },
        "run": asdict(summary),
        "rows": len(rows),
        "duplicate_rows": sum(n - 1 for n in keys.values()),
        "videos_with_rows": len({r["video_id"] for r in rows}),
        "error_rows": sum(r["status"] != "ok" for r in rows),
        "videos_per_s": round(summary.processed / summary.wall_s, 3),
        "segments_per_s": round(len({k[:2] for k in keys}) / summary.wall_s, 3),
        "rerun": {"wall_s": round(rerun.wall_s, 2), "skipped": rerun.skipped, "processed": rerun.processed},
        "memory": {"sample_seconds": ns.sample_seconds, "ray_started_here": started_ray, **memory_report(sampler)},
    }
    memory = report["memory"]
    print(
        f"{summary.processed}/{ns.videos} videos, {len(rows)} rows ({report['duplicate_rows']} duplicates, "
        f"{report['error_rows']} errors) in {summary.wall_s:.0f} s: {report['videos_per_s']} videos/s; "
        f"rerun skipped {rerun.skipped} in {rerun.wall_s:.1f} s"
    )
    print(
        f"job PSS: {memory['pss_mib_first']} MiB at start, peak {memory['pss_mib_peak']}, last "
        f"{memory['pss_mib_last']}; growth after warm-up "
        + (f"{100 * memory['growth_after_warm_up']:+.1f} %" if memory["growth_after_warm_up"] is not None else "n/a")
    )
    write_report(report, ns.out)


def memory_report(sampler: TreeMemorySampler) -> dict[str, Any]:
    """The job's memory over a sampled block: first, peak and last PSS, growth after warm-up, the samples."""
    samples = sampler.samples
    try:
        trend: dict[str, Any] = {"growth_after_warm_up": round(growth(samples), 4)}
    except ValueError as err:  # a run too short to show a trend
        trend = {"growth_after_warm_up": None, "growth_not_measured": str(err)}
    return {
        **trend,
        "pss_mib_first": round(samples[0].total_bytes / MIB, 1),
        "pss_mib_peak": round(max(s.total_bytes for s in samples) / MIB, 1),
        "pss_mib_last": round(samples[-1].total_bytes / MIB, 1),
        "largest_process_mib_peak": round(max(s.largest_bytes for s in samples) / MIB, 1),
        "samples": [[round(s.t_s, 1), round(s.total_bytes / MIB, 1), s.processes] for s in samples],
    }


def run_shots_benchmark(ns: argparse.Namespace) -> None:
    shots = ShotSegmenting()
    costs = [segmenting_cost(clip, shots, frame_size=ns.frame_size, repeats=ns.repeats) for clip in real_clips(ns.real)]
    rows = [{**asdict(c), "ratio": c.ratio, "extra_cpu_s_per_minute": c.extra_cpu_s_per_minute} for c in costs]
    fixed, by_shots = sum(c.fixed_cpu_s for c in costs), sum(c.shots_cpu_s for c in costs)
    minutes = sum(c.duration_s for c in costs) / 60
    total = {"fixed_cpu_s": fixed, "shots_cpu_s": by_shots, "ratio": by_shots / fixed, "minutes": minutes}
    columns = ["video", "decoder", "duration_s", "fixed_segments", "shot_segments", "fixed_cpu_s", "shots_cpu_s"]
    print_table(rows, [*columns, "ratio", "extra_cpu_s_per_minute"])
    print(
        f"all {len(costs)} clips ({minutes:.2f} min): fixed {fixed:.2f} s, shots {by_shots:.2f} s of CPU "
        f"({total['ratio']:.2f}x; {(by_shots - fixed) / minutes:.2f} s more per minute of video)"
    )
    write_report({"shots": asdict(shots), "frame_size": ns.frame_size, "clips": rows, "total": total}, ns.out)


def pipeline_config(ns: argparse.Namespace, videos: Path, output: Path, questions: tuple[str, ...]) -> PipelineConfig:
    """The :class:`~pipeline.config.PipelineConfig` of a benchmark run from its flags (one model worker)."""
    return PipelineConfig(
        input_uri=str(videos),
        output_uri=str(output),
        model=ns.model or str(CHECKPOINT_DIR),
        questions=questions,
        max_new_tokens=ns.max_new_tokens,
        sparse=SparseConfig.preset(ns.preset),
        batch_size=ns.batch_size,
        workers=1,
        cpus_per_worker=ns.model_cpus,
        decode_cpus=ns.decode_cpus,
    )


def pipeline_flags(parser: argparse.ArgumentParser, batch_size: int, max_new_tokens: int, decode_cpus: float) -> None:
    """The flags of the commands that run the Ray pipeline."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    parser.add_argument("--preset", default="video-25")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the machine (Ray's; the plain loop's threads)")
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs (= torch threads) of the model actor")
    parser.add_argument("--decode-cpus", type=float, default=decode_cpus, help="CPUs per decode task")


def add_commands(sub: Any) -> None:
    """Add this family's subcommands to ``sub`` (the main parser's subparsers)."""
    pipe = sub.add_parser(
        "pipeline", help="Ray pipeline vs a plain loop on the same videos; --stand-in: on stand-in accelerators"
    )
    pipe.add_argument("--synthetic", type=int, default=16, help="synthetic videos (1 s each without --stand-in)")
    pipe.add_argument("--real", type=int, default=6, help="real clips from tests/assets")
    pipe.add_argument("--copies", type=int, default=2, help="copies of each real clip")
    pipeline_flags(pipe, batch_size=4, max_new_tokens=12, decode_cpus=1.0)
    add_stand_in_flags(pipe)
    pipe.set_defaults(run=run_pipeline_benchmark)
    add_split_command(sub)

    load = sub.add_parser("load", help="many short videos in one Ray run: exactly once, memory over time")
    load.add_argument("--videos", type=positive(int), default=1000, help="synthetic 1 s videos")
    load.add_argument("--sample-seconds", type=positive(float), default=2.0, help="memory sampling period")
    pipeline_flags(load, batch_size=8, max_new_tokens=8, decode_cpus=0.5)
    load.set_defaults(run=run_load_benchmark)

    shots = sub.add_parser("shots", help="decode CPU time of --segment-by shots vs fixed on the real clips")
    shots.add_argument("--out", required=True)
    shots.add_argument("--real", type=positive(int), default=6, help="real clips from tests/assets")
    shots.add_argument("--repeats", type=positive(int), default=3, help="the least CPU time of this many is kept")
    shots.add_argument("--frame-size", type=positive(int), default=224, help="model resolution (Video-LLaVA: 224)")
    shots.set_defaults(run=run_shots_benchmark)
