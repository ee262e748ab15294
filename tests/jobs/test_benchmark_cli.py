"""The benchmark door loads only the family of the command it runs: ``gpu`` starts without the pipeline's packages."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs.benchmark.cli import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
# What a bare GPU image lacks: the pipeline's packages and the dev tools.
PIPELINE_PACKAGES = ("ray", "av", "decord", "pyarrow", "s3fs", "fsspec", "moto", "duckdb", "polars", "matplotlib")


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which importing any of PIPELINE_PACKAGES raises ImportError."""
    prelude = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {PIPELINE_PACKAGES!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked for this test: {{name}}")
                return None
        sys.meta_path.insert(0, Block())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # 4-6 s here (2 cores): imports the model stack in a fresh interpreter
def test_the_gpu_command_starts_without_the_pipeline_packages() -> None:
    result = run_blocked(
        """
        import sys
        from jobs.benchmark.cli import build_parser
        ns = build_parser(["gpu", "--out", "x.json"]).parse_args(["gpu", "--out", "x.json"])
        assert ns.run.__module__ == "jobs.benchmark.cost", ns.run.__module__
        import sparsevlm.bench.gpu, sparsevlm.engine  # what the command and the gpu tests run
        driver = ("pipeline.build", "pipeline.run")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith(driver))
        print("loaded:", loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_the_blocker_can_fail() -> None:
    """The same fresh interpreter refuses a command of the pipeline families: the block is real."""
    result = run_blocked('from jobs.benchmark.cli import main\nmain(["load", "--out", "x.json"])')
    assert result.returncode != 0
    assert "blocked for this test" in result.stderr


def test_the_family_table_names_every_command_of_each_family() -> None:
    for name, commands in FAMILIES.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(name).add_commands(sub)
        assert tuple(sub.choices) == commands, name
