"""Benchmarks: `python -m jobs.benchmark <command> ...`.

presets [--layers 32 --hidden 4096 --ffn 11008 --visual 2056 --text 40] [--out FILE.json]
    equivalent tokens and prefill FLOPs ratio of every preset on a model layout (default:
    Video-LLaVA-7B, 8 frames x 257 tokens), from the token arithmetic and the FLOPs formula.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def main(argv: list[str] | None = None) -> None:
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
    ns = parser.parse_args(argv)
    ns.run(ns)


if __name__ == "__main__":
    main()
