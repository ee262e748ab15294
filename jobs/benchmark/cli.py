"""The benchmark door's parser: every family adds its own subcommands; each sets ``run``.

A command imports only its own family: ``cost`` needs torch and transformers alone, so ``gpu`` runs on a bare GPU
image (infra/gpu-check.sh), while ``quality`` and ``throughput`` import the pipeline (ray, av, decord). The
families load when the command line names one of their commands; ``--help`` and an unknown command load all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

import jobs.benchmark

# Family module -> the subcommands its ``add_commands`` adds (tests/jobs/test_benchmark_cli.py checks both agree).
FAMILIES: dict[str, tuple[str, ...]] = {
    "jobs.benchmark.cost": ("presets", "speed", "speed-probe", "gpu", "syncs"),
    "jobs.benchmark.quality": ("fidelity", "looking", "show", "long"),
    "jobs.benchmark.throughput": ("pipeline", "split", "load", "shots"),
}


def families_for(argv: list[str]) -> list[ModuleType]:
    """The family modules ``argv`` needs: the one that holds its command, or every family when ``argv`` names no
    known command (``--help``, a typo: the parser then lists every command)."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    names = [name for name, commands in FAMILIES.items() if command in commands] or list(FAMILIES)
    return [importlib.import_module(name) for name in names]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (None: every family's commands)."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.benchmark",
        description=jobs.benchmark.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    families = families_for(argv) if argv is not None else [importlib.import_module(name) for name in FAMILIES]
    for family in families:
        family.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ns = build_parser(argv).parse_args(argv)
    ns.run(ns)
