"""Grow a trained tiny Video-LLaVA in depth without changing what it computes (:mod:`sparsevlm.tiny.grow`).

python -m jobs.grow_tiny --layers 16 --out /work/deep_train/grown16   # from the bundled checkpoint
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    """Grow ``--source`` to ``--layers`` and save it in ``--out``; returns ``--out``."""
    from sparsevlm.tiny import CHECKPOINT_DIR
    from sparsevlm.tiny.grow import grow_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(CHECKPOINT_DIR), help="checkpoint to grow (default: bundled)")
    parser.add_argument("--layers", type=int, required=True, help="LLM depth of the grown model")
    parser.add_argument("--out", required=True, help="directory for the grown checkpoint")
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    command = shlex.join(["python", "-m", "jobs.grow_tiny", *(sys.argv[1:] if argv is None else argv)])
    try:
        metrics = grow_checkpoint(source, args.layers, out, command)
    except FileNotFoundError as err:
        raise SystemExit(f"--source {err}") from None
    print(f"grew {source} to {args.layers} LLM layers ({metrics['num_parameters']:,} parameters) in {out}")
    return out


if __name__ == "__main__":
    main()
