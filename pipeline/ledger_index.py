"""The ledger's record of commits: markers, index files, which of them is newest, and their compaction.

Layout under the output prefix::

    _ledger/<key>.<status>.json          commit marker (status ok|partial|error): a LedgerEntry as JSON
    _ledger/_index/<seq>-<8 hex>.arrow   compacted markers: an Arrow IPC file, one row per key

A key's record is its newest marker or index row by ``committed_at`` (ISO 8601 UTC with microseconds, so the
strings sort in time order), never the order of a listing or of the index files. Most keys have exactly one
(one marker, or one index row), which a listing answers alone; only a key with several (a commit interrupted
between writing its new marker and deleting the old one, a retried key whose error is in the index, a
compaction interrupted after its index write) has its markers read to compare their ``committed_at``.

Compaction. A LIST request returns at most 1,000 names, so reading 100,000 markers takes 100 sequential
requests (seconds on S3). After a run's writes, its driver, holding the output's lease (pipeline/lease.py),
calls :meth:`CommitRecord.compact` with the entries the run committed, which

1. writes the newest record of each of those keys whose marker it listed to a new index file (one atomic
   write; ``<seq>`` is one more than the largest existing), and only then
2. deletes every marker of those keys;
3. when there are more than :data:`MAX_INDEX_FILES` index files, a legacy ``.parquet`` index file, or more
   than :data:`MAX_LOOSE_MARKERS` markers (runs that stopped before compacting), reads them all into one new
   index file (newest record per key) and only then deletes the files and markers it read.

Every step deletes only what an earlier durable write already holds, so a crash at any point leaves every key
with its newest record (at worst in two places with the same ``committed_at``). A reader whose listed index
file or marker is deleted by a compaction meanwhile lists again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.crash import crash_point
from pipeline.ledger_files import PrefixFiles

logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_DIR",
    "MAX_INDEX_FILES",
    "MAX_LOOSE_MARKERS",
    "STATUSES",
    "CommitRecord",
    "LedgerEntry",
    "LedgerError",
    "now_iso",
]

STATUSES = ("ok", "partial", "error")
MARKER_DIR = "_ledger"
INDEX_DIR = "_ledger/_index"
MAX_INDEX_FILES = 4  # a reader reads every index file (a few requests each); a merge makes them one
MAX_LOOSE_MARKERS = 1000  # one LIST page; past it a compaction folds markers of runs that never compacted
_INDEX_NAME = re.compile(r"\d{8}-[0-9a-f]{8}\.arrow")  # <seq>-<8 hex>.arrow
_LEGACY_INDEX_NAME = re.compile(r"\d{8}-[0-9a-f]{8}\.parquet")  # before index files became Arrow IPC
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


@dataclass(frozen=True)
class LedgerEntry:
    """The content of one commit marker (and of one index row)."""

    key: str
    video_id: str
    source_uri: str
    file: str  # the part file, relative to the output prefix
    rows: int
    segments: int
    status: str  # "ok" (no error rows), "error" (only error rows) or "partial"
    error_classes: list[str]
    run_id: str
    committed_at: str  # ISO 8601, UTC, with microseconds (now_iso)


def now_iso() -> str:
    """The current time as ``committed_at``: fixed width, so later times sort later as strings."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class _Moved(Exception):
    """A listed marker or index file was deleted (compacted) before it was read: list again."""


class CommitRecord:
    """Markers and index files under one output prefix (see the module docstring)."""

    def __init__(self, files: PrefixFiles) -> None:
        self.files = files

    # -- reading ------------------------------------------------------------------------------------------

    def committed(self) -> dict[str, str]:
        """Every committed key and the status of its newest record."""

        def attempt() -> dict[str, str]:
            markers = self.markers()  # before the index: compaction deletes a marker only once the index holds it
            table = self._index(["key", "status", "committed_at"])
            keys = table.column("key").to_pylist()
            if len(set(keys)) < len(keys):  # a key in several index files: sorted, the newest row comes last
                table = table.sort_by("committed_at")
                keys = table.column("key").to_pylist()
            found = dict(zip(keys, table.column("status").to_pylist(), strict=True))
            listed: dict[str, str] = {}
            unclear: set[str] = set()  # keys with several records: compare their committed_at
            for key, status in markers:
                if key in listed or key in found:
                    unclear.add(key)
                listed[key] = status
            found.update((k, s) for k, s in listed.items() if k not in unclear)
            if unclear:
                rows = table.filter(pc.is_in(table["key"], pa.array(sorted(unclear), pa.string())))
                columns = (rows.column(c).to_pylist() for c in ("key", "committed_at", "status"))
                newest = {k: (at, status) for k, at, status in zip(*columns, strict=True)}  # the newest row last
                for entry in self._read_markers([(k, s) for k, s in markers if k in unclear]):
                    if entry.committed_at >= newest.get(entry.key, ("",))[0]:
                        newest[entry.key] = (entry.committed_at, entry.status)
                found.update((k, status) for k, (_, status) in newest.items())
            return found

        return self._listing_again(attempt)

    def entries(self, keys: Iterable[str]) -> dict[str, LedgerEntry]:
        """The newest record of each of ``keys`` that is committed: one listing, one index read."""
        wanted = set(keys)
        if not wanted:
            return {}

        def attempt() -> dict[str, LedgerEntry]:
            markers = [(k, s) for k, s in self.markers() if k in wanted]
            rows = [LedgerEntry(**r) for r in self._index(keys=sorted(wanted)).to_pylist()]
            return newest_entries([*rows, *self._read_markers(markers)])

        return self._listing_again(attempt)

    def markers(self) -> list[tuple[str, str]]:
        """(key, status) of every commit marker, from one listing of ``_ledger/``."""
        found = []
        for info in self.files.list_files(self.files.path(MARKER_DIR)):
            stem, _, status = info.base_name.removesuffix(".json").rpartition(".")
            if info.base_name.endswith(".json") and status in STATUSES and not stem.startswith("."):
                found.append((stem, status))
        return found

    def marker(self, key: str, status: str) -> str:
        return self.files.path(MARKER_DIR, f"{key}.{status}.json")

    def index_files(self) -> list[str]:
        """The index files (and legacy Parquet ones), by sequence number."""
        infos = self.files.list_files(self.files.path(INDEX_DIR))
        names = [i for i in infos if _INDEX_NAME.fullmatch(i.base_name) or _LEGACY_INDEX_NAME.fullmatch(i.base_name)]
        return [i.path for i in sorted(names, key=lambda i: i.base_name)]

    # -- writing ------------------------------------------------------------------------------------------

    def write_marker(self, entry: LedgerEntry) -> None:
        """Write ``entry``'s marker, then delete the key's markers of other statuses (one marker per key)."""
        data = json.dumps({name: getattr(entry, name) for name in _INDEX_SCHEMA.names}, indent=1).encode()
        self.files.write_bytes(data, self.marker(entry.key, entry.status))
        self.files.delete_files([self.marker(entry.key, s) for s in STATUSES if s != entry.status])

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        self.files.write_bytes(json.dumps(payload, indent=1).encode(), self.files.path(relative))

    def compact(self, entries: Iterable[LedgerEntry] = ()) -> None:
        """Fold the markers of ``entries``' keys into one new index file (see "Compaction"); merge when due.

        Call it only while holding the output's lease, after the run's writes (no writer runs alongside).
        """
        markers = self.markers()  # listed before the index files, as readers do
        listed = set(markers)
        statuses: dict[str, int] = {}
        for key, _ in markers:
            statuses[key] = statuses.get(key, 0) + 1
        fold = {e.key: e for e in newest_entries(entries).values() if (e.key, e.status) in listed}
        several = [(k, s) for k, s in markers if k in fold and statuses[k] > 1]
        fold.update(newest_entries([*fold.values(), *self._read_markers(several, missing_ok=True)]))
        files = self.index_files()
        if fold:
            self._write_index(list(fold.values()), files)  # durable first ...
            crash_point("indexed")
            self.files.delete_files([self.marker(k, s) for k, s in markers if k in fold])  # ... markers after
            crash_point("compacted")
            markers = [(k, s) for k, s in markers if k not in fold]
            files = self.index_files()
        legacy = any(f.endswith(".parquet") for f in files)
        if len(files) > MAX_INDEX_FILES or legacy or len(markers) > MAX_LOOSE_MARKERS:
            self.merge(files, markers)
        logger.debug("compacted %d markers into %s", len(fold), self.files.path(INDEX_DIR))

    def merge(self, files: list[str], markers: list[tuple[str, str]]) -> None:
        """Write the newest record of every key in ``files`` and ``markers`` into one new index file, then
        delete what it now holds."""
        rows = [LedgerEntry(**r) for r in self._read_index(files).to_pylist()]
        merged = newest_entries([*rows, *self._read_markers(markers, missing_ok=True)])
        self._write_index(list(merged.values()), files)
        self.files.delete_files(files)
        self.files.delete_files([self.marker(k, s) for k, s in markers])
        logger.info(
            "merged %d index files and %d markers into one index of %d keys", len(files), len(markers), len(merged)
        )

    # -- helpers ------------------------------------------------------------------------------------------

    def _listing_again(self, attempt: Any) -> Any:
        for _ in range(3):
            try:
                return attempt()
            except _Moved:  # a compaction moved what was listed; the next listing has it in its new place
                continue
        raise LedgerError(f"the ledger under {self.files.path(MARKER_DIR)} changed during three reads in a row")

    def _read_markers(self, markers: list[tuple[str, str]], missing_ok: bool = False) -> list[LedgerEntry]:
        paths = [self.marker(k, s) for k, s in markers]
        contents = self.files.read_files(paths)
        if len(contents) < len(paths) and not missing_ok:
            raise _Moved
        return [LedgerEntry(**json.loads(data)) for data in contents.values()]

    def _index(self, columns: list[str] | None = None, keys: list[str] | None = None) -> pa.Table:
        """The rows of every index file (of ``keys`` only, if given)."""
        files = self.index_files()
        try:
            table = self._read_index(files, columns)
        except FileNotFoundError:
            raise _Moved from None
        if keys is not None:
            table = table.filter(pc.is_in(table["key"], pa.array(keys, pa.string())))
        return table

    def _read_index(self, files: list[str], columns: list[str] | None = None) -> pa.Table:
        tables = []
        for path in files:
            if path.endswith(".parquet"):
                table = pq.read_table(path, filesystem=self.files.fs, schema=_INDEX_SCHEMA)
            else:
                table = self.files.read_arrow(path).cast(_INDEX_SCHEMA)
            tables.append(table if columns is None else table.select(columns))
        if tables:
            return pa.concat_tables(tables)
        schema = _INDEX_SCHEMA if columns is None else pa.schema([_INDEX_SCHEMA.field(c) for c in columns])
        return schema.empty_table()

    def _write_index(self, entries: list[LedgerEntry], existing: list[str]) -> None:
        seq = 1 + max((int(posixpath.basename(f)[:8]) for f in existing), default=0)  # names match _INDEX_NAME
        rows = [{name: getattr(e, name) for name in _INDEX_SCHEMA.names} for e in entries]  # asdict is 100x slower
        table = pa.Table.from_pylist(rows, schema=_INDEX_SCHEMA).sort_by("key")
        self.files.write_arrow(table, self.files.path(INDEX_DIR, f"{seq:08d}-{uuid.uuid4().hex[:8]}.arrow"))


def newest_entries(entries: Iterable[LedgerEntry]) -> dict[str, LedgerEntry]:
    """The entry with the latest ``committed_at`` per key."""
    newest: dict[str, LedgerEntry] = {}
    for entry in entries:
        old = newest.get(entry.key)
        if old is None or entry.committed_at >= old.committed_at:
            newest[entry.key] = entry
    return newest
