"""The completion ledger: which (video, model, config, questions) are done, and the commit protocol. No Ray.

Layout under the output prefix (local folder or S3, through one pyarrow filesystem)::

    [<partition>/]part-<key>.parquet   all result rows of one video for one config key, sorted by segment
    _ledger/<key>.<status>.json   commit marker, written after the part file is durable; status ok|partial|error
    _ledger/_index/<seq>-<8 hex>.parquet   compacted markers: one row per key with the marker's fields
    _staging/<key>/seg-<i>[-last].parquet   rows of single segments until the whole video is there

where ``<key> = <video_id>-<16 hex>`` (:func:`ledger_key`): the video version (its id hashes uri, size and
ETag/mtime) plus everything that changes its rows (model, SparseConfig, segmenting, prompts, schema). A key is
one path component of letters, digits, ``-`` and ``_`` (checked on every write), so no row can name a file
outside the prefix.

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
* A marker ``_ledger/<key>.*.json`` (or, once compacted, an index row) exists only after its part file is
  complete. Runs skip such videos before decoding (``error`` ones only with ``retry_errors``).
* A video retried into another partition (``retry_errors`` with nightly partitions) has its old part file
  deleted by the write that commits the new one, right after the new marker (``replaces`` of
  :meth:`Ledger.write_rows`); the driver deletes what is left after the run (:meth:`Ledger.remove_replaced`).
  Only a writer killed between its marker and that delete, with its driver killed too, leaves the old error
  rows beside the new ones.
* Nothing under ``_staging/`` is a result. One writer per output prefix and config key at a time is assumed
  (concurrent runs stay correct but duplicate work).

Compaction. A LIST request returns at most 1,000 names, so reading 100,000 markers takes 100 sequential
requests (seconds on S3). After a run's writes have finished, its driver calls :meth:`Ledger.compact` with
the entries the run committed, which

1. writes those of them whose marker it listed to a new index file (one atomic write; ``<seq>`` is one more
   than the largest existing, so a later file is a newer one), and only then
2. deletes their markers (every status of those keys: the run's commit is the newest);
3. when there are more than :data:`MAX_INDEX_FILES` index files or :data:`MAX_LOOSE_MARKERS` markers (left by
   runs that stopped before compacting), reads them all into one new index file, and only then deletes the
   files and markers it read.

Readers list the markers first and the index files second, and take a key's status from its marker if it has
one (of two markers of one key, a commit interrupted between writing one and deleting the other, the last
listed), else from the newest index file holding it. As every step deletes only what an earlier, durable write
already holds, a crash at any point, or a reader running alongside, sees every committed key with its newest
status (at worst from two places that agree); an index file that a merge deletes between a reader's listing
and its read makes the reader list again. Compaction needs no writer of the prefix running at the same time
(the driver calls it after the write stage); a run that never compacts only leaves readers slower.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import posixpath
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "MAX_INDEX_FILES",
    "MAX_LOOSE_MARKERS",
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
INDEX_DIR = "_ledger/_index"
MAX_INDEX_FILES = 4  # a reader reads every index file (a few requests each); a merge makes them one
MAX_LOOSE_MARKERS = 1000  # one LIST page; past it a compaction folds markers of runs that never compacted
# One path component that readers do not skip (no "/", "..", NUL or leading "_"/"."), short enough for any
# filesystem with "part-" and ".parquet" around it. ledger_key() of a hex video id always matches.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")
_INDEX_NAME = re.compile(r"\d{8}-[0-9a-f]{8}\.parquet")  # <seq>-<8 hex>.parquet
_INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("file", pa.string()),
        ("rows", pa.int64()),
        ("segments", pa.int64()),
        ("status", pa.string()),
        ("error_classes", pa.list_(pa.string())),
        ("run_id", pa.string()),
        ("committed_at", pa.string()),
    ]
)


class LedgerError(RuntimeError):
    """The rows handed to the ledger break the commit protocol (a bug upstream, not bad input)."""


def ledger_key(config_key: str, video_id: str, questions: Sequence[str]) -> str:
    """``<video_id>-<16 hex>``: one video version under one config with its own question list.

    Raises:
        LedgerError: ``video_id`` could not name a file (sources make it 40 hex digits).
    """
    material = json.dumps([config_key, video_id, list(questions)])
    return _checked_key(f"{video_id}-{hashlib.sha1(material.encode()).hexdigest()[:16]}")


def _checked_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise LedgerError(
            f"ledger key {key!r} cannot name a file under the output prefix; expected letters, digits, '-' and '_' "
            "(at most 200, not starting with '_'), as ledger_key() makes from a hex video_id"
        )
    return key


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
        """Committed keys and their status: one listing of ``_ledger/``, then the index (see "Compaction")."""
        markers = self._markers()  # before the index: compaction deletes a marker only once the index holds it
        index = self._index(["key", "status"])
        found = dict(zip(index.column("key").to_pylist(), index.column("status").to_pylist(), strict=True))
        found.update(markers)
        return found

    def pending(self, keys: Iterable[str], retry_errors: bool = False, done: dict[str, str] | None = None) -> list[str]:
        """The keys a run must process: not committed, or committed with error rows when ``retry_errors``.

        ``done`` is a :meth:`committed` result the caller already has (saves a listing)."""
        done = self.committed() if done is None else done
        return [k for k in keys if k not in done or (retry_errors and done[k] != "ok")]

    def entry(self, key: str) -> LedgerEntry | None:
        """The commit record of ``key`` (its marker, else its newest index row), or None if it is not committed."""
        status = dict(self._markers()).get(key)
        if status is not None:
            with contextlib.suppress(FileNotFoundError), self.fs.open_input_stream(self._marker(key, status)) as f:
                return LedgerEntry(**json.loads(f.read()))
            # the marker was folded into the index after the listing
        index = self._index()
        rows = index.filter(pc.equal(index["key"], key))
        return LedgerEntry(**rows.to_pylist()[-1]) if rows.num_rows else None

    def entries(self, keys: Iterable[str]) -> dict[str, LedgerEntry]:
        """The commit records of those of ``keys`` that are committed: one listing and one index read."""
        wanted = set(keys)
        if not wanted:
            return {}
        markers = {k: status for k, status in self._markers() if k in wanted}
        index = self._index()
        found = {
            row["key"]: LedgerEntry(**row)  # a later index row of a key wins
            for row in index.filter(pc.is_in(index["key"], pa.array(sorted(wanted), pa.string()))).to_pylist()
        }
        for key, status in markers.items():  # a marker is newer than the index
            with contextlib.suppress(FileNotFoundError), self.fs.open_input_stream(self._marker(key, status)) as f:
                found[key] = LedgerEntry(**json.loads(f.read()))
        return found

    def remove_replaced(self, previous: dict[str, LedgerEntry], committed: Iterable[LedgerEntry]) -> list[str]:
        """Delete the part files that new commits replaced with a file elsewhere, and return their paths.

        A video retried (``retry_errors``) into another partition gets its new part file there; its old one,
        under the partition of the run that first failed it, would otherwise stay visible beside the new rows.
        In the same partition the new file overwrites the old one and nothing is deleted.

        Args:
            previous: the entries of the retried keys as they were before the run (:meth:`entries`).
            committed: what the run committed.
        """
        removed = []
        for entry in committed:
            old = previous.get(entry.key)
            if old is not None and old.file != entry.file:
                self._delete_file(self._path(old.file))
                removed.append(old.file)
        return removed

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

    def write_rows(self, table: pa.Table, run_id: str, replaces: Mapping[str, str] | None = None) -> list[LedgerEntry]:
        """Stage result rows (with the :data:`INTERNAL_COLUMNS`) and commit every video they complete.

        Args:
            table: rows of ``RESULT_SCHEMA`` plus the internal columns; all rows of a segment together.
            run_id: recorded in the markers written now.
            replaces: old part file per key (retried videos, :meth:`entries`); a file in another partition is
                deleted right after the key's new marker, so the old rows never stay beside the new ones.

        Returns:
            The entries committed by this call.
        """
        replaces = replaces or {}
        missing = [c for c in (*COLUMNS, *INTERNAL_COLUMNS) if c not in table.column_names]
        if missing:
            raise LedgerError(f"rows lack columns {missing}; the model stage must append {INTERNAL_COLUMNS}")
        committed = []
        for key in sorted(set(table.column(LEDGER_KEY).to_pylist())):
            _checked_key(key)
            rows = table.filter(pc.equal(table[LEDGER_KEY], key))
            nulls = rows.column("segment_index").null_count
            if 0 < nulls < rows.num_rows:
                raise LedgerError(f"{key}: rows about the whole video (no segment_index) mixed with segment rows")
            if nulls:  # the video failed as a whole
                self._delete_dir(self._staging(key))
                committed.append(self._commit(key, _results(rows), run_id, replaces.get(key)))
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
            entry = self.commit_if_complete(key, run_id, replaces.get(key))
            if entry is not None:
                committed.append(entry)
        return committed

    def commit_if_complete(self, key: str, run_id: str, replaces: str | None = None) -> LedgerEntry | None:
        """Merge the staged segments of ``key`` into its part file and commit it, if all are staged.

        ``replaces`` is the key's old part file (another partition's), deleted once the new one is committed.
        """
        _checked_key(key)
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
        entry = self._commit(key, pa.concat_tables(parts), run_id, replaces)
        self._delete_dir(self._staging(key))
        return entry

    def _commit(self, key: str, rows: pa.Table, run_id: str, replaces: str | None = None) -> LedgerEntry:
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
        if replaces is not None and replaces != name:  # the retried video's old rows, now superseded
            self._delete_file(self._path(replaces))
        logger.debug("committed %s: %d rows, status %s", key, entry.rows, status)
        return entry

    def compact(self, entries: Iterable[LedgerEntry] = ()) -> None:
        """Fold commit markers into the index, so that readers list fewer names (see "Compaction").

        Call it when no run writes to this prefix, e.g. from the driver after the write stage.

        Args:
            entries: what the run committed (the entries :meth:`write_rows` returned); the markers of those keys
                are replaced by one index file. Markers of other runs are read and folded in once there are more
                than :data:`MAX_LOOSE_MARKERS`, and the index files merged once more than :data:`MAX_INDEX_FILES`.
        """
        markers = self._markers()  # listed before the index files, as readers do
        newest: dict[str, LedgerEntry] = {}
        for entry in sorted(entries, key=lambda e: e.committed_at):  # two tasks may commit the same video
            newest[entry.key] = entry
        listed = set(markers)
        fold = [e for e in newest.values() if (e.key, e.status) in listed]  # only what a marker still stands for
        folded = {e.key for e in fold}
        files = self._index_files()
        if fold:
            self._write_index([_row(e) for e in fold], files)  # durable first ...
            self._delete_files([self._marker(k, s) for k, s in markers if k in folded])  # ... markers after
            markers = [(k, s) for k, s in markers if k not in folded]
            files = self._index_files()
        if len(files) > MAX_INDEX_FILES or len(markers) > MAX_LOOSE_MARKERS:
            self._merge(files, markers)
        logger.debug("compacted %d markers into %s", len(fold), self._path(INDEX_DIR))

    def _merge(self, files: list[str], markers: list[tuple[str, str]]) -> None:
        """Write every index row and loose marker into one new index file, then delete what it now holds."""
        paths = [self._marker(key, status) for key, status in markers]
        loose = [LedgerEntry(**json.loads(data)) for data in self._read_files(paths)]
        rows = {row["key"]: row for row in self._read_index(files).to_pylist()}  # later files win
        for entry in sorted(loose, key=lambda e: e.committed_at):  # markers win; of two for one key, the newer
            rows[entry.key] = _row(entry)
        self._write_index(list(rows.values()), files)
        self._delete_files(files)
        self._delete_files(paths)
        logger.info("merged %d index files and %d markers into one index of %d keys", len(files), len(paths), len(rows))

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        """Write a small JSON document under the prefix atomically (e.g. ``_runs/<run_id>.json``)."""
        self._write_bytes(json.dumps(payload, indent=1).encode(), self._path(relative))

    # -- markers and index files --------------------------------------------------------------------------

    def _markers(self) -> list[tuple[str, str]]:
        """(key, status) of every commit marker, in listing order, from one listing of ``_ledger/``."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._path("_ledger"), allow_not_found=True))
        found = []
        for info in infos:
            stem, _, status = info.base_name.removesuffix(".json").rpartition(".")
            if (
                info.type == pafs.FileType.File
                and info.base_name.endswith(".json")
                and status in STATUSES
                and not stem.startswith(".")  # a local write-then-rename in progress
            ):
                found.append((stem, status))
        return found

    def _index_files(self) -> list[str]:
        """The index files, oldest first."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(INDEX_DIR), allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and _INDEX_NAME.fullmatch(i.base_name))

    def _index(self, columns: list[str] | None = None) -> pa.Table:
        """The rows of every index file, oldest file first (a later row of a key wins)."""
        for _ in range(3):
            try:
                return self._read_index(self._index_files(), columns)
            except FileNotFoundError:  # a merge deleted a listed file; the merged file is in the next listing
                continue
        raise LedgerError(f"the index under {self._path(INDEX_DIR)} changed during three reads in a row")

    def _read_index(self, files: list[str], columns: list[str] | None = None) -> pa.Table:
        schema = _INDEX_SCHEMA if columns is None else pa.schema([_INDEX_SCHEMA.field(c) for c in columns])
        tables = [pq.read_table(f, filesystem=self.fs, columns=columns, schema=_INDEX_SCHEMA) for f in files]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def _write_index(self, rows: list[dict[str, Any]], existing: list[str]) -> None:
        seq = 1 + max((int(posixpath.basename(f)[:8]) for f in existing), default=0)  # names match _INDEX_NAME
        table = pa.Table.from_pylist(rows, schema=_INDEX_SCHEMA).sort_by("key")
        self._write_parquet(table, self._path(INDEX_DIR, f"{seq:08d}-{uuid.uuid4().hex[:8]}.parquet"))

    def _read_files(self, paths: list[str]) -> list[bytes]:
        """The contents of those of ``paths`` that exist (on s3fs, many requests at once)."""
        fsspec_fs = _fsspec(self.fs)
        if fsspec_fs is not None and paths:
            return list(fsspec_fs.cat(paths, on_error="omit").values())
        found = []
        for path in paths:
            with contextlib.suppress(FileNotFoundError), self.fs.open_input_stream(path) as f:
                found.append(f.read())
        return found

    def _delete_files(self, paths: list[str]) -> None:
        """Delete files, ignoring missing ones (on s3fs, one DeleteObjects request per 1,000 keys)."""
        fsspec_fs = _fsspec(self.fs)
        if fsspec_fs is not None and paths:
            with contextlib.suppress(FileNotFoundError):  # some were gone: delete the rest one by one below
                fsspec_fs.rm(paths)
                return
        for path in paths:
            self._delete_file(path)

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


def _fsspec(filesystem: pafs.FileSystem) -> Any:
    """The fsspec filesystem (s3fs) behind a ``PyFileSystem(FSSpecHandler(...))``, else None."""
    handler = getattr(filesystem, "handler", None)
    return handler.fs if isinstance(handler, pafs.FSSpecHandler) else None


def _row(entry: LedgerEntry) -> dict[str, Any]:
    """An index row (``dataclasses.asdict`` deep-copies, 100 times slower at 100,000 entries)."""
    return {name: getattr(entry, name) for name in _INDEX_SCHEMA.names}


def _results(rows: pa.Table) -> pa.Table:
    """The Parquet content: exactly RESULT_SCHEMA (internal columns dropped, schema metadata kept)."""
    return rows.select(list(COLUMNS)).cast(RESULT_SCHEMA)
