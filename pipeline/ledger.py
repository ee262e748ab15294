"""The completion ledger: which (video, model, config, questions) are done, and the commit protocol. No Ray.

Layout under the output prefix (local folder or S3, through one pyarrow filesystem)::

    [<partition>/]part-<key>.parquet   all result rows of one video for one config key, sorted by segment
    _ledger/<key>.<status>.json   commit marker, written after the part file is durable; status ok|partial|error
    _staging/<key>/seg-<i>[-last].parquet   rows of single segments until the whole video is there

where ``<key> = <video_id>-<16 hex>`` (:func:`ledger_key`): the video version (its id hashes uri, size and
ETag/mtime) plus everything that changes its rows (model, SparseConfig, segmenting, prompts, schema).

Commit protocol. Segments of one video reach the writers in any order and in different write tasks. Each
task stages every segment it receives as one file named by its index (deterministic: a retried or rerun
segment overwrites itself); the decode stage flags the video's final segment (``-last``). After staging, the
task lists the video's staging folder; when segments ``0..last`` are all there it concatenates them into
``part-<key>.parquet`` (one atomic object PUT on S3; write-then-rename locally), then writes the marker,
then deletes the staging folder. Two tasks that both see the video complete write identical files.

What readers may rely on:

* ``pyarrow.dataset.dataset(output, format="parquet")`` (which skips names starting with ``_`` or ``.``)
  sees only whole videos: every (video version, config key, segment, task) exactly once, however often a
  run was interrupted or repeated. Rows of different config keys (another model or SparseConfig) are
  different rows; filter on ``model_id`` / ``sparse_config_json``. A changed video has a new ``video_id``
  and gets a new file next to the old one; filter on the newest ``created_at`` per ``source_uri``.
* A marker ``_ledger/<key>.*.json`` exists only after its part file is complete. Runs skip such videos
  before decoding (``error`` ones only with ``retry_errors``).
* Nothing under ``_staging/`` is a result. One writer per output prefix and config key at a time is assumed
  (concurrent runs stay correct but duplicate work).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.schema import COLUMNS, RESULT_SCHEMA

logger = logging.getLogger(__name__)

__all__ = [
    "INTERNAL_COLUMNS",
    "LAST_SEGMENT",
    "LEDGER_KEY",
    "SEGMENT_ROWS",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "ledger_key",
]

# Columns the model stage appends to result rows for the writer; they are never written to Parquet.
LEDGER_KEY = "ledger_key"  # str: ledger_key() of the row's video
LAST_SEGMENT = "last_segment"  # bool: no segment of this video follows this one
SEGMENT_ROWS = "segment_rows"  # int: rows the model stage produced for this segment (a completeness check)
INTERNAL_COLUMNS = (LEDGER_KEY, LAST_SEGMENT, SEGMENT_ROWS)
STATUSES = ("ok", "partial", "error")


class LedgerError(RuntimeError):
    """The rows handed to the ledger break the commit protocol (a bug upstream, not bad input)."""


def ledger_key(config_key: str, video_id: str, questions: Sequence[str]) -> str:
    """``<video_id>-<16 hex>``: one video version under one config with its own question list."""
    material = json.dumps([config_key, video_id, list(questions)])
    return f"{video_id}-{hashlib.sha1(material.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class LedgerEntry:
    """The content of one commit marker."""

    key: str
    video_id: str
    source_uri: str
    file: str  # the part file, relative to the output prefix
    rows: int
    segments: int
    status: str  # "ok" (no error rows), "error" (only error rows) or "partial"
    error_classes: list[str]
    run_id: str
    committed_at: str  # ISO 8601, UTC


class Ledger:
    """Commit markers and part files under one output prefix.

    Args:
        filesystem: a pyarrow filesystem (``LocalFileSystem``, or ``PyFileSystem(FSSpecHandler(s3fs))``).
        base: the output prefix as a path of that filesystem (``bucket/prefix`` on S3).
        partition: a hive partition folder (``dt=2026-11-22``) for the part files written now; the markers
            stay under ``<base>/_ledger`` so every partition shares one ledger (nightly increments).
    """

    def __init__(self, filesystem: pafs.FileSystem, base: str, partition: str | None = None) -> None:
        self.fs = filesystem
        self.base = base.rstrip("/")
        self.partition = partition
        self._local = isinstance(filesystem, pafs.LocalFileSystem)

    # -- reading ------------------------------------------------------------------------------------------

    def committed(self) -> dict[str, str]:
        """Committed keys and their status, from one listing of ``_ledger/``."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._path("_ledger"), allow_not_found=True))
        found: dict[str, str] = {}
        for info in infos:
            stem, _, status = info.base_name.removesuffix(".json").rpartition(".")
            if info.type == pafs.FileType.File and info.base_name.endswith(".json") and status in STATUSES:
                found[stem] = status
        return found

    def pending(self, keys: Iterable[str], retry_errors: bool = False) -> list[str]:
        """The keys a run must process: not committed, or committed with error rows when ``retry_errors``."""
        done = self.committed()
        return [k for k in keys if k not in done or (retry_errors and done[k] != "ok")]

    def entry(self, key: str) -> LedgerEntry | None:
        """The marker of ``key``, or None if it is not committed."""
        status = self.committed().get(key)
        if status is None:
            return None
        with self.fs.open_input_stream(self._marker(key, status)) as f:
            return LedgerEntry(**json.loads(f.read()))

    def part_files(self) -> list[str]:
        """Paths of all part files under the prefix (what a dataset reader of the prefix sees)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True, recursive=True))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.startswith("part-")
            and not any(part.startswith(("_", ".")) for part in posixpath.relpath(i.path, self.base).split("/"))
        )

    # -- writing ------------------------------------------------------------------------------------------

    def write_rows(self, table: pa.Table, run_id: str) -> list[LedgerEntry]:
        """Stage result rows (with the :data:`INTERNAL_COLUMNS`) and commit every video they complete.

        Args:
            table: rows of ``RESULT_SCHEMA`` plus the internal columns; all rows of a segment together.
            run_id: recorded in the markers written now.

        Returns:
            The entries committed by this call.
        """
        missing = [c for c in (*COLUMNS, *INTERNAL_COLUMNS) if c not in table.column_names]
        if missing:
            raise LedgerError(f"rows lack columns {missing}; the model stage must append {INTERNAL_COLUMNS}")
        committed = []
        for key in sorted(set(table.column(LEDGER_KEY).to_pylist())):
            rows = table.filter(pc.equal(table[LEDGER_KEY], key))
            nulls = rows.column("segment_index").null_count
            if 0 < nulls < rows.num_rows:
                raise LedgerError(f"{key}: rows about the whole video (no segment_index) mixed with segment rows")
            if nulls:  # the video failed as a whole
                self._delete_dir(self._staging(key))
                committed.append(self._commit(key, _results(rows), run_id))
                continue
            for index in sorted(set(rows.column("segment_index").to_pylist())):
                segment = rows.filter(pc.equal(rows["segment_index"], index))
                expected = set(segment.column(SEGMENT_ROWS).to_pylist())
                if expected != {segment.num_rows}:
                    raise LedgerError(
                        f"{key} segment {index}: got {segment.num_rows} rows, the model stage made {expected}; "
                        "a segment's rows must reach one write call together"
                    )
                last = bool(segment.column(LAST_SEGMENT)[0].as_py())
                name = f"seg-{index:06d}{'-last' if last else ''}.parquet"
                self._write_parquet(_results(segment), posixpath.join(self._staging(key), name))
            entry = self.commit_if_complete(key, run_id)
            if entry is not None:
                committed.append(entry)
        return committed

    def commit_if_complete(self, key: str, run_id: str) -> LedgerEntry | None:
        """Merge the staged segments of ``key`` into its part file and commit it, if all are staged."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._staging(key), allow_not_found=True))
        staged: dict[int, str] = {}
        last: int | None = None
        for info in infos:
            if info.type != pafs.FileType.File or not info.base_name.startswith("seg-"):
                continue
            stem = info.base_name.removesuffix(".parquet").removeprefix("seg-")
            index = int(stem.removesuffix("-last"))
            staged[index] = info.path
            if stem.endswith("-last"):
                last = index if last is None else min(last, index)
        if last is None or any(i not in staged for i in range(last + 1)):
            return None
        try:
            parts = [pq.read_table(staged[i], filesystem=self.fs, schema=RESULT_SCHEMA) for i in range(last + 1)]
        except (FileNotFoundError, OSError):
            entry = self.entry(key)  # another task committed it and removed the staging folder meanwhile
            if entry is not None:
                return None
            raise
        entry = self._commit(key, pa.concat_tables(parts), run_id)
        self._delete_dir(self._staging(key))
        return entry

    def _commit(self, key: str, rows: pa.Table, run_id: str) -> LedgerEntry:
        name = posixpath.join(self.partition or "", f"part-{key}.parquet")
        self._write_parquet(rows, self._path(name))  # data first ...
        statuses = rows.column("status").to_pylist()
        status = "ok" if "error" not in statuses else "error" if "ok" not in statuses else "partial"
        classes = sorted({c for c in rows.column("error_class").to_pylist() if c})
        segments = {i for i in rows.column("segment_index").to_pylist() if i is not None}
        entry = LedgerEntry(
            key=key,
            video_id=str(rows.column("video_id")[0].as_py()),
            source_uri=str(rows.column("source_uri")[0].as_py()),
            file=name,
            rows=rows.num_rows,
            segments=len(segments),
            status=status,
            error_classes=classes,
            run_id=run_id,
            committed_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        self._write_bytes(json.dumps(asdict(entry), indent=1).encode(), self._marker(key, status))  # marker last
        for other in STATUSES:  # a retried video may change status; one marker per key
            if other != status:
                self._delete_file(self._marker(key, other))
        logger.debug("committed %s: %d rows, status %s", key, entry.rows, status)
        return entry

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        """Write a small JSON document under the prefix atomically (e.g. ``_runs/<run_id>.json``)."""
        self._write_bytes(json.dumps(payload, indent=1).encode(), self._path(relative))

    # -- paths and atomic writes --------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def _marker(self, key: str, status: str) -> str:
        return self._path("_ledger", f"{key}.{status}.json")

    def _staging(self, key: str) -> str:
        return self._path("_staging", key)

    def _write_parquet(self, table: pa.Table, path: str) -> None:
        self._atomically(path, lambda target: pq.write_table(table, target, filesystem=self.fs, compression="zstd"))

    def _write_bytes(self, data: bytes, path: str) -> None:
        def write(target: str) -> None:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

        self._atomically(path, write)

    def _atomically(self, path: str, write: Callable[[str], None]) -> None:
        """Object stores publish an object only when its upload completes; a local file needs a rename."""
        if not self._local:
            write(path)
            return
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            write(tmp)
            self.fs.move(tmp, path)
        finally:
            self._delete_file(tmp)

    def _delete_file(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def _delete_dir(self, path: str) -> None:
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            with contextlib.suppress(FileNotFoundError):  # another task removed it first
                self.fs.delete_dir(path)


def _results(rows: pa.Table) -> pa.Table:
    """The Parquet content: exactly RESULT_SCHEMA (internal columns dropped, schema metadata kept)."""
    return rows.select(list(COLUMNS)).cast(RESULT_SCHEMA)
