"""The pipeline's Prometheus metrics, through Ray's metrics API (``ray.util.metrics``): every definition here.

Each process that does the work records it (decode tasks, model actors, commit tasks); Ray's metrics agent on
each node serves them on its Prometheus endpoint, prefixed ``ray_`` (a counter also gets ``_total``)::

    ray_svl_videos_total{status}          videos committed: ok, partial (some error rows), error
    ray_svl_segments_total                segments through the model
    ray_svl_rows_total{status}            result rows written by the model stage: ok, error
    ray_svl_bytes_read_total              bytes of the videos the decoders opened (the source objects' sizes)
    ray_svl_decode_seconds                histogram: one video's download and decoding, wall time
    ray_svl_model_batch_seconds           histogram: one batched generate call (all prompts of a batch)
    ray_svl_equivalent_tokens             histogram: visual tokens an answer kept (the paper's equivalent tokens)
    ray_svl_equivalent_tokens_kept_total  the same, summed over the answers (exact; see below)
    ray_svl_visual_tokens_in_total        visual tokens entering the language model, summed over the answers
    ray_svl_shadow_samples_total{task}    quality rows committed: the shadow sample (pipeline/observability/quality.py)
    ray_svl_shadow_agreement_total{task}  their agreement summed: over samples_total, the mean agreement
    ray_svl_shadow_failed_total           sampled prompts whose dense call failed (no quality row)

Ray adds ``NodeAddress``, ``SessionName``, ``WorkerId`` and version labels. Ray 2.60 aggregates a histogram's
observations into buckets before export and rebuilds ``_sum`` from the bucket midpoints, so a histogram's
``_count`` and buckets are exact and its ``_sum`` is not: the two token counters give the exact kept fraction.
The shadow counters give the agreement per task, e.g. in PromQL
``sum by (task) (rate(ray_svl_shadow_agreement_total[1h])) / sum by (task) (rate(ray_svl_shadow_samples_total[1h]))``
(its interval is the run record's).

A local Ray that the job starts serves them on 127.0.0.1 at ``metrics_export_port``
(:func:`pipeline.ray_env.init_ray`); a cluster serves them on every node at the port its ``ray start
--metrics-export-port`` names (infra/kuberay). The agent exports every few seconds, so a scrape sees a
recording after a delay.

Recording is a no-op in a process where Ray is not running (the stages are plain functions, used without Ray
in tests and in the driver's preflight check). Ray is never imported here unless the process already has it.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any

from pipeline.observability.quality import QualityTally

__all__ = [
    "METRIC_PREFIX",
    "metrics_endpoints",
    "record_commit",
    "record_decode",
    "record_model_batch",
]

METRIC_PREFIX = "svl_"
# Seconds: a short clip decodes in tens of milliseconds, a long S3 video downloads for minutes.
_DECODE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0]
# Seconds: a batched generate of the tiny model takes milliseconds, of a 7B model on a GPU seconds.
_MODEL_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
# Tokens: the presets keep from 5 % to all of 8 frames x 257 tokens.
_TOKEN_BUCKETS = [16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2056.0, 4112.0]


@dataclass(frozen=True)
class _Metrics:
    videos: Any
    segments: Any
    rows: Any
    bytes_read: Any
    decode_seconds: Any
    model_batch_seconds: Any
    equivalent_tokens: Any
    equivalent_tokens_kept: Any
    visual_tokens_in: Any
    shadow_samples: Any
    shadow_agreement: Any
    shadow_failed: Any


@functools.cache
def _metrics() -> _Metrics:
    """This process's metric objects (Ray wants one per name and process)."""
    from ray.util.metrics import Counter, Histogram

    def name(short: str) -> str:
        return METRIC_PREFIX + short

    return _Metrics(
        videos=Counter(name("videos"), description="Videos committed, by status.", tag_keys=("status",)),
        segments=Counter(name("segments"), description="Video segments through the model."),
        rows=Counter(name("rows"), description="Result rows from the model stage, by status.", tag_keys=("status",)),
        bytes_read=Counter(name("bytes_read"), description="Bytes of the source videos the decoders opened."),
        decode_seconds=Histogram(
            name("decode_seconds"), description="One video's download and decoding (s).", boundaries=_DECODE_BUCKETS
        ),
        model_batch_seconds=Histogram(
            name("model_batch_seconds"), description="One batched generate call (s).", boundaries=_MODEL_BUCKETS
        ),
        equivalent_tokens=Histogram(
            name("equivalent_tokens"), description="Visual tokens kept per answer.", boundaries=_TOKEN_BUCKETS
        ),
        equivalent_tokens_kept=Counter(
            name("equivalent_tokens_kept"), description="Equivalent tokens kept, summed over the answers."
        ),
        visual_tokens_in=Counter(
            name("visual_tokens_in"), description="Visual tokens entering the LLM, summed over the answers."
        ),
        shadow_samples=Counter(
            name("shadow_samples"), description="Shadow dense sample: quality rows committed.", tag_keys=("task",)
        ),
        shadow_agreement=Counter(
            name("shadow_agreement"),
            description="Shadow dense sample: agreement with the dense answer, summed over the quality rows.",
            tag_keys=("task",),
        ),
        shadow_failed=Counter(name("shadow_failed"), description="Shadow dense sample: failed dense prompts."),
    )


def _active() -> bool:
    """Whether this process runs under Ray (a worker, or a driver connected to a cluster)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def record_decode(seconds: float, bytes_read: int | None) -> None:
    """One video decoded (or failed to): its wall time and its source size."""
    if not _active():
        return
    metrics = _metrics()
    metrics.decode_seconds.observe(seconds)
    if bytes_read:
        metrics.bytes_read.inc(bytes_read)


def record_model_batch(
    seconds: float | None, segments: int, statuses: list[str], equivalent: list[float], visual_in: list[int]
) -> None:
    """One model-stage batch: its generate time (None: nothing was asked), its decoded segments, the status
    of each result row, and the equivalent tokens and visual tokens in of each answer."""
    if not _active():
        return
    metrics = _metrics()
    if seconds is not None:
        metrics.model_batch_seconds.observe(seconds)
    if segments:
        metrics.segments.inc(segments)
    for status in sorted(set(statuses)):
        metrics.rows.inc(statuses.count(status), tags={"status": status})
    for tokens in equivalent:
        metrics.equivalent_tokens.observe(tokens)
    # Ray's counters refuse an increment of 0 (a stand-in accelerator's answers carry no tokens).
    if sum(equivalent) > 0:
        metrics.equivalent_tokens_kept.inc(sum(equivalent))
    if sum(visual_in) > 0:
        metrics.visual_tokens_in.inc(sum(visual_in))


def record_commit(statuses: list[str], quality: QualityTally | None = None) -> None:
    """Videos committed by one commit task, by their status, and the tally of their shadow sample."""
    if not _active():
        return
    metrics = _metrics()
    for status in sorted(set(statuses)):
        metrics.videos.inc(statuses.count(status), tags={"status": status})
    if quality is None:
        return
    # Ray's counters refuse an increment of 0.
    for task, samples, agreed in (
        ("caption", quality.caption_samples, quality.caption_sum),
        ("qa", quality.qa_samples, float(quality.qa_agreed)),
    ):
        if samples:
            metrics.shadow_samples.inc(samples, tags={"task": task})
        if agreed > 0:
            metrics.shadow_agreement.inc(agreed, tags={"task": task})
    if quality.failed:
        metrics.shadow_failed.inc(quality.failed)


def metrics_endpoints() -> list[str]:
    """The Prometheus endpoint of each live node of the connected Ray (``http://host:port/metrics``)."""
    import ray

    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]
