"""A small pipeline run's settings and its rows, shared by the end-to-end and the fault tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from pipeline.config import PipelineConfig
from pipeline.harness.memory import process_tree
from pipeline.stages.schema import RESULT_SCHEMA

QUESTION = "What is happening?"


def make_config(input_uri: str, output_uri: str, model: Path, **changes: Any) -> PipelineConfig:
    """Two frames per 5 s segment, four-token answers, one question, batches of 2: a run of a few seconds
    per video on the tiny model; ``changes`` override any field."""
    settings: dict[str, Any] = {
        "questions": (QUESTION,),
        "segment_seconds": 5.0,
        "frames_per_segment": 2,
        "max_new_tokens": 4,
        "batch_size": 2,
        "decode_cpus": 0.5,
        "cpus_per_worker": 1.0,
    }
    config = PipelineConfig(input_uri=input_uri, output_uri=output_uri, model=str(model), **{**settings, **changes})
    return config.resolved()  # what the driver does first: the tests read keys and build stages from it


def read_rows(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every row a reader of ``config``'s output sees, after checking the files' schema."""
    fs, base = config.output.filesystem()
    table = pads.dataset(base, format="parquet", filesystem=fs).to_table()
    assert table.schema.equals(RESULT_SCHEMA, check_metadata=False)
    return table.to_pylist()


# Ray's process title of the pipeline's model actor (Ray Data names it after the stage).
MODEL_ACTOR_TITLE = "MapWorker(MapBatches(Predictor))"


def command_line(pid: int) -> str:
    """The command line of ``pid`` (Ray sets ``ray::<actor>`` process titles); "" once it has ended."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_titled(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment`` (every process descends from pid 1)."""
    return [pid for pid in process_tree(1) if fragment in command_line(pid)]
