"""The only Ray Data chain: from a video listing to committed Parquet rows.

::

    work items (the driver, pipeline/run.py) -> from_items -> flat_map(decode_rows)   CPU tasks
        -> map_batches(Predictor, ActorPoolStrategy)                                   one engine per actor
        -> map_batches(commit_rows)                                                    Parquet + ledger commit
        -> iter_batches (driver): one CommitReport row per commit task                progress, summary

and, with ``--summarize``, after it (the ``summary`` task needs every segment of a video committed first)::

    summary work items (pipeline/stages/summary.py) -> from_items -> map(read_clips)  captions from part files
        -> map_batches(Summarizer, ActorPoolStrategy) -> map_batches(commit_rows)      text-only generate, commit

The stages themselves are plain functions and classes (pipeline/stages/decode.py, predictor.py, ledger.py) that run
without Ray; this module only chooses resources and wires them. The job driver around the chain (lease,
probe, listing, preflight, summary, report) is :mod:`pipeline.run`. The commit stage is a map, not a
Datasink, so its small reports stream to the driver while the run goes (a Datasink hands its results over
only at the end): the progress line and the summary count them, with no second pass over the output.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import pyarrow as pa
import ray
import ray.data

from pipeline.commit.ledger import Ledger
from pipeline.config import OutputTarget, PipelineConfig
from pipeline.error_lines import short_error
from pipeline.harness.standin import STAND_IN_RESOURCE
from pipeline.observability.metrics import record_commit
from pipeline.observability.progress import CommitReport, commit_report
from pipeline.observability.quality import QualityTally
from pipeline.stages.decode import decode_rows
from pipeline.stages.split import split_items
from pipeline.stages.storage import TransientIOError, storage_failure

logger = logging.getLogger(__name__)

__all__ = ["build_dataset", "build_summaries", "commit_rows", "commit_stage"]

# One decode task per video spreads long and short videos evenly; past this many the per-task overhead
# (a few ms each) would start to matter, so videos share tasks.
MAX_INPUT_BLOCKS = 4096


def commit_rows(
    rows: pa.Table, output: OutputTarget, run_id: str, replaces: dict[str, str], lease_token: str | None = None
) -> pa.Table:
    """The commit stage: write result rows through the :class:`~pipeline.commit.ledger.Ledger` (one Parquet file per
    video, then its commit marker) and return one :class:`~pipeline.observability.progress.CommitReport` row about them.

    Args:
        rows: result rows with the ledger's internal columns (the model stage's output).
        output: where the rows go (``PipelineConfig.output``).
        run_id: the run's id: it names the staging folder and is recorded in the markers.
        replaces: old part file per retried key; the commit of the new rows deletes it (see the ledger).
        lease_token: the run's output lease token: each commit first checks the lease still carries it.
    """
    if not rows.num_rows:
        return CommitReport().to_table()
    ledger = Ledger(*output.filesystem(), partition=output.partition, lease_token=lease_token)
    try:
        committed = ledger.write_rows(rows, run_id, replaces)
    except OSError as err:  # the storage client retried each request with backoff; now Ray retries the task
        if storage_failure(err) == "transient":
            raise TransientIOError(f"writing results to {output.uri}: {short_error(err)}") from err
        raise
    record_commit([entry.status for entry in committed], QualityTally.total(e.quality for e in committed))
    return commit_report(rows, committed).to_table()


def build_dataset(config: PipelineConfig, items: list[dict[str, Any]], frame_size: int) -> ray.data.Dataset:
    """The lazy chain from work items to result rows (everything but the write).

    Args:
        config: the run's config.
        items: :func:`~pipeline.stages.decode.source_row` dicts of the videos to process (one each; a video larger than
            ``config.split_video_bytes`` becomes several decode tasks here, :mod:`pipeline.stages.split`).
        frame_size: the model's frame side, so frames leave the decoders at model resolution.
    """
    # The model stage's class, imported here rather than with the module: it loads torch, which the commit
    # tasks (they import this module for commit_rows) never need; the model actors import it themselves.
    from pipeline.stages.predictor import Predictor

    items = split_items(items, config.split_video_bytes)  # long videos: several decode tasks each
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_INPUT_BLOCKS)))
    ds = ds.flat_map(
        functools.partial(decode_rows, settings=config.decoding, frame_size=frame_size),
        # decord runs single-threaded (num_threads=1), so one CPU per task is its real use. flat_map can change
        # the row count and map_batches below asks for batch_size rows, so Ray never fuses decoding into the
        # model actor (performance-anchors §4): decoders and the model overlap.
        # Decode errors and a storage's permanent answers (403, 404) become error rows. A transient storage
        # failure (5xx, throttling, a dropped connection) that outlasts the client's own retries raises
        # TransientIOError before the task sends any row, and Ray retries the task, at most io_retries times
        # (a fresh list: Ray Data appends RaySystemError to it). max_retries also bounds retries after a lost
        # worker, which Ray Data otherwise repeats forever.
        num_cpus=config.decode_cpus,
        max_retries=config.io_retries,
        retry_exceptions=[TransientIOError],
    )
    return _model_stage(ds, Predictor, config)


def build_summaries(config: PipelineConfig, items: list[dict[str, Any]]) -> ray.data.Dataset:
    """The lazy chain from summary work items (:func:`pipeline.stages.summary.summary_work`) to summary result rows.

    The model actors are a second pool with the model stage's resources: the first chain has ended and released
    its actors, so the GPUs are free again; loading the model once more costs what a run's start costs.
    """
    from pipeline.stages.summary import Summarizer, read_clips  # the actors load torch, not the driver

    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_INPUT_BLOCKS)))
    ds = ds.map(
        functools.partial(read_clips, output=config.output),
        # One small GET of a part file's caption columns: I/O bound, like the commit tasks, so no CPU held;
        # transient storage failures are retried like a decode task's.
        num_cpus=0,
        concurrency=max(2, config.workers),
        max_retries=config.io_retries,
        retry_exceptions=[TransientIOError],
    )
    return _model_stage(ds, Summarizer, config)


def _model_stage(ds: ray.data.Dataset, stage: type, config: PipelineConfig) -> ray.data.Dataset:
    """``ds`` through a pool of model actors of class ``stage`` (each built from the model and answer settings),
    ``batch_size`` rows a call."""
    return ds.map_batches(
        stage,
        fn_constructor_kwargs={"model": config.model_settings, "answering": config.answering},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        # A fixed pool: model load is the expensive part (tens of seconds for 7B), so actors live for the run.
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        **_model_resources(config),
    )


def _model_resources(config: PipelineConfig) -> dict[str, Any]:
    """What one model actor holds."""
    if config.stand_in is not None:
        # Benchmarks and tests: a stand-in accelerator (pipeline/harness/standin.py) waits without using a CPU, like a
        # process that drives a GPU; the custom resource places one actor per stand-in unit of the Ray.
        return {"num_cpus": 0, "resources": {STAND_IN_RESOURCE: 1}}
    return {
        # One GPU per actor in production (a 7B model in bf16 takes ~14 GB); 0 runs the model on CPU.
        "num_gpus": config.num_gpus_per_worker,
        # The actor's torch threads equal this share (Predictor), so it never oversubscribes the decoders.
        "num_cpus": config.cpus_per_worker,
    }


def commit_stage(
    results: ray.data.Dataset, config: PipelineConfig, replaces: dict[str, str], lease_token: str | None = None
) -> ray.data.Dataset:
    """The chain's last stage: commit tasks over the model stage's result rows, one report row each; each
    commit first checks that the output's lease still carries ``lease_token`` (None: no fencing)."""
    return results.map_batches(
        functools.partial(
            commit_rows, output=config.output, run_id=config.run_id, replaces=replaces, lease_token=lease_token
        ),
        batch_size=None,  # whatever block the model stage produced: the ledger stages segments per video
        batch_format="pyarrow",
        # Writing small Parquet files is I/O bound, so the commit tasks hold no CPU and a few run at once. At
        # 0.25 CPU each, Ray Data ran four and reserved a share of the CPUs for them, and its budget then left
        # room for one 1-CPU decode task of two (measured on 2 CPUs, stand-in runs). Their remote arguments
        # still differ from the model actors', so Ray Data never fuses the writes into them.
        num_cpus=0,
        concurrency=max(2, config.workers),
        # Transient storage failures past the client's retries: Ray retries the task, like a decode task; a
        # retried commit restages and recommits under the same names, so no video twice (pipeline/commit/ledger.py).
        max_retries=config.io_retries,
        retry_exceptions=[TransientIOError],
    )
