"""What the method keeps of the answers: ``fidelity``, ``show``, ``long`` and ``looking`` on the bundled tiny
models."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.benchmark.table import print_table, write_report
from jobs.flags import int_list, positive
from sparsevlm import apply_patch, last_stats
from sparsevlm.baselines import ALL_METHODS, PLAIN_METHODS, method_config, parse_schedule
from sparsevlm.bench.fidelity import FIDELITY_METHODS, benchmark_questions, chance_bounds, run_fidelity
from sparsevlm.bench.long import long_items, run_long
from sparsevlm.bench.looking import looking_profile
from sparsevlm.bench.show import ShowRow, pool_pixels, render_keep_grid, token_mask
from sparsevlm.config import PRESETS
from sparsevlm.pooling import pool_grid
from sparsevlm.tiny import BUNDLED_MODELS
from sparsevlm.tiny.hard_qa import QUESTION_SPLITS
from sparsevlm.tiny.inputs import encode_prompts
from sparsevlm.tiny.loading import load_tiny
from sparsevlm.tiny.video_qa import SPLIT_SIZE, make_sample

# benchmark_questions(seed, n) asks about test videos seed * 100_000 + i (i < n) of a 10,000,000-video split.
_FIDELITY_SEED_STRIDE = 100_000


def _schedule(text: str) -> str:
    """argparse type of ``--schedule``: the text itself once :func:`parse_schedule` accepts it."""
    try:
        parse_schedule(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _check_fidelity_seed(seed: int, samples: int) -> None:
    """Exit with one line unless ``seed`` and ``samples`` name test videos that exist."""
    last = SPLIT_SIZE // _FIDELITY_SEED_STRIDE - 1
    if not 0 <= seed <= last:
        raise SystemExit(f"--seed must be in [0, {last}] (each seed is its own range of test videos), got {seed}")
    if samples > _FIDELITY_SEED_STRIDE:
        raise SystemExit(f"--samples must be at most {_FIDELITY_SEED_STRIDE} per seed, got {samples}")


def run_fidelity_command(ns: argparse.Namespace) -> None:
    seeds = ns.seeds or [ns.seed]
    for seed in seeds:
        _check_fidelity_seed(seed, ns.samples)
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {ns.device}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
    try:
        model, tokenizer, trained = load_tiny(ns.model)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    torch.nn.Module.to(model, torch.device(ns.device))
    label = ns.model or "bundled tiny Video-LLaVA"
    if not trained:
        label = "untrained random tiny Video-LLaVA (no checkpoint)"
        print(
            "NOTE: no trained checkpoint: agreement, KL and FLOPs check the machinery; accuracy and evidence "
            "recall comparisons are not meaningful"
        )
    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        items = benchmark_questions(seed, ns.samples, question_split=ns.split)
        report = run_fidelity(
            model,
            tokenizer,
            items,
            trained,
            methods=tuple(ns.methods),
            budgets=tuple(ns.budgets),
            batch_size=ns.batch_size,
            schedules=tuple(ns.schedule),
            presets=tuple(ns.presets),
            withdraw_after=tuple(ns.withdraw),
        )
        if ns.split == "hard":
            report["chance_bounds"] = chance_bounds(items, (0.25, 0.10, 0.05), seed)
        per_seed.append({"seed": seed, **report})
    merged = _over_seeds(per_seed, ns.samples)
    report = {"model": label, "trained": trained, "split": ns.split, "seed": seeds[0], "device": ns.device, **merged}
    dense = report["dense"]["accuracy"]
    print(f"model: {label}; {ns.split} split; {ns.samples} questions x seeds {seeds}; dense accuracy: {dense}")
    shown = [{**r, "budget": r["budget"] if r["schedule"] is None else r["schedule"]} for r in report["results"]]
    columns = ["preset", "method", "budget", "equivalent_tokens", "agreement", "evidence_recall", "accuracy"]
    columns += ["standard_error", "seed_spread", "retention", "prefill_flops_ratio"]
    print_table(shown, columns, width=9)
    if "chance_bounds" in report:
        bounds = [{"family": f, **v} for f, v in report["chance_bounds"].items()]
        print("accuracy that keeping random tokens allows by construction (first seed):")
        print_table(bounds, ["family", "questions", "evidence_tokens", "random_0.25", "random_0.1", "random_0.05"])
    write_report(report, ns.out)
    if ns.plot:
        others = [json.loads(Path(p).read_text()) for p in ns.plot_with]
        _plot_fidelity([report, *others], ns.plot)
        print(f"wrote {ns.plot}")


def _over_seeds(per_seed: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """One report from the reports of several seeds: each row's accuracy, retention, agreement and evidence
    recall are the mean over seeds, ``seed_spread`` the standard deviation of the accuracy (0 for one seed), and
    ``per_seed`` keeps every seed's own report; ``dense.accuracy`` is the mean too."""
    first = per_seed[0]
    if len(per_seed) == 1:
        rows = [{**r, "seed_spread": 0.0 if r["accuracy"] is not None else None} for r in first["results"]]
        return {**{k: v for k, v in first.items() if k != "seed"}, "results": rows, "seeds": [first["seed"]]}
    rows = []
    for k, row in enumerate(first["results"]):
        same = [report["results"][k] for report in per_seed]
        merged = dict(row)
        for field in ("accuracy", "retention", "agreement", "evidence_recall", "equivalent_tokens", "kl"):
            values = [r[field] for r in same if r[field] is not None]
            merged[field] = statistics.mean(values) if values else None
        accuracies = [r["accuracy"] for r in same if r["accuracy"] is not None]
        if accuracies:  # the binomial error of the mean over every seed's questions
            mean = statistics.mean(accuracies)
            merged["standard_error"] = math.sqrt(mean * (1 - mean) / (samples * len(accuracies)))
        merged["seed_spread"] = statistics.pstdev(accuracies) if accuracies else None
        if row["family_accuracy"] is not None:
            merged["family_accuracy"] = {
                f: statistics.mean(r["family_accuracy"].get(f, 0.0) for r in same) for f in row["family_accuracy"]
            }
        merged["accuracy_per_seed"] = accuracies
        rows.append(merged)
    dense_values = [r["dense"]["accuracy"] for r in per_seed if r["dense"]["accuracy"] is not None]
    dense = {**first["dense"], "accuracy": statistics.mean(dense_values) if dense_values else None}
    dense["accuracy_per_seed"] = dense_values
    out = {"dense": dense, "results": rows, "seeds": [r["seed"] for r in per_seed], "per_seed": per_seed}
    if "chance_bounds" in first:
        out["chance_bounds"] = first["chance_bounds"]
    return out


def _plot_fidelity(reports: list[dict[str, Any]], path: str) -> None:
    """Accuracy (agreement on an untrained model) against equivalent tokens, one panel per report (a split)."""
    import matplotlib  # optional: only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports, strict=True):
        metric = "accuracy" if report["trained"] else "agreement"
        rows = [r for r in report["results"] if r["schedule"] is None and r.get("preset") is None]
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            curves.setdefault(str(r["method"]), []).append((float(r["equivalent_tokens"]), float(r[metric])))
        for r in report["results"]:  # presets: one curve per preset family (video-, video-xf-) and method
            if r.get("preset") is not None:
                family = str(r["preset"]).rsplit("-", 1)[0]
                curves.setdefault(f"{family}-*: {r['method']}", []).append(
                    (float(r["equivalent_tokens"]), float(r[metric]))
                )
        for name, points in curves.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        dense = report["dense"]
        if metric == "accuracy" and isinstance(dense, dict) and dense.get("accuracy") is not None:
            ax.axhline(dense["accuracy"], color="grey", linestyle="--", label="dense")
        ax.set_xlabel("equivalent visual tokens")
        ax.set_ylabel(metric)
        ax.set_title(f"{report.get('split', 'easy')} split: {metric} ({report['model']})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_show(ns: argparse.Namespace) -> None:
    model, tokenizer, trained = load_tiny(ns.model)
    vision = model.config.vision_config
    size, patch = int(vision.image_size), int(vision.patch_size)
    evidence = None
    if ns.video:
        if not ns.question:
            raise SystemExit("--question is required with --video")
        # Here, not at the top: the decoder needs av and decord, and the fidelity benchmark runs without them
        # (on a bare GPU image, docs/gpu.md).
        from pipeline.stages.decode import decode_segments

        _, segments = decode_segments(ns.video, frames_per_segment=ns.frames, segment_seconds=None, size=size)
        frames, question = next(iter(segments)).frames, ns.question
    else:
        sample = make_sample("test", ns.synthetic)
        qa = next((q for q in sample.questions if q.question == ns.question), sample.questions[0])
        frames, question, evidence = sample.frames, qa.question, qa.evidence
    grid = size // patch
    enc = encode_prompts(tokenizer, [question], [frames], patch)
    rows = []
    for method in PLAIN_METHODS:
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


def run_long_command(ns: argparse.Namespace) -> None:
    torch.manual_seed(ns.seed)
    model, tokenizer, trained = load_tiny(ns.model)
    if not trained:
        print("NOTE: no trained checkpoint: accuracies are noise; FLOPs and time ratios still hold")
    report = run_long(model, tokenizer, long_items(ns.seed, ns.videos), ns.preset, ns.batch_size)
    report = {"model": ns.model or "bundled tiny Video-LLaVA", "trained": trained, "seed": ns.seed, **report}
    columns = ["run", "frames", "accuracy", "accuracy_brief", "accuracy_absent", "equivalent_tokens"]
    columns += ["flops_ratio", "time_ratio"]
    print_table(report["results"], columns, width=16)
    write_report(report, ns.out)


def run_looking(ns: argparse.Namespace) -> None:
    _check_fidelity_seed(ns.seed, ns.samples)
    model, tokenizer, trained = load_tiny(ns.model)
    if not trained:
        raise SystemExit(
            f"--model {ns.model}: no trained checkpoint there; where an untrained model looks says nothing"
        )
    if max(ns.layers) >= model.config.text_config.num_hidden_layers:
        raise SystemExit(
            f"--layers {max(ns.layers)} is past the model's last decoder layer "
            f"({model.config.text_config.num_hidden_layers - 1})"
        )
    items = benchmark_questions(ns.seed, ns.samples, question_split=ns.split)
    rows = looking_profile(model.eval(), tokenizer, items, ns.layers, ns.batch_size)
    print_table(rows, ["layer", "answer", "prompt", "chance"], width=10)
    write_report(
        {"model": ns.model or "tiny", "split": ns.split, "seed": ns.seed, "samples": ns.samples, "rows": rows}, ns.out
    )


def _bundled_names() -> str:
    """The bundled models with their LLM depth, read from each committed checkpoint's config (cheap: JSON)."""
    names = []
    for name, directory in BUNDLED_MODELS.items():
        try:
            config = json.loads((directory / "config.json").read_text())
            names.append(f"{name} ({config['text_config']['num_hidden_layers']} LLM layers)")
        except (OSError, ValueError, KeyError):
            names.append(f"{name} (no checkpoint in this checkout)")
    return " or ".join(names)


def add_commands(sub: Any) -> None:
    """Add this family's subcommands to ``sub`` (the main parser's subparsers)."""
    fidelity = sub.add_parser("fidelity", help="dense vs methods at equal budgets on synthetic video QA")
    fidelity.add_argument(
        "--model", help=f"a bundled model, {_bundled_names()}, or a checkpoint directory (default: tiny)"
    )
    fidelity.add_argument("--seed", type=int, default=0, help="0-99: which test videos")
    fidelity.add_argument(
        "--seeds",
        type=int_list,
        help="several seeds, e.g. 3,4,5: rows report the mean and the spread (overrides --seed)",
    )
    fidelity.add_argument(
        "--split",
        choices=QUESTION_SPLITS,
        default="easy",
        help="easy: the first task; hard: scarce evidence by construction",
    )
    fidelity.add_argument(
        "--presets",
        nargs="+",
        default=[],
        choices=[name for name, fields in PRESETS.items() if "target_fraction" in fields],
        metavar="PRESET",
        help="product presets: a row each, and FastV and random at the preset's own layers and budget",
    )
    fidelity.add_argument(
        "--withdraw",
        type=int_list,
        default=[],
        help="layers L, e.g. 0,2,4,8,16: accuracy with one random visual token kept after layer L",
    )
    fidelity.add_argument(
        "--samples", type=positive(int), default=512, help="questions, one per video (512: about +-2 points)"
    )
    fidelity.add_argument("--batch-size", type=int, default=8)
    fidelity.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the model runs (float32 either way: the answers match within rounding)",
    )
    fidelity.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        default=list(FIDELITY_METHODS),
        help=f"default: {' '.join(FIDELITY_METHODS)} (the sparsevlm-premerge* baselines only when named)",
    )
    fidelity.add_argument(
        "--budgets", type=float, nargs="*", default=[0.5, 0.25, 0.10, 0.05], help="none: the schedules only"
    )
    fidelity.add_argument(
        "--schedule",
        action="append",
        type=_schedule,
        default=[],
        help="also run the methods that prune inside the LLM at this schedule (repeat): fixed counts "
        "LAYERS:KEEPS (1:52, 0,1:130,26; not the cross-frame ones) or a budget shared by several layers "
        "LAYERS@FRACTION (0,1@0.1)",
    )
    fidelity.add_argument("--out", required=True, help="JSON report")
    fidelity.add_argument("--plot", help="PNG: accuracy (or agreement) vs equivalent tokens")
    fidelity.add_argument(
        "--plot-with", nargs="*", default=[], metavar="REPORT", help="other reports (e.g. the other split) as panels"
    )
    fidelity.set_defaults(run=run_fidelity_command)

    looking = sub.add_parser(
        "looking", help="per layer, the evidence's share of the prompt's attention on visual tokens (dense)"
    )
    looking.add_argument("--model", help=f"a bundled model, {_bundled_names()}, or a checkpoint directory")
    looking.add_argument("--split", choices=QUESTION_SPLITS, default="hard")
    looking.add_argument("--seed", type=int, default=0, help="0-99: which test videos")
    looking.add_argument("--samples", type=positive(int), default=64, help="questions, one per video")
    looking.add_argument("--layers", type=int_list, default=[0, 1, 2, 4, 6, 8, 15, 16])
    looking.add_argument("--batch-size", type=positive(int), default=8)
    looking.add_argument("--out", required=True, help="JSON report")
    looking.set_defaults(run=run_looking)

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

    long = sub.add_parser("long", help="32 frames compressed to the 8-frame budget vs 8 uniform frames")
    long.add_argument("--out", required=True)
    long.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    long.add_argument("--videos", type=int, default=48, help="clips (two questions each)")
    long.add_argument("--seed", type=int, default=0)
    long.add_argument("--preset", default="video-long")
    long.add_argument("--batch-size", type=int, default=8)
    long.set_defaults(run=run_long_command)
