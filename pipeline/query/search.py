"""Full-text search over a results folder or bucket: read the answers, rank them with BM25. No Ray.

The results are read as the README's recipe reads them (pipeline/query/results.py): the part files the ledger names,
as a ``pyarrow.dataset`` with hive partitioning (the nightly job's ``dt=YYYY-MM-DD/`` folders), so no internal
file, no part file a killed writer left and no commit of a superseded lease epoch is ever read. Of those, only
rows with ``status == "ok"`` and an answer are searched: the captions (task ``caption``) and the answers to
questions (task ``qa``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.query.bm25 import BM25Index, tokenize
from pipeline.query.results import results_dataset
from pipeline.stages.storage import arrow_filesystem, s3_filesystem

logger = logging.getLogger(__name__)

__all__ = ["SEARCH_COLUMNS", "Hit", "SearchError", "read_answers", "search_answers"]

# The result columns a hit reports (pipeline/stages/schema.py); the rest of a row is not read.
SEARCH_COLUMNS = (
    "video_id",
    "source_uri",
    "segment_index",
    "segment_start_s",
    "segment_end_s",
    "task",
    "question",
    "answer",
    "model_id",
    "sparse_preset",
)


class SearchError(ValueError):
    """The output names no results to search (missing, empty, not a results folder) or the query is empty."""


@dataclass(frozen=True)
class Hit:
    """One ranked answer: where it is in which video, what was asked and answered, and its BM25 score."""

    score: float
    source_uri: str
    video_id: str
    segment_index: int | None
    segment_start_s: float | None
    segment_end_s: float | None
    task: str
    question: str | None
    answer: str
    model_id: str
    sparse_preset: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_answers(output_uri: str, s3_endpoint_url: str | None = None, video: str | None = None) -> pa.Table:
    """The searchable rows of a results folder or bucket: :data:`SEARCH_COLUMNS` of every ok row with an answer.

    Args:
        output_uri: a local folder or ``s3://bucket/prefix``, as given to the caption or nightly job.
        s3_endpoint_url: an S3-compatible endpoint for ``s3://`` outputs (None: AWS); credentials come from the
            standard AWS sources.
        video: keep only the rows whose ``source_uri`` is this (None: every video).

    Raises:
        SearchError: nothing is at ``output_uri``, or it holds no result files.
        OSError: the storage is unreachable or refused the request.
    """
    s3 = s3_filesystem(s3_endpoint_url, {}) if output_uri.startswith("s3://") else None
    filesystem, base = arrow_filesystem(output_uri, s3)
    info = filesystem.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        raise SearchError(f"no results folder at {output_uri}: give the --output of a caption or index_archive run")
    dataset = results_dataset(filesystem, base)
    if not dataset.files:
        raise SearchError(f"{output_uri} holds no result files (part-*.parquet): has a run committed any video?")
    missing = [c for c in (*SEARCH_COLUMNS, "status") if c not in dataset.schema.names]
    if missing:
        raise SearchError(f"{output_uri} holds Parquet files without the result columns {missing}: not results")
    wanted = (pc.field("status") == "ok") & pc.field("answer").is_valid()
    if video is not None:
        wanted &= pc.field("source_uri") == video
    table = dataset.to_table(columns=list(SEARCH_COLUMNS), filter=wanted)
    logger.info("read %d answers from %d result files under %s", table.num_rows, len(dataset.files), output_uri)
    return table


def search_answers(table: pa.Table, query: str, limit: int = 10) -> list[Hit]:
    """The ``limit`` answers of ``table`` (rows of :data:`SEARCH_COLUMNS`) that match ``query`` best.

    Answers are ranked by BM25 (:mod:`pipeline.query.bm25`); equal scores are ordered by video and segment, so the
    same output and query give the same hits.

    Raises:
        SearchError: the query has no word to search for.
    """
    if not tokenize(query):
        raise SearchError(f"the query {query!r} has no word to search for: give one or more words")
    # Sorting first makes the ranking's ties (kept in document order) follow video, segment and task.
    table = table.sort_by(
        [("source_uri", "ascending"), ("segment_index", "ascending"), ("task", "ascending"), ("question", "ascending")]
    )
    index = BM25Index.build(table.column("answer").to_pylist())
    found = index.top(query, limit)
    rows = table.take(pa.array([i for i, _ in found], pa.int64())).to_pylist()
    return [Hit(score, **{c: row[c] for c in SEARCH_COLUMNS}) for (_, score), row in zip(found, rows, strict=True)]
