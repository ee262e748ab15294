"""Train the bundled tiny Video-LLaVA on the synthetic video QA task (:mod:`sparsevlm.tiny.train`).

    python -m jobs.train_tiny                                  # the defaults made the 4-layer checkpoint
    python -m jobs.train_tiny --init sparsevlm/tiny/checkpoint_deep --text-layers 32 --hard-fraction 0.6 ...

One flag per :class:`sparsevlm.tiny.train.TrainConfig` field; the checkpoint, metrics.json (with the command
and ``next_first_video`` to continue from) and the learning curve are saved at every evaluation.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict


def parse_args(argv: list[str] | None = None) -> object:
    """Command-line flags, one per ``TrainConfig`` field (``--max-steps`` for ``max_steps``)."""
    from sparsevlm.tiny.train import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in asdict(TrainConfig()).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    ns = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(ns))
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    from sparsevlm.tiny.train import TrainConfig
    from sparsevlm.tiny.train import main as train

    cfg = parse_args(argv)
    assert isinstance(cfg, TrainConfig)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(cfg)


if __name__ == "__main__":
    main()
