"""The results of an output prefix as its ledger names them: the reader that is exact at every moment. No Ray.

A recursive glob of the prefix (``pandas.read_parquet(OUTPUT)``, DuckDB ``read_parquet('OUTPUT/**/*.parquet')``) reads
every part file there is. That is every committed video once after any completed run or reconcile, but in between it may
also read what a killed writer or a writer whose lease was taken over left: a part file no marker names, or one whose
marker's epoch never counted (pipeline/commit/ledger_index.py, "Epochs"); the next run's reconcile deletes those.
:func:`open_results` reads only the part file of each committed key's newest record, so it never reads a video twice or
in part, even then.

The shadow dense sample's quality rows (pipeline/observability/quality.py) are Arrow IPC files under ``_quality/``,
which no Parquet glob of the prefix reads; :func:`open_quality` reads those the same records name, so its rows belong to
exactly the videos :func:`open_results` reads, once each.
"""

from __future__ import annotations

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipeline.commit.ledger import Ledger
from pipeline.observability.quality import QUALITY_SCHEMA
from pipeline.stages.storage import arrow_filesystem, s3_filesystem

__all__ = ["open_quality", "open_results", "quality_dataset", "results_dataset"]


def open_results(output_uri: str, s3_endpoint_url: str | None = None) -> pads.Dataset:
    """The committed results under ``output_uri`` as a pyarrow dataset, with the hive partition columns
    (``dt``) of the nightly job's folders.

    Args:
        output_uri: a local folder or ``s3://bucket/prefix``, as given to the caption or nightly job.
        s3_endpoint_url: an S3-compatible endpoint for ``s3://`` outputs (None: AWS); credentials come from the
            standard AWS sources.

    Returns:
        A dataset of the part files the ledger names (``.to_table()``, ``.to_table().to_pandas()``,
        ``duckdb.sql("... FROM dataset")``); an empty one when nothing is committed.
    """
    s3 = s3_filesystem(s3_endpoint_url, {}) if output_uri.startswith("s3://") else None
    return results_dataset(*arrow_filesystem(output_uri, s3))


def results_dataset(filesystem: pafs.FileSystem, base: str) -> pads.Dataset:
    """:func:`open_results` for an output prefix given as a pyarrow filesystem and a path of it."""
    files = Ledger(filesystem, base).result_files()
    return pads.dataset(files, format="parquet", filesystem=filesystem, partitioning="hive", partition_base_dir=base)


def open_quality(output_uri: str, s3_endpoint_url: str | None = None) -> pads.Dataset:
    """The committed quality rows of the shadow dense sample under ``output_uri`` (:data:`QUALITY_SCHEMA`: the
    segment and task, the sparse and the dense answer, their agreement), as a pyarrow dataset; an empty one when
    no committed video was sampled. Arguments as for :func:`open_results`."""
    s3 = s3_filesystem(s3_endpoint_url, {}) if output_uri.startswith("s3://") else None
    return quality_dataset(*arrow_filesystem(output_uri, s3))


def quality_dataset(filesystem: pafs.FileSystem, base: str) -> pads.Dataset:
    """:func:`open_quality` for an output prefix given as a pyarrow filesystem and a path of it."""
    ledger = Ledger(filesystem, base)
    entries = ledger.entries(ledger.committed()).values()
    files = sorted(ledger.files.path(e.quality_file) for e in entries if e.quality_file)
    return pads.dataset(files, format="arrow", filesystem=filesystem, schema=QUALITY_SCHEMA)
