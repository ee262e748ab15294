"""The job driver: one run from the output's lease to its summary, around the Ray Data chain of
:mod:`pipeline.build`.

``run_pipeline`` is the entry point of every job (caption, index, demo, benchmarks): it takes the output's
lease, probes that the output is writable, reconciles what killed runs left, lists the sources and drops
what the ledger says is done, checks the checkpoint and a sample of the pending videos, starts or joins Ray,
runs the chain while showing progress, compacts the ledger and writes the run record and its page. Systemic
failures become :class:`PipelineError` with one line; bad videos become error rows in the chain.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import time
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data

from pipeline.build import build_dataset, build_summaries, commit_stage
from pipeline.commit.lease import LeaseHeld, LeaseLost, OutputLease
from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.config import PipelineConfig
from pipeline.error_lines import cause_line, headline
from pipeline.harness.crash import crash_point
from pipeline.harness.standin import STAND_IN_RESOURCE
from pipeline.observability.metrics import metrics_endpoints
from pipeline.observability.progress import CommitReport, ProgressMode, RunProgress
from pipeline.observability.report_data import write_report
from pipeline.observability.run_record import RunSummary, summarise, write_failure, write_summary
from pipeline.ray_env import init_ray
from pipeline.stages.decode import decode_rows, source_row
from pipeline.stages.sources import SourceError, list_sources
from pipeline.stages.storage import TransientIOError
from pipeline.stages.summary import summary_work
from sparsevlm.checkpoint import read_checkpoint
from sparsevlm.engine_types import CheckpointError, ModelSpec
from sparsevlm.tiny import BUNDLED_NOTE, bundled_label

logger = logging.getLogger(__name__)

__all__ = ["PipelineError", "probe_output", "resolve_gpus", "run_pipeline"]


class PipelineError(RuntimeError):
    """A systemic failure: the model cannot load, no input decodes, or the Ray job itself failed."""


def inspect_checkpoint(model: str) -> ModelSpec:
    """The run's start-up check of its checkpoint (:func:`sparsevlm.checkpoint.read_checkpoint`: JSON only, so the
    driver never imports torch or transformers, seconds of start-up; the model actors load them)."""
    return read_checkpoint(model).spec


def run_pipeline(
    config: PipelineConfig,
    lease_wait_s: float = 0.0,
    progress: ProgressMode = "auto",
    metrics_export_port: int | None = None,
) -> RunSummary:
    """Caption and question every pending video of ``config.input_uri`` into ``config.output_uri``.

    The run first takes the output's lease (pipeline/commit/lease.py), waiting up to ``lease_wait_s`` for another run's,
    and holds it from before it reads the ledger to its last write; a leased output is left untouched. Under it, the
    output's writability is checked (a probe object written and deleted under ``_runs/``), so a read-only output fails
    in seconds, before Ray starts; then it reconciles what killed runs left
    (:meth:`~pipeline.commit.ledger.Ledger.reconcile`), and its compaction runs only while the lease is still its own.
    Videos already committed under the same config key are skipped before decoding. Bad videos become error rows;
    systemic problems raise :class:`PipelineError` with one message. ``progress`` is how the driver shows the run's
    progress (:class:`~pipeline.observability.progress.RunProgress`: a line redrawn on a terminal, periodic log lines
    otherwise, or ``off``); while it shows it, Ray Data's own progress bars are off. A local Ray that the run starts
    serves its metrics (pipeline/observability/metrics.py) on 127.0.0.1 at ``metrics_export_port`` (None: a port Ray
    picks; the run logs the endpoint).

    Returns:
        The run's :class:`RunSummary` (also written to ``<output>/_runs/<run_id>.json``, and shown with its
        throughput, errors and a sample of videos on the page ``<output>/_runs/<run_id>.html``,
        pipeline/observability/report.py).

    Raises:
        LeaseHeld: another run holds the output's lease (its message names the holder and the expiry).
        LeaseLost: another run took the lease over while this one ran (it expired: the driver was paused or cut
            off past its TTL); this run's writers and driver then commit, delete and compact nothing more.
        PipelineError: the output is not writable, the model cannot load, the input cannot be listed, none of
            the first pending videos decodes, every processed video failed, or the Ray job failed. Whatever
            stops a run under the lease still leaves ``_runs/<run_id>.json`` and its page, with
            ``status: failed``, the error's class and message and what the run had committed by then.
    """
    start = time.perf_counter()
    config = config.resolved()  # the checkpoint's revision, which the config key holds: read here, not in the config
    ledger = Ledger(*config.output.filesystem(), partition=config.partition)
    lease = OutputLease(ledger.fs, ledger.base, config.run_id)
    try:  # the lease is the run's first write: a leased output is left untouched
        lease.acquire(lease_wait_s)
    except LeaseHeld:
        raise
    except Exception as err:
        raise _unwritable(config, err) from err
    with lease:
        probe_output(config, ledger)
        record: dict[str, Any] = {}
        try:
            ledger.reconcile(lease.token)  # opens the run's epoch: a superseded run's late commits never count
            crash_point("reconciled")
            return _run(config, ledger, lease, record, start, progress, metrics_export_port)
        except BaseException as err:  # interrupts too: every run that got this far leaves a record
            write_failure(config, ledger, record, err, time.perf_counter() - start)
            raise


def probe_output(config: PipelineConfig, ledger: Ledger) -> None:
    """Write and delete a small object under ``<output>/_runs/``; raise :class:`PipelineError` with one line
    naming the output and the fix if either fails (read-only folder, missing bucket, no PutObject or
    DeleteObject permission, unreachable endpoint, no credentials)."""
    relative = f"_runs/.probe-{config.run_id}.json"
    path = posixpath.join(ledger.base, relative)
    try:
        ledger.write_json(relative, {"run_id": config.run_id, "probe": True})
        ledger.fs.delete_file(path)
        # s3fs deletes with DeleteObjects and ignores its per-key errors: a refused deletion looks like success.
        if ledger.fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise PermissionError(f"{path} is still there after its deletion")
    except Exception as err:
        raise _unwritable(config, err) from err


def _unwritable(config: PipelineConfig, err: BaseException) -> PipelineError:
    return PipelineError(
        f"the output {config.output_uri} is not writable ({type(err).__name__}: {cause_line(err)}); the run "
        "must create and delete files there: grant write and delete permission (on S3: s3:PutObject and "
        "s3:DeleteObject on the prefix, s3:ListBucket on the bucket), create the bucket, or choose another --output"
    )


def _run(
    config: PipelineConfig,
    ledger: Ledger,
    lease: OutputLease,
    record: dict[str, Any],
    start: float,
    progress: ProgressMode,
    metrics_export_port: int | None,
) -> RunSummary:
    """The body of :func:`run_pipeline`, under ``lease``; ``record`` receives the counts a failure record needs."""
    logger.info("run %s: reading the model's config and listing %s", config.run_id, config.input_uri)
    try:
        spec = inspect_checkpoint(config.model)
        record["frame_size"] = spec.frame_size  # the failure record's page draws the sampled frames with it
        config = config.resolved()  # again: reading a hub id's config may have fetched a newer snapshot
        sources = list_sources(
            config.input_uri, config.storage.fsspec(config.input_uri), allow_prefixes=config.allow_prefixes
        )
    except (CheckpointError, SourceError) as err:
        raise PipelineError(str(err)) from err
    key = config.config_key()
    items = [source_row(s, key, config.questions) for s in sources]
    done = ledger.committed()
    pending_keys = set(ledger.pending([i["ledger_key"] for i in items], config.retry_errors, done))
    pending = [i for i in items if i["ledger_key"] in pending_keys]
    record.update(seen=len(items), pending=sorted(pending_keys))
    # Retried videos: their old rows are replaced; remember where they are (another partition's file).
    previous = ledger.entries(i["ledger_key"] for i in pending if i["ledger_key"] in done)
    logger.info(
        "run %s: %d seen, %d already done, %d to process (config key %s)",
        config.run_id,
        len(items),
        len(items) - len(pending),
        len(pending),
        key,
    )
    entries: list[LedgerEntry] = []
    if pending and config.stand_in is None and config.model_label.startswith("bundled:"):
        logger.warning("run %s: the model %s is %s", config.run_id, config.model_label, BUNDLED_NOTE)
    if pending:
        frame_size = spec.frame_size if config.stand_in is None else config.stand_in.frame_size or spec.frame_size
        _preflight(config, pending, frame_size)
        replaces = {k: e.file for k, e in previous.items()}
        shown = RunProgress(len(pending), progress, seen=len(items), heartbeat=True, phase="starting Ray")
        try:
            config = _start_ray(config, metrics_export_port)
            shown.phase = "loading the model, first batch"
            entries = _process(config, build_dataset(config, pending, frame_size), replaces, shown, lease.token)
        finally:
            shown.close()
    summaries: list[LedgerEntry] = []
    summarized: dict[str, LedgerEntry] = {}  # the retried summaries' records before the run
    summary_cost: dict[str, Any] = {}
    if config.summarize:
        config, summaries, summarized, summary_cost = _summarize(
            config, ledger, [i["ledger_key"] for i in items], progress, metrics_export_port, lease
        )
    summary = summarise(config, len(items), len(pending), entries, time.perf_counter() - start)
    lease.check()  # fencing: a run that lost the output deletes nothing and compacts nothing
    replaced = ledger.remove_replaced(previous, entries) + ledger.remove_replaced(summarized, summaries)
    summary = dataclasses.replace(summary, replaced=replaced, summaries=summary_cost)
    write_summary(ledger, summary)
    crash_point("summary")
    write_report(ledger, config, asdict(summary), entries, spec.frame_size)  # logs, never raises
    try:  # the writes are over: fold this run's markers into the ledger index (fewer names for the next listing)
        lease.check()  # only under the lease: no other run writes or compacts meanwhile
        ledger.compact(entries + summaries)
    except Exception as err:  # storage errors included: the rows are committed and the markers stay valid
        logger.warning("could not compact the ledger (%s: %s); its markers stay valid", type(err).__name__, err)
    logger.info(
        "run %s: %s in %.1f s, %d processed (%d failed), %d already done, %d rows",
        config.run_id,
        summary.status,
        summary.wall_s,
        summary.processed,
        summary.failed,
        summary.skipped,
        summary.rows,
    )
    if summary.uncommitted:
        logger.warning("%d pending videos were not committed; the next run picks them up", summary.uncommitted)
    if summary.processed and summary.failed == summary.processed:
        raise PipelineError(
            f"every one of the {summary.processed} processed videos failed ({summary.error_classes}); their error "
            "rows are committed: fix the cause, then rerun with retry_errors=True"
        )
    return summary


def _start_ray(config: PipelineConfig, metrics_export_port: int | None) -> PipelineConfig:
    """Start or join Ray for the run's chains; returns ``config`` with its GPUs per actor decided."""
    init_ray(config.ray_address, metrics_export_port)
    _check_stand_in(config)
    config = resolve_gpus(config, ray.cluster_resources().get("GPU", 0.0))
    logger.info("run %s: metrics at %s", config.run_id, " ".join(metrics_endpoints()) or "(no endpoint)")
    return config


def _summarize(
    config: PipelineConfig,
    ledger: Ledger,
    video_keys: list[str],
    progress: ProgressMode,
    metrics_export_port: int | None,
    lease: OutputLease,
) -> tuple[PipelineConfig, list[LedgerEntry], dict[str, LedgerEntry], dict[str, Any]]:
    """The ``summary`` task after the segments (pipeline/stages/summary.py): summarize every listed video that is
    committed whole and has no summary yet, this run's and earlier runs' alike.

    Returns:
        The config (GPUs decided if Ray started here), the summaries committed, the records of retried ones
        before the run (their old part files are deleted like a retried video's), and the run record's
        ``summaries``: ``{"videos", "committed", "failed", "rows", "wall_s"}``: videos to summarize, summaries
        committed and those of them with an error row, their rows, and the pass's wall time (Ray start and the
        second model load included; each summary row's ``latency_ms`` is its share of the model's time).
    """
    start = time.perf_counter()
    items, previous = summary_work(config.summary_prompt, config.retry_errors, video_keys, ledger, ledger.committed())
    entries: list[LedgerEntry] = []
    if items:
        logger.info("run %s: summarizing %d videos (%r)", config.run_id, len(items), config.summary_prompt)
        counted = RunProgress(len(items), "off")  # the pass logs its start and its end; no line of its own
        config = _start_ray(config, metrics_export_port)
        entries = _process(
            config, build_summaries(config, items), {k: e.file for k, e in previous.items()}, counted, lease.token
        )
        counted.close()
    cost = {
        "videos": len(items),
        "committed": len(entries),
        "failed": sum(e.status != "ok" for e in entries),
        "rows": sum(e.rows for e in entries),
        "wall_s": round(time.perf_counter() - start, 3),
    }
    if items:
        logger.info(
            "run %s: %d summaries committed (%d failed) in %.1f s",
            config.run_id,
            cost["committed"],
            cost["failed"],
            cost["wall_s"],
        )
    return config, entries, previous, cost


def resolve_gpus(config: PipelineConfig, cluster_gpus: float) -> PipelineConfig:
    """``config`` with ``num_gpus_per_worker`` a number: None (the jobs' default) becomes 1 when the Ray cluster
    has ``cluster_gpus`` >= 1, else 0 (the CPU). Logs the choice, and warns when a checkpoint other than the
    bundled tiny ones will run on the CPU (a 7B there takes minutes per segment, in float32)."""
    gpus = config.num_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 and config.stand_in is None else 0.0
        logger.info(
            "run %s: the Ray cluster has %g GPUs: %g per model actor (--num-gpus-per-worker)",
            config.run_id,
            cluster_gpus,
            gpus,
        )
    if gpus == 0 and config.stand_in is None and bundled_label(config.model) is None:
        logger.warning(
            "run %s: the model actors run %s on the CPU (%g GPUs in the Ray cluster, %s): a 7B checkpoint takes "
            "minutes per segment there. On GPU nodes pass --num-gpus-per-worker 1 (an autoscaling cluster whose "
            "GPU nodes are not up yet shows no GPU)",
            config.run_id,
            config.model,
            cluster_gpus,
            "--num-gpus-per-worker 0" if config.num_gpus_per_worker == 0 else "so the default is 0",
        )
    return config.replace(num_gpus_per_worker=gpus)


def _check_stand_in(config: PipelineConfig) -> None:
    """A stand-in run needs one unit of the stand-in resource per actor; without them Ray Data would wait forever."""
    if config.stand_in is None:
        return
    units = ray.cluster_resources().get(STAND_IN_RESOURCE, 0)
    if units < config.workers:
        raise PipelineError(
            f"the Ray cluster has {units:g} units of {STAND_IN_RESOURCE!r} for {config.workers} stand-in actors; "
            f"start it with resources={{{STAND_IN_RESOURCE!r}: {config.workers}}} "
            "(pipeline.ray_env.local_ray(cpus, resources))"
        )


def _process(
    config: PipelineConfig,
    dataset: ray.data.Dataset,
    replaces: dict[str, str],
    shown: RunProgress,
    lease_token: str | None,
) -> list[LedgerEntry]:
    """Run ``dataset`` (a chain of :mod:`pipeline.build`, built but not run) through the commit stage and return what
    it committed, counting the reports into ``shown`` as they arrive (the caller closes it).

    Raises:
        LeaseLost: a commit found the lease taken over (fenced: another run owns the output now).
        PipelineError: the Ray job failed otherwise.
    """
    context = ray.data.DataContext.get_current()  # read when the dataset is built
    if shown.mode != "off":  # ours replaces Ray Data's bars
        context.enable_progress_bars = False
    # A map task's own exception reaches the driver (LeaseLost, TransientIOError), not a UserCodeException
    # whose cause is lost on the way (measured with Ray 2.60: only the traceback text names it).
    context.raise_original_map_exception = True
    reports = commit_stage(dataset, config, replaces, lease_token)
    try:
        for batch in reports.iter_batches(batch_size=None, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)
            for row in batch.to_pylist():
                shown.update(CommitReport.from_row(row))
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None)  # a task's own exception (RayTaskError keeps it)
        if isinstance(cause, LeaseLost):  # first lines only: Ray Data appends retry hints
            raise LeaseLost(headline(cause)) from err
        what = cause_line(err) if cause is None else f"{type(cause).__name__}: {headline(cause)}"
        raise PipelineError(f"the Ray job failed: {what}") from err
    return shown.entries


def _preflight(config: PipelineConfig, pending: list[dict[str, Any]], frame_size: int) -> None:
    """Stop before starting the model when no pending video decodes (a missing codec, a wrong bucket,
    unreadable storage), instead of producing a run of error rows; never stop a run that has a decodable video.

    It tries a sample of ``preflight_videos`` videos spread evenly over the pending ones (a bad first folder in
    URI order does not decide), then, if none of them decodes, the others, and returns at the first success.
    Entries known to be missing (a manifest's, ``source_size`` None) are skipped: they get their error rows.
    Each try decodes the first decodable frame in the driver (never the middle one: PyAV would decode half the
    video to reach it); an s3:// video is copied to a local temp file first (bounded by ``max_video_bytes``
    and ``max_decode_seconds``), so this check costs a download per try; only a run in which every video fails
    tries them all.
    """
    if config.preflight_videos == 0:
        return
    present = [i for i in pending if i["source_size"] is not None]
    n = min(config.preflight_videos, len(present))
    sample = [present[i] for i in sorted({round(k * (len(present) - 1) / max(1, n - 1)) for k in range(n)})]
    chosen = {id(i) for i in sample}
    order = sample + [i for i in present if id(i) not in chosen]
    errors = []
    one_frame = config.decoding.first_frame()
    for item in order:
        rows = decode_rows(item, one_frame, frame_size, first_frame_only=True)
        try:
            first = next(rows)
        except TransientIOError as err:  # the decode tasks will retry it; here it is one failed try
            errors.append(f"{item['source_uri']}: TransientIOError: {err}")
            continue
        finally:
            rows.close()  # removes a temporary local copy now
        if first["error_class"] is None:
            if len(errors) >= len(sample):
                logger.warning("preflight: %d videos failed before one decoded, e.g. %s", len(errors), errors[:3])
            return
        errors.append(f"{item['source_uri']}: {first['error_class']}: {first['error_message']}")
    if errors:
        raise PipelineError(
            f"none of the {len(errors)} pending videos decodes, so the run stops before loading the model; check "
            f"the input and the decoders (--preflight-videos 0 skips this check). Errors: {errors[:5]}"
        )
