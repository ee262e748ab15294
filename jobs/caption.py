"""Caption (and question) every video of a folder, S3 prefix or manifest into Parquet.

    python -m jobs.caption --input s3://videos/raw/ --output s3://videos/captions/ \\
        --question "what happens?" --preset video-25 --num-gpus-per-worker 1 --workers 4

Submit it to a cluster with ``ray job submit --entrypoint-num-cpus 1 -- python -m jobs.caption ...``: the driver
takes one CPU, the model actors take the GPUs. Rerunning skips what is done (the ledger); see docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from jobs.common import add_run_flags, config_from_args, job_parser, parse_run_args, run_cli, run_options


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("python -m jobs.caption", __doc__)
    add_run_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ns = parse_run_args(build_parser(), argv)
    config = config_from_args(ns)
    if ns.dry_run:
        from pipeline.observability.run_plan import plan_run

        return plan_run(config)
    from pipeline.run import run_pipeline

    return dataclasses.asdict(run_pipeline(config, **run_options(ns)))


if __name__ == "__main__":
    run_cli(main)
