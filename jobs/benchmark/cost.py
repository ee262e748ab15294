"""What the method costs on the Video-LLaVA-7B layout: ``presets``, ``speed`` (and its ``speed-probe``),
``syncs`` and ``gpu``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from jobs.benchmark.table import print_table, write_report
from jobs.flags import positive
from sparsevlm.bench.gpu import GpuBenchSetup, run_gpu_benchmark
from sparsevlm.bench.presets import CostLayout, preset_table
from sparsevlm.bench.speed import SpeedLayout, layout_dict, measure, peak_rss_probe
from sparsevlm.bench.syncs import count_prefill_syncs

SPEED_PRESETS = ["video-50", "video-25", "video-10", "video-5"]


def run_presets(ns: argparse.Namespace) -> None:
    layout = CostLayout(ns.layers, ns.hidden, ns.ffn, ns.visual, ns.text)
    rows = preset_table(layout)
    print(f"layout: {layout}")
    shown = [{**r, "% visual": f"{100 * float(r['fraction']):.1f}%"} for r in rows]  # type: ignore[arg-type]
    columns = ["preset", "prune_layers", "keep", "equivalent_tokens", "% visual", "flops_ratio", "note"]
    print_table(shown, columns)
    if ns.out:
        write_report({"layout": layout.__dict__, "results": rows}, ns.out)


def _speed_layout(ns: argparse.Namespace) -> SpeedLayout:
    if ns.tiny:  # CI-sized: proves the command works, measures nothing meaningful
        return SpeedLayout(hidden=64, heads=4, kv_heads=4, ffn=128, depth=ns.depth, image_size=28, frames=2)
    return SpeedLayout(depth=ns.depth)


def run_speed(ns: argparse.Namespace) -> None:
    layout = _speed_layout(ns)
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    for name in ns.dtypes:
        dtype = getattr(torch, name)
        rows += measure(layout, ns.presets, dtype, ns.repeats, ns.threads)
        for preset in ["dense", *ns.presets]:  # peak memory needs a fresh process per preset
            probe = [sys.executable, "-m", "jobs.benchmark", "speed-probe", "--preset", preset, "--dtype", name]
            probe += ["--depth", str(ns.depth), "--threads", str(ns.threads)] + (["--tiny"] if ns.tiny else [])
            result = subprocess.run(probe, check=True, capture_output=True, text=True)
            memory.append(json.loads(result.stdout.strip().splitlines()[-1]))
    by_key = {(m["preset"], m["dtype"]): m for m in memory}
    for row in rows:
        row.update({k: v for k, v in by_key[(row["preset"], row["dtype"])].items() if k not in ("preset", "dtype")})
    columns = ["preset", "dtype", "prefill_s", "time_ratio", "flops_ratio", "kv_ratio", "prefill_rss_growth_mib"]
    columns += ["prune_overhead_of_dense_layer", "full_depth_time_ratio", "full_depth_flops_ratio"]
    print_table(rows, columns, width=14)
    write_report({"layout": layout_dict(layout), "threads": ns.threads, "results": rows}, ns.out)


def run_speed_probe(ns: argparse.Namespace) -> None:
    print(json.dumps(peak_rss_probe(_speed_layout(ns), ns.preset, getattr(torch, ns.dtype), ns.threads)))


def run_syncs(ns: argparse.Namespace) -> None:
    rows = count_prefill_syncs(ns.presets, ns.batches)
    print_table(rows, ["preset", "batch", "syncs", "by_kind"])
    write_report({"results": rows}, ns.out)


def run_gpu(ns: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available()
    if not ns.tiny and not cuda:
        print("no CUDA device: running the tiny CPU size (--tiny)")
    setup = GpuBenchSetup() if not ns.tiny and cuda else GpuBenchSetup.tiny()
    changes = {"new_tokens": ns.new_tokens, "repeats": ns.repeats, "batches": tuple(ns.batches or ())}
    setup = dataclasses.replace(setup, **{k: v for k, v in changes.items() if v})
    # The report so far is rewritten after every row: a run cut by a time limit keeps what it measured.
    report = run_gpu_benchmark(setup, progress=lambda partial: Path(ns.out).write_text(json.dumps(partial, indent=2)))
    columns = ["preset", "batch", "ttft_s", "ttft_spread", "vision_tower_s", "llm_prefill_s", "ttft_ratio"]
    columns += ["decode_tokens_per_s", "decode_spread", "peak_memory_bytes", "kv_ratio"]
    columns += ["equivalent_tokens"]
    print(f"{report['device_name']}, {report['setup']['dtype']}, {report['versions']}")
    print_table(report["results"], columns, width=14)
    if report["decode_syncs"]:
        print("synchronising CUDA calls (torch.cuda.set_sync_debug_mode), one generate per preset:")
        print_table(
            report["decode_syncs"],
            ["preset", "batch", "prefill_forward", "per_decode_forward_max", "generate_loop_per_step"],
        )
    write_report(report, ns.out)


def add_commands(sub: Any) -> None:
    """Add this family's subcommands to ``sub`` (the main parser's subparsers)."""
    presets = sub.add_parser("presets", help="preset costs on a model layout (no model runs)")
    seven_b = CostLayout()
    presets.add_argument("--layers", type=int, default=seven_b.num_layers)
    presets.add_argument("--hidden", type=int, default=seven_b.hidden)
    presets.add_argument("--ffn", type=int, default=seven_b.ffn)
    presets.add_argument("--visual", type=int, default=seven_b.n_visual)
    presets.add_argument("--text", type=int, default=seven_b.n_text)
    presets.add_argument("--out", help="write the rows as JSON here")
    presets.set_defaults(run=run_presets)

    speed = sub.add_parser("speed", help="prefill time / memory / KV cache on the 7B layout")
    speed.add_argument("--out", required=True)
    speed.add_argument(
        "--depth", type=int, default=3, help="least decoder layers run (more when a preset has more pruning steps)"
    )
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

    gpu = sub.add_parser("gpu", help="the full 7B layout on one GPU in bf16: time to first token, tokens/s, memory")
    gpu.add_argument("--out", required=True)
    gpu.add_argument("--tiny", action="store_true", help="a tiny model on CPU, to check the command only")
    gpu.add_argument("--new-tokens", type=positive(int), help="tokens generated per row (default 32; tiny 4)")
    gpu.add_argument("--repeats", type=positive(int), help="timed runs per cell after a warm-up (default 3)")
    gpu.add_argument("--batches", type=positive(int), nargs="+", help="batch sizes (default 1 8 32; tiny 1 2)")
    gpu.set_defaults(run=run_gpu)

    syncs = sub.add_parser("syncs", help="host synchronisations of one prefill per preset and batch size")
    syncs.add_argument("--out", required=True)
    syncs.add_argument("--batches", type=positive(int), nargs="+", default=[1, 2, 8, 32])
    syncs.add_argument("--presets", nargs="+", default=["dense", "video-50", "video-25", "video-10", "video-5"])
    syncs.set_defaults(run=run_syncs)
