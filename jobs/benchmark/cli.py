"""The benchmark door's parser: every family adds its own subcommands; each sets ``run``."""

from __future__ import annotations

import argparse

import jobs.benchmark
from jobs.benchmark import cost, quality, throughput


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.benchmark",
        description=jobs.benchmark.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (cost, quality, throughput):
        family.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    ns.run(ns)
