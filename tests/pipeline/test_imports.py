"""The decode stage and the driver's wiring import neither torch nor transformers.

Every Ray decode task imports pipeline.stages.decode (Ray pickles ``decode_rows`` by reference) and every commit task
imports pipeline.build (``commit_rows``). Neither needs the model, and torch plus transformers cost each such
worker seconds of start-up and ~150 MiB of memory, so only the model stage (pipeline/stages/predictor.py and the
engine) may load them. The check runs in a fresh interpreter: this test process has imported torch long ago.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a decode task, a commit task and the driver's listing import (the model stage is left out on purpose).
LIGHT_MODULES = (
    "pipeline.stages.decode",
    "pipeline.stages.readers",
    "pipeline.stages.video",
    "pipeline.stages.storage",
    "pipeline.stages.split",
    "pipeline.stages.sources",
    "pipeline.commit.ledger",
    "pipeline.observability.metrics",
    "pipeline.config",
    "pipeline.harness.standin",
    "pipeline.observability.progress",
    "pipeline.commit.lease",
    "pipeline.observability.run_record",
    "pipeline.observability.report_data",
    "pipeline.harness.utilisation",
    "pipeline.build",
    "pipeline.run",
    "sparsevlm",
    "sparsevlm.config",
    "sparsevlm.resize",
    "sparsevlm.token_counts",
    "sparsevlm.engine_types",
)
HEAVY = ("torch", "transformers")


def test_the_decode_stage_and_the_driver_wiring_import_no_model_library() -> None:
    # One module at a time, so that a failure names the first module that pulled a model library in.
    probe = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"    loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    if loaded:\n"
        "        print(name, *loaded)\n"
        "        break\n"
        "from sparsevlm import PRESETS, SparseConfig\n"
        f"print(*[m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.splitlines()[0].split()
    assert not first, (
        f"importing {first[0]} loaded {', '.join(first[1:])}; a decode or commit worker must not: import it "
        "lazily in the model stage, or move what the light module needs into a torch-free module"
    )
    assert not done.stdout.strip(), f"`from sparsevlm import PRESETS, SparseConfig` loaded {done.stdout.strip()}"


def test_the_heavy_names_of_sparsevlm_still_load_on_first_use() -> None:
    """``sparsevlm``'s package names resolve lazily (PEP 562), to the same objects as their home modules."""
    import sparsevlm
    import sparsevlm.patch
    import sparsevlm.stats

    assert sparsevlm.apply_patch is sparsevlm.patch.apply_patch
    assert sparsevlm.last_stats is sparsevlm.patch.last_stats
    assert sparsevlm.SampleStats is sparsevlm.stats.SampleStats
    assert set(sparsevlm.__all__) <= set(dir(sparsevlm))
    for name in sparsevlm.__all__:
        assert getattr(sparsevlm, name) is not None
