"""A run's rows are what they were (issue #27: a restructuring changes no row): the caption job over the three real
clips, with every segment in the shadow sample, against the rows and quality rows in ``tests/assets/golden/rows.json``
(made at commit dfea4c5, regenerated when a change meant to change rows landed; its ``made_by`` says which and the
command), modulo what varies by run (ids, times, the pipeline version) and by path (the video id hashes the path and
mtime); the config key too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from jobs import caption
from pipeline.query.results import open_quality, open_results
from tests.pipeline.crash_jobs import copy_clips

GOLDEN = Path(__file__).parents[1] / "assets" / "golden" / "rows.json"
FLAGS = ["--segment-seconds", "5", "--frames", "2", "--max-new-tokens", "8", "--question", "what happens?"]


def comparable(table: pa.Table, varying: list[str]) -> list[dict[str, Any]]:
    """The rows without what varies by run or path, the source by file name, in a fixed order, as JSON has them."""
    rows = []
    for row in table.to_pylist():
        row = {k: v for k, v in row.items() if k not in varying}
        row["source_uri"] = os.path.basename(row["source_uri"])
        rows.append(row)
    rows.sort(key=lambda r: (r["source_uri"], -1 if r["segment_index"] is None else r["segment_index"], r["task"]))
    return json.loads(json.dumps(rows, default=str))


@pytest.mark.slow  # about 15 s here: one run of the job
@pytest.mark.usefixtures("pipeline_ray")
def test_a_run_makes_the_rows_and_the_key_it_made_before_the_restructuring(assets: Path, tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    videos = copy_clips(assets, tmp_path / "in")
    out = str(tmp_path / "out")
    summary = caption.main(["--input", str(videos), "--output", out, *FLAGS, "--shadow-fraction", "1"])
    assert summary["config_key"] == golden["config_key"]
    assert comparable(open_results(out).to_table(), golden["varying"]) == golden["rows"]
    assert comparable(open_quality(out).to_table(), golden["varying"]) == golden["quality"]
