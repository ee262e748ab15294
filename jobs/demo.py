"""`make demo`: dense vs sparse Video-LLaVA on synthetic videos, answers and costs side by side.

python -m jobs.demo [--model DIR] [--samples N] [--presets video-25 video-10 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from sparsevlm import SparseConfig, apply_patch, last_stats
from sparsevlm.tiny.inputs import encode_prompts
from sparsevlm.tiny.loading import load_tiny
from sparsevlm.tiny.video_qa import FAMILIES, make_sample


@dataclass(frozen=True)
class DemoArgs:
    model: str | None
    samples: int
    presets: list[str]


def main(args: DemoArgs) -> None:
    torch.manual_seed(0)
    model, tokenizer, trained = load_tiny(args.model)
    patch = model.config.vision_config.patch_size
    print(f"model: {'bundled trained tiny Video-LLaVA' if trained else 'UNTRAINED random tiny Video-LLaVA'}")
    samples = [make_sample("test", i) for i in range(args.samples)]
    qas = [s.questions[i % len(s.questions)] for i, s in enumerate(samples)]
    inputs = encode_prompts(tokenizer, [q.question for q in qas], [s.frames for s in samples], patch)
    answers: dict[str, list[str]] = {}
    costs = []
    for name in ["dense", *args.presets]:
        apply_patch(model, SparseConfig.preset(name))
        times = []
        with torch.no_grad():
            for _ in range(3):
                start = time.perf_counter()
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
                times.append(time.perf_counter() - start)
        new = out[:, inputs["input_ids"].shape[1] :]
        answers[name] = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        stats = last_stats(model)
        costs.append(
            (
                name,
                statistics.mean(s.visual_tokens_in for s in stats),
                statistics.mean(s.equivalent_tokens for s in stats),
                statistics.mean(s.flops_ratio for s in stats),
                statistics.median(times) * 1000,
            )
        )
    print()
    header = ["family", "question", "truth", *answers]
    rows = [[q.family, q.question, q.answer, *(answers[n][i] for n in answers)] for i, q in enumerate(qas)]
    _print_table(header, rows)
    print()
    _print_table(
        ["preset", "visual tokens", "equivalent tokens", "% kept", "prefill FLOPs ratio", "generate ms (batch)"],
        [[n, f"{v:.0f}", f"{e:.1f}", f"{100 * e / v:.1f}", f"{f:.3f}", f"{ms:.0f}"] for n, v, e, f, ms in costs],
    )
    if trained:
        print()
        for name in answers:
            correct = sum(a == q.answer for a, q in zip(answers[name], qas, strict=True))
            print(f"{name}: {correct}/{len(qas)} correct")
    print(f"\nquestion families: {', '.join(FAMILIES)}")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def parse_args(argv: list[str] | None = None) -> DemoArgs:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the bundled tiny model)")
    parser.add_argument("--samples", type=int, default=8, help="synthetic test videos (default 8)")
    parser.add_argument("--presets", nargs="+", default=["video-25", "video-10", "video-rank"])
    ns = parser.parse_args(argv)
    for name in ns.presets:
        SparseConfig.preset(name)  # fail early on a typo
    return DemoArgs(model=ns.model, samples=ns.samples, presets=ns.presets)


if __name__ == "__main__":
    main(parse_args())
