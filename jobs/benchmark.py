"""Benchmarks: `python -m jobs.benchmark <command> ...`.

presets [--layers 32 --hidden 4096 --ffn 11008 --visual 2056 --text 40] [--out FILE.json]
    equivalent tokens and prefill FLOPs ratio of every preset on a model layout (default:
    Video-LLaVA-7B, 8 frames x 257 tokens), from the token arithmetic and the FLOPs formula.
fidelity --out FILE.json [--plot FILE.png] [--model tiny|tiny-deep|DIR] [--seed 0-99] [--samples N]
         [--schedule LAYERS:KEEPS|LAYERS@FRACTION ...]
    dense vs every method at 50/25/10/5 % on synthetic video QA: agreement, KL, evidence recall, accuracy.
show (--synthetic I | --video FILE --question Q) --out FILE.png
    the sampled frames with the visual tokens each method keeps.
speed --out FILE.json
    prefill time, peak memory and KV cache of dense vs the video presets on the Video-LLaVA-7B layout.
long --out FILE.json [--videos N] [--preset video-long]
    32-frame clips with a brief event: 32 frames compressed to the 8-frame budget vs 8 uniform frames.
pipeline --out FILE.json [--synthetic N] [--copies K]
    the Ray pipeline vs a plain sequential loop on the same videos: whole-run and steady-state throughput,
    model busy fraction, decode cost per segment vs raw decord.
gpu --out FILE.json [--tiny] [--new-tokens 32]
    the full Video-LLaVA-7B layout in bf16 with random weights on one GPU: dense vs video-50/25/10/5 and
    video-xf-25 at batch 1, 8 and 32 (vision tower and LLM prefill time, decode tokens/s, peak memory, KV
    cache); --tiny, or no CUDA, runs a tiny model on CPU to check the command.
syncs --out FILE.json [--batches 1 2 8 32]
    device-to-host synchronisations of one prefill per preset and batch size on the 7B token layout
    (counted by operator on the CPU: what a GPU would wait for).
load --out FILE.json [--videos 1000]
    many short videos in one Ray run: completes exactly once, memory (PSS of the whole job's process tree)
    over time and its growth after warm-up, throughput, and the time of a rerun that skips everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.ray_env import use_local_ray_env
from sparsevlm.bench.presets import Layout, preset_table


def run_presets(ns: argparse.Namespace) -> None:
    layout = Layout(ns.layers, ns.hidden, ns.ffn, ns.visual, ns.text)
    rows = preset_table(layout)
    print(f"layout: {layout}")
    print(f"{'preset':<11} {'layers':<11} {'keep':<15} {'equiv tokens':>12} {'% visual':>9} {'FLOPs ratio':>11}")
    for r in rows:
        print(
            f"{r['preset']:<11} {r['prune_layers']!s:<11} {r['keep']!s:<15} {r['equivalent_tokens']:>12} "
            f"{100 * float(r['fraction']):>8.1f}% {r['flops_ratio']:>11} {r['note']}"  # type: ignore[arg-type]
        )
    if ns.out:
        Path(ns.out).write_text(json.dumps({"layout": layout.__dict__, "results": rows}, indent=2))
        print(f"wrote {ns.out}")


def _schedule(text: str) -> str:
    """argparse type of ``--schedule``: the text itself once :func:`parse_schedule` accepts it."""
    from sparsevlm.baselines import parse_schedule

    try:
        parse_schedule(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# benchmark_questions(seed, n) asks about test videos seed * 100_000 + i (i < n) of a 10,000,000-video split.
_FIDELITY_SEED_STRIDE = 100_000


def _check_fidelity_seed(seed: int, samples: int) -> None:
    """Exit with one line unless ``seed`` and ``samples`` name test videos that exist."""
    from sparsevlm.tiny.video_qa import SPLIT_SIZE

    last = SPLIT_SIZE // _FIDELITY_SEED_STRIDE - 1
    if not 0 <= seed <= last:
        raise SystemExit(f"--seed must be in [0, {last}] (each seed is its own range of test videos), got {seed}")
    if samples > _FIDELITY_SEED_STRIDE:
        raise SystemExit(f"--samples must be at most {_FIDELITY_SEED_STRIDE} per seed, got {samples}")


def run_fidelity_command(ns: argparse.Namespace) -> None:
    import torch

    from sparsevlm.bench.fidelity import benchmark_questions, run_fidelity
    from sparsevlm.tiny.loading import load_tiny

    _check_fidelity_seed(ns.seed, ns.samples)
    torch.manual_seed(ns.seed)
    try:
        model, tokenizer, trained = load_tiny(ns.model)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    label = ns.model or "bundled tiny Video-LLaVA"
    if not trained:
        label = "untrained random tiny Video-LLaVA (no checkpoint)"
        print(
            "NOTE: no trained checkpoint: agreement, KL and FLOPs check the machinery; accuracy and evidence "
            "recall comparisons are not meaningful"
        )
    items = benchmark_questions(ns.seed, ns.samples)
    report = run_fidelity(
        model,
        tokenizer,
        items,
        trained,
        budgets=tuple(ns.budgets),
        batch_size=ns.batch_size,
        schedules=tuple(ns.schedule),
    )
    report = {"model": label, "trained": trained, "seed": ns.seed, **report}
    print(f"model: {label}; {ns.samples} questions; dense accuracy: {report['dense']['accuracy']}")
    header = ("method", "budget", "equiv", "agree", "kl", "recall", "acc", "retention", "flops", "ms")
    print(" ".join(f"{h:>9}" for h in header))
    for r in report["results"]:
        budget = r["budget"] if r["schedule"] is None else r["schedule"]
        cells = [r["method"], budget, r["equivalent_tokens"], r["agreement"], r["kl"], r["evidence_recall"]]
        cells += [r["accuracy"], r["retention"], r["prefill_flops_ratio"], r["prefill_ms"]]
        print(" ".join(f"{_fmt(c):>9}" for c in cells))
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")
    if ns.plot:
        _plot_fidelity(report, ns.plot)
        print(f"wrote {ns.plot}")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _plot_fidelity(report: dict[str, object], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every: list[dict[str, object]] = report["results"]  # type: ignore[assignment]
    rows = [r for r in every if r["schedule"] is None]  # fixed schedules are not budgets: table only
    metric = "accuracy" if report["trained"] else "agreement"
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(str(r["method"]) for r in rows):
        points = sorted((float(r["equivalent_tokens"]), float(r[metric])) for r in rows if r["method"] == method)  # type: ignore[arg-type]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    dense = report["dense"]
    if metric == "accuracy" and isinstance(dense, dict) and dense.get("accuracy") is not None:
        ax.axhline(dense["accuracy"], color="grey", linestyle="--", label="dense")
    ax.set_xlabel("equivalent visual tokens")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs visual tokens ({report['model']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_show(ns: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from sparsevlm import apply_patch, last_stats
    from sparsevlm.baselines import METHODS, method_config
    from sparsevlm.bench.show import ShowRow, pool_pixels, render_keep_grid, token_mask
    from sparsevlm.pooling import pool_grid
    from sparsevlm.tiny.inputs import encode_prompts
    from sparsevlm.tiny.loading import load_tiny
    from sparsevlm.tiny.video_qa import make_sample

    model, tokenizer, trained = load_tiny(ns.model)
    vision = model.config.vision_config
    size, patch = int(vision.image_size), int(vision.patch_size)
    evidence = None
    if ns.video:
        from pipeline.decode import decode_segments

        if not ns.question:
            raise SystemExit("--question is required with --video")
        _, segments = decode_segments(ns.video, frames_per_segment=ns.frames, segment_seconds=None, size=size)
        frames, question = next(iter(segments)).frames, ns.question
    else:
        sample = make_sample("test", ns.synthetic)
        qa = next((q for q in sample.questions if q.question == ns.question), sample.questions[0])
        frames, question, evidence = sample.frames, qa.question, qa.evidence
    grid = size // patch
    enc = encode_prompts(tokenizer, [question], [frames], patch)
    rows = []
    for method in METHODS:
        config = method_config(method, ns.budget)
        apply_patch(model, config)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=3, do_sample=False)
        answer = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        stats = last_stats(model)[0]
        tokens = f"{stats.equivalent_tokens:.0f} equiv. tokens -> {answer!r}"
        if config.spatial_pool is not None:
            cells = pool_grid(grid, config.spatial_pool * (grid * grid + 1) - 1)
            label = f"{method} @ {ns.budget:.0%}: {cells[0]}x{cells[1]} cells per frame, {tokens}"
            everything = np.ones((len(frames), grid, grid), dtype=bool)
            pooled = pool_pixels(np.asarray(frames), grid, *cells)
            rows.append(ShowRow(label, everything, ~everything, pooled))
        else:
            layer = min(stats.kept_indices)
            kept = token_mask(stats.kept_indices[layer].numpy(), len(frames), grid)
            recycled = token_mask(stats.recycled_indices.get(layer, torch.zeros(0)).numpy(), len(frames), grid)
            rows.append(ShowRow(f"{method} @ {ns.budget:.0%}: layer {layer}, {tokens}", kept, recycled))
        print(rows[-1].label)
    image = render_keep_grid(np.asarray(frames), rows, evidence, scale=ns.scale)
    image.save(ns.out)
    print(f"question: {question}; model: {'trained' if trained else 'UNTRAINED'}; wrote {ns.out}")


SPEED_PRESETS = ["video-50", "video-25", "video-10", "video-5"]


def _speed_layout(ns: argparse.Namespace) -> Any:
    from sparsevlm.bench.speed import SpeedLayout

    if ns.tiny:  # CI-sized: proves the command works, measures nothing meaningful
        return SpeedLayout(hidden=64, heads=4, kv_heads=4, ffn=128, depth=ns.depth, image_size=28, frames=2)
    return SpeedLayout(depth=ns.depth)


def run_speed(ns: argparse.Namespace) -> None:
    import subprocess
    import sys

    import torch

    from sparsevlm.bench.speed import layout_dict, measure

    layout = _speed_layout(ns)
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    for name in ns.dtypes:
        dtype = getattr(torch, name)
        rows += measure(layout, ns.presets, dtype, ns.repeats, ns.threads)
        for preset in ["dense", *ns.presets]:
            probe = [sys.executable, "-m", "jobs.benchmark", "speed-probe", "--preset", preset, "--dtype", name]
            probe += ["--depth", str(ns.depth), "--threads", str(ns.threads)] + (["--tiny"] if ns.tiny else [])
            result = subprocess.run(probe, check=True, capture_output=True, text=True)
            memory.append(json.loads(result.stdout.strip().splitlines()[-1]))
    by_key = {(m["preset"], m["dtype"]): m for m in memory}
    for row in rows:
        row.update({k: v for k, v in by_key[(row["preset"], row["dtype"])].items() if k not in ("preset", "dtype")})
    header = ["preset", "dtype", "prefill_s", "time_ratio", "flops_ratio", "kv_ratio", "prefill_rss_growth_mib"]
    header += ["prune_overhead_of_dense_layer", "full_depth_time_ratio", "full_depth_flops_ratio"]
    print(" ".join(f"{h[:14]:>14}" for h in header))
    for row in rows:
        print(" ".join(f"{_fmt(row[h]):>14}" for h in header))
    report = {"layout": layout_dict(layout), "threads": ns.threads, "results": rows}
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")


def run_speed_probe(ns: argparse.Namespace) -> None:
    import torch

    from sparsevlm.bench.speed import peak_rss_probe

    print(json.dumps(peak_rss_probe(_speed_layout(ns), ns.preset, getattr(torch, ns.dtype), ns.threads)))


def run_syncs(ns: argparse.Namespace) -> None:
    from sparsevlm.bench.syncs import count_prefill_syncs

    rows = count_prefill_syncs(ns.presets, ns.batches)
    for r in rows:
        print(f"{r['preset']:<10} batch {r['batch']:>3}: {r['syncs']:>4} syncs {r['by_kind']}")
    Path(ns.out).write_text(json.dumps({"results": rows}, indent=2))
    print(f"wrote {ns.out}")


def run_gpu_command(ns: argparse.Namespace) -> None:
    import torch

    from sparsevlm.bench.gpu import GpuBenchSetup, run_gpu_benchmark

    if not ns.tiny and not torch.cuda.is_available():
        print("no CUDA device: running the tiny CPU size (--tiny)")
    setup = GpuBenchSetup() if not ns.tiny and torch.cuda.is_available() else GpuBenchSetup.tiny()
    report = run_gpu_benchmark(dataclasses.replace(setup, new_tokens=ns.new_tokens or setup.new_tokens))
    header = ["preset", "batch", "ttft_s", "vision_tower_s", "llm_prefill_s", "ttft_ratio", "decode_tokens_per_s"]
    header += ["peak_memory_bytes", "kv_cache_bytes", "kv_ratio", "equivalent_tokens"]
    print(f"{report['device_name']}, {report['setup']['dtype']}")
    print(" ".join(f"{h[:14]:>14}" for h in header))
    for row in report["results"]:
        print(" ".join(f"{_fmt(row[h]):>14}" for h in header))
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")


def run_long_command(ns: argparse.Namespace) -> None:
    import torch

    from sparsevlm.bench.long import long_items, run_long
    from sparsevlm.tiny.loading import load_tiny

    torch.manual_seed(ns.seed)
    model, tokenizer, trained = load_tiny(ns.model)
    if not trained:
        print("NOTE: no trained checkpoint: accuracies are noise; FLOPs and time ratios still hold")
    report = run_long(model, tokenizer, long_items(ns.seed, ns.videos), ns.preset, ns.batch_size)
    report = {"model": ns.model or "bundled tiny Video-LLaVA", "trained": trained, "seed": ns.seed, **report}
    header = ["run", "frames", "accuracy", "accuracy_brief", "accuracy_absent", "equivalent_tokens"]
    header += ["flops_ratio", "time_ratio"]
    print(" ".join(f"{h[:16]:>16}" for h in header))
    for row in report["results"]:
        print(" ".join(f"{_fmt(row[h]):>16}" for h in header))
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")


def run_pipeline_benchmark(ns: argparse.Namespace) -> None:
    import shutil
    import tempfile

    from jobs.demo import QUESTIONS, write_synthetic_videos
    from pipeline.benchmark import decode_cost, measure_rows, plain_loop, read_rows
    from pipeline.build import run_pipeline
    from pipeline.ray_env import local_ray
    from sparsevlm.engine import inspect_checkpoint

    assets = Path(__file__).resolve().parent.parent / "tests" / "assets"
    work = Path(tempfile.mkdtemp(prefix="pbench", dir="/tmp"))
    try:
        videos = work / "videos"
        videos.mkdir()
        write_synthetic_videos(videos, ns.synthetic)
        real = sorted(p for p in assets.iterdir() if p.suffix in (".mp4", ".mkv", ".webm", ".avi"))[: ns.real]
        for copy in range(ns.copies):
            for clip in real:
                shutil.copy(clip, videos / f"{clip.stem}_{copy}{clip.suffix}")
        base = _pipeline_config(ns, videos, work / "out-ray", QUESTIONS)
        model = base.model
        # The plain loop: the whole machine's cores for the model, decoding in between batches.
        loop_config = base.replace(output_uri=str(work / "out-loop"), cpus_per_worker=float(ns.cpus))
        loop_wall = plain_loop(loop_config)
        loop = measure_rows("loop", read_rows(loop_config), loop_wall)
        began = time.perf_counter()
        with local_ray(ns.cpus):
            run_pipeline(base)
        ray_run = measure_rows("ray", read_rows(base), time.perf_counter() - began, base.workers)
        frame_size = inspect_checkpoint(model).frame_size
        costs = [decode_cost(clip, base, frame_size) for clip in real]
        report: dict[str, Any] = {
            "inputs": {"videos": len(list(videos.iterdir())), "synthetic": ns.synthetic, "real": len(real)},
            "config": {
                "model": model,
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
    header = ["mode", "wall_s", "startup_s", "window_s", "segments", "segments_per_s_steady", "busy_fraction"]
    print(" ".join(f"{h[:21]:>21}" for h in header))
    for row in (report["loop"], report["ray"]):
        print(" ".join(f"{_fmt(row[h]):>21}" for h in header))
    print(f"steady-state ratio (ray / loop): {report['steady_state_ratio']}; whole run: {report['whole_run_ratio']}")
    for cost in report["decode"]:
        raw = cost["raw_decord_ms_per_segment"]
        print(f"decode {cost['video']}: {cost['ours_ms_per_segment']:.1f} ms/segment, raw decord {_fmt(raw)} ms")
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")


def run_load_benchmark(ns: argparse.Namespace) -> None:
    import shutil
    import tempfile
    from collections import Counter

    from jobs.demo import QUESTIONS, write_synthetic_videos
    from pipeline.benchmark import read_rows
    from pipeline.build import run_pipeline
    from pipeline.memory import TreeMemorySampler
    from pipeline.ray_env import local_ray

    work = Path(tempfile.mkdtemp(prefix="lbench", dir="/tmp"))
    try:
        videos = work / "videos"
        videos.mkdir()
        began = time.perf_counter()
        write_synthetic_videos(videos, ns.videos)
        print(f"wrote {ns.videos} videos in {time.perf_counter() - began:.0f} s")
        config = _pipeline_config(ns, videos, work / "out", QUESTIONS[:1]).replace(run_id="load")
        with local_ray(ns.cpus) as started_ray:
            # The job's processes are this one and, for a Ray it started, everything below it.
            with TreeMemorySampler(os.getpid(), period_s=ns.sample_seconds) as sampler:
                summary = run_pipeline(config)
            rerun = run_pipeline(config.replace(run_id="load-rerun"))
        rows = read_rows(config).to_pylist()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = Counter((r["video_id"], r["segment_index"], r["task"], r["question"]) for r in rows)
    samples = sampler.samples
    mib = 2**20
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
        "memory": {
            "sample_seconds": ns.sample_seconds,
            "ray_started_here": started_ray,
            **_growth(samples),
            "pss_mib_first": round(samples[0].total_bytes / mib, 1),
            "pss_mib_peak": round(max(s.total_bytes for s in samples) / mib, 1),
            "pss_mib_last": round(samples[-1].total_bytes / mib, 1),
            "largest_process_mib_peak": round(max(s.largest_bytes for s in samples) / mib, 1),
            "samples": [[round(s.t_s, 1), round(s.total_bytes / mib, 1), s.processes] for s in samples],
        },
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
    Path(ns.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {ns.out}")


def _pipeline_config(ns: argparse.Namespace, videos: Path, output: Path, questions: tuple[str, ...]) -> Any:
    """The :class:`~pipeline.config.PipelineConfig` of a benchmark run from its flags (one model worker)."""
    from pipeline.config import PipelineConfig
    from sparsevlm.config import SparseConfig
    from sparsevlm.tiny import CHECKPOINT_DIR

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


def _growth(samples: list[Any]) -> dict[str, Any]:
    """The memory growth after warm-up, or None and why (a run too short to show a trend)."""
    from pipeline.memory import growth

    try:
        return {"growth_after_warm_up": round(growth(samples), 4)}
    except ValueError as err:
        return {"growth_after_warm_up": None, "growth_not_measured": str(err)}


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a positive ``kind``, or an error naming the value."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _pipeline_flags(parser: argparse.ArgumentParser, batch_size: int, max_new_tokens: int, decode_cpus: float) -> None:
    """The flags of the commands that run the Ray pipeline."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    parser.add_argument("--preset", default="video-25")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the machine (Ray's; the plain loop's threads)")
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs (= torch threads) of the model actor")
    parser.add_argument("--decode-cpus", type=float, default=decode_cpus, help="CPUs per decode task")


def main(argv: list[str] | None = None) -> None:
    use_local_ray_env()  # before anything imports Ray (the commands that need one start it locally)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    presets = sub.add_parser("presets", help="preset costs on a model layout (no model runs)")
    presets.add_argument("--layers", type=int, default=32)
    presets.add_argument("--hidden", type=int, default=4096)
    presets.add_argument("--ffn", type=int, default=11008)
    presets.add_argument("--visual", type=int, default=2056)
    presets.add_argument("--text", type=int, default=40)
    presets.add_argument("--out", help="write the rows as JSON here")
    presets.set_defaults(run=run_presets)
    fidelity = sub.add_parser("fidelity", help="dense vs methods at equal budgets on synthetic video QA")
    fidelity.add_argument(
        "--model", help="a bundled model, tiny (the default, 4 LLM layers) or tiny-deep (16), or a checkpoint directory"
    )
    fidelity.add_argument("--seed", type=int, default=0, help="0-99: which test videos")
    fidelity.add_argument("--samples", type=_positive(int), default=64)
    fidelity.add_argument("--batch-size", type=int, default=8)
    fidelity.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.10, 0.05])
    fidelity.add_argument(
        "--schedule",
        action="append",
        type=_schedule,
        default=[],
        help="also run sparsevlm, sparsevlm-text, fastv and random at this schedule (repeat): fixed counts "
        "LAYERS:KEEPS (1:52, 0,1:130,26) or a budget shared by several layers LAYERS@FRACTION (0,1@0.1)",
    )
    fidelity.add_argument("--out", required=True, help="JSON report")
    fidelity.add_argument("--plot", help="PNG: accuracy (or agreement) vs equivalent tokens")
    fidelity.set_defaults(run=run_fidelity_command)
    show = sub.add_parser("show", help="picture of the tokens each method keeps")
    source = show.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="a video file (its first frames over the whole video are used)")
    source.add_argument("--synthetic", type=int, help="index of a synthetic test video (evidence is outlined)")
    show.add_argument("--question", help="the question (default for --synthetic: the video's first question)")
    show.add_argument("--budget", type=float, default=0.10)
    show.add_argument("--frames", type=int, default=8)
    show.add_argument("--scale", type=int, default=3)
    show.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    show.add_argument("--out", required=True)
    show.set_defaults(run=run_show)
    speed = sub.add_parser("speed", help="prefill time / memory / KV cache on the 7B layout")
    speed.add_argument("--out", required=True)
    speed.add_argument("--depth", type=int, default=3, help="decoder layers actually run (default 3)")
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--threads", type=int, default=2)
    speed.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    speed.add_argument("--presets", nargs="+", default=SPEED_PRESETS)
    speed.add_argument("--tiny", action="store_true", help="tiny widths, to check the command only")
    speed.set_defaults(run=run_speed)
    probe = sub.add_parser("speed-probe", help="internal: one prefill in a fresh process, peak RSS as JSON")
    probe.add_argument("--preset", required=True)
    probe.add_argument("--dtype", required=True)
    probe.add_argument("--depth", type=int, default=3)
    probe.add_argument("--threads", type=int, default=2)
    probe.add_argument("--tiny", action="store_true")
    probe.set_defaults(run=run_speed_probe)
    long = sub.add_parser("long", help="32 frames compressed to the 8-frame budget vs 8 uniform frames")
    long.add_argument("--out", required=True)
    long.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    long.add_argument("--videos", type=int, default=48, help="clips (two questions each)")
    long.add_argument("--seed", type=int, default=0)
    long.add_argument("--preset", default="video-long")
    long.add_argument("--batch-size", type=int, default=8)
    long.set_defaults(run=run_long_command)
    pipe = sub.add_parser("pipeline", help="Ray pipeline vs a plain loop on the same videos")
    pipe.add_argument("--synthetic", type=int, default=16, help="synthetic 1 s videos")
    pipe.add_argument("--real", type=int, default=6, help="real clips from tests/assets")
    pipe.add_argument("--copies", type=int, default=2, help="copies of each real clip")
    _pipeline_flags(pipe, batch_size=4, max_new_tokens=12, decode_cpus=1.0)
    pipe.set_defaults(run=run_pipeline_benchmark)
    gpu = sub.add_parser("gpu", help="the full 7B layout on one GPU in bf16: time to first token, tokens/s, memory")
    gpu.add_argument("--out", required=True)
    gpu.add_argument("--tiny", action="store_true", help="a tiny model on CPU, to check the command only")
    gpu.add_argument("--new-tokens", type=_positive(int), help="tokens generated per row (default 32; tiny 4)")
    gpu.set_defaults(run=run_gpu_command)
    syncs = sub.add_parser("syncs", help="host synchronisations of one prefill per preset and batch size")
    syncs.add_argument("--out", required=True)
    syncs.add_argument("--batches", type=_positive(int), nargs="+", default=[1, 2, 8, 32])
    syncs.add_argument("--presets", nargs="+", default=["dense", "video-50", "video-25", "video-10", "video-5"])
    syncs.set_defaults(run=run_syncs)

    load = sub.add_parser("load", help="many short videos in one Ray run: exactly once, memory over time")
    load.add_argument("--videos", type=_positive(int), default=1000, help="synthetic 1 s videos")
    load.add_argument("--sample-seconds", type=_positive(float), default=2.0, help="memory sampling period")
    _pipeline_flags(load, batch_size=8, max_new_tokens=8, decode_cpus=0.5)
    load.set_defaults(run=run_load_benchmark)
    ns = parser.parse_args(argv)
    ns.run(ns)


if __name__ == "__main__":
    main()
