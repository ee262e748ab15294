"""The jobs answer ``--help``, a usage error and ``--dry-run`` without importing torch or transformers.

Those two cost seconds of start-up (about 5 s of the 9 s ``--help`` took on this 2-core machine under load), so
only a run that loads the model may import them. Each command runs in a fresh interpreter under
``python -X importtime``, which lists every module the process imported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tests.jobs.imports import imported_packages
from tests.pipeline.media import encode

HEAVY = ("torch", "transformers")


def test_help_imports_no_model_library_and_no_ray() -> None:
    done, modules = imported_packages("jobs.caption", ["--help"])
    assert done.returncode == 0 and "--repeat-stop" in done.stdout
    assert not modules & {*HEAVY, "ray"}, sorted(modules & {*HEAVY, "ray"})
    assert "argparse" in modules  # the probe sees imports at all


def test_a_usage_error_imports_no_model_library_and_no_ray(tmp_path: Path) -> None:
    done, modules = imported_packages(
        "jobs.caption", ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--preset", "x"]
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown --preset 'x'")
    assert not modules & {*HEAVY, "ray"}, sorted(modules & {*HEAVY, "ray"})
    assert not (tmp_path / "o").exists()


def test_dry_run_imports_no_model_library_and_prints_a_table(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    encode(videos / "clip.mp4", np.zeros((8, 32, 32, 3), dtype=np.uint8), fps=8)
    done, modules = imported_packages(
        "jobs.caption", ["--input", str(videos), "--output", str(tmp_path / "o"), "--dry-run"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"dry run: {videos} -> {tmp_path / 'o'} (config key ")
    assert re.match(r"clip\.mp4\s+new\s+\d+\s+0$", lines[2]), lines[2]
    assert "1 seen: 1 new, 0 changed, 0 to retry, 0 already done; 1 to process" in lines[3]
    assert not (tmp_path / "o").exists()


def test_dry_run_under_json_logs_prints_its_plan_as_json(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    encode(videos / "clip.mp4", np.zeros((8, 32, 32, 3), dtype=np.uint8), fps=8)
    args = ["--input", str(videos), "--output", str(tmp_path / "o"), "--dry-run", "--log-format", "json"]
    done, modules = imported_packages("jobs.caption", args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert (plan["dry_run"], plan["seen"], plan["new"]) == (True, 1, 1)
