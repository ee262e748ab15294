"""infra/gpu-check.sh: fails in seconds naming what is missing, and runs its steps end to end on a CPU at a tiny
size (GPU_CHECK_TINY=1, the tests then skipped), writing the files docs/gpu.md lists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "gpu-check.sh"


def run_check(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(out / "no-wheels"), **env}
    return subprocess.run(
        [str(SCRIPT), str(out)], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def test_without_a_gpu_it_stops_at_the_preflight(tmp_path: Path) -> None:
    result = run_check(tmp_path, CUDA_VISIBLE_DEVICES="")  # no device visible, even on a GPU machine
    assert result.returncode == 1
    assert "no CUDA device visible to torch" in result.stderr and "gpu-check: FAILED: preflight" in result.stderr
    assert not (tmp_path / "gpu.json").exists() and not (tmp_path / "tests.xml").exists()


def test_a_wrong_transformers_is_named_with_the_expected_version(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "5.17.0"\n')
    result = run_check(tmp_path / "out", PYTHONPATH=str(tmp_path / "site"), GPU_CHECK_TINY="1")
    assert result.returncode == 1
    assert "transformers 5.17.0 found, 5.23.0 expected" in result.stderr


@pytest.mark.slow  # about 30 s: the benchmark's tiny size, one batch, one repeat
def test_the_tiny_run_writes_every_file(tmp_path: Path) -> None:
    result = run_check(tmp_path, GPU_CHECK_TINY="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("preflight.json", "tests.xml", "tests.log", "gpu.json", "benchmark.log"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["versions"]["transformers"] == "5.23.0" and report["setup"]["repeats"] == 1
    assert {(r["preset"], r["batch"]) for r in report["results"]} == {(p, 1) for p in report["setup"]["presets"]}
    suite = re.search(r'<testsuite [^>]*skipped="(\d+)"[^>]*tests="(\d+)"', (tmp_path / "tests.xml").read_text())
    assert suite and int(suite[1]) == int(suite[2]) >= 6  # every gpu test collected, then skipped without CUDA
