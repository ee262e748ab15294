"""The ledger's record of commits: markers, index files, which of them is newest, and their compaction.

Layout under the output prefix::

    _ledger/<key>.<status>.<epoch>.json  commit marker (status ok|partial|error): a LedgerEntry as JSON
    _ledger/_index/<seq>-<8 hex>.arrow   compacted markers: an Arrow IPC file, one row per key
    _ledger/_epoch                       the lease epoch whose markers count (JSON: epoch, opened_at)

A key's record is its newest marker or index row by ``committed_at`` (ISO 8601 UTC with microseconds, so the
strings sort in time order), never the order of a listing or of the index files. Most keys have exactly one
(one marker, or one index row), which a listing answers alone; only a key with several (a commit interrupted
between writing its new marker and deleting the old one, a retried key whose error is in the index, a
compaction interrupted after its index write) has its markers read to compare their ``committed_at``.

Compaction. A LIST request returns at most 1,000 names, so reading 100,000 markers takes 100 sequential
requests (seconds on S3). After a run's writes, its driver, holding the output's lease (pipeline/commit/lease.py),
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

Epochs (the fence of a commit). A marker's name carries the epoch of the lease under which it was written
(:func:`epoch_of`: 16 hex digits of the lease's token; a marker written without a lease, or before epochs, has
none and always counts). ``_ledger/_epoch`` names the one epoch whose markers count; a marker of any other epoch
is *superseded*: no reading here sees it (:meth:`CommitRecord.markers`), and the next reconcile deletes it and
its part file. Each run that holds the lease opens its epoch before it writes (:meth:`CommitRecord.open_epoch`):
it lists the markers that count and folds them into a new index file, then switches ``_ledger/_epoch`` to its
own epoch (a conditional write), and only then computes what to reconcile and writes. So a write task that
passed its lease check, stalled, and wrote its marker after another run had taken the lease over and listed the
markers to fold commits nothing that counts once the epoch is switched, whatever the writer's clock says (a
marker that lands between that listing and the switch is seen by readers until the switch, once: the new run
writes nothing before it). Readers read ``_ledger/_epoch`` before they list the markers, so a reader racing
the switch finds the folded markers in the index or as markers of the epoch it read. Until any run opens an
epoch (no ``_ledger/_epoch``), every marker counts. Index rows have no epoch: only a lease holder writes them,
from markers that counted.
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
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.commit.lease import LeaseLost
from pipeline.commit.lease_store import lease_store
from pipeline.commit.ledger_files import PrefixFiles
from pipeline.harness.crash import crash_point
from pipeline.observability.quality import TALLY_TYPE

logger = logging.getLogger(__name__)

__all__ = [
    "EPOCH_FILE",
    "INDEX_DIR",
    "MAX_INDEX_FILES",
    "MAX_LOOSE_MARKERS",
    "STATUSES",
    "CommitRecord",
    "LedgerEntry",
    "LedgerError",
    "Marker",
    "epoch_of",
    "now_iso",
]

STATUSES = ("ok", "partial", "error")
MARKER_DIR = "_ledger"
INDEX_DIR = "_ledger/_index"
EPOCH_FILE = "_ledger/_epoch"
_EPOCH = re.compile(r"[0-9a-f]{16}")  # epoch_of() a lease token
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
        # a video's figures, so that a run's totals come from its records (no scan of the part files)
        ("duration_s", pa.float64()),
        ("ok_rows", pa.int64()),
        ("equivalent_tokens", pa.float64()),
        ("visual_tokens_in", pa.int64()),
        # the video's shadow dense sample (pipeline/observability/quality.py): its quality file and the tally of
        # its rows
        ("quality_file", pa.string()),
        ("quality", TALLY_TYPE),
        # "summary": the record of a video's summary row (pipeline/stages/summary.py); null: a video's own rows
        ("kind", pa.string()),
    ]
)
# null in older records
_FIGURES = ("duration_s", "ok_rows", "equivalent_tokens", "visual_tokens_in", "quality_file", "quality", "kind")


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
    # The video's figures; None in records written before they were recorded.
    duration_s: float | None = None  # the video's duration (None: it did not open)
    ok_rows: int | None = None  # rows with status "ok"
    equivalent_tokens: float | None = None  # summed over the ok rows
    visual_tokens_in: int | None = None  # summed over the ok rows
    # The shadow dense sample (pipeline/observability/quality.py); None in records written before it existed.
    quality_file: str | None = None  # the video's quality rows, relative to the output prefix (None: no rows)
    quality: dict[str, Any] | None = None  # QualityTally.to_dict() of the video's rows
    # "summary": the key commits a video's summary row (its own key, pipeline/stages/summary.py), not the video's
    # segments; None: the video's own rows (and every record written before summaries existed).
    kind: str | None = None


class Marker(NamedTuple):
    """One listed commit marker: whose key, which status, written under which lease epoch (None: no lease)."""

    key: str
    status: str
    epoch: str | None
    path: str


def epoch_of(lease_token: str) -> str:
    """The epoch a lease token commits under: its first 16 hex digits (a uuid4's; a marker name stays short)."""
    epoch = lease_token[:16]
    if not _EPOCH.fullmatch(epoch):
        raise LedgerError(f"lease token {lease_token!r} cannot name an epoch; expected 32 hex digits (uuid4().hex)")
    return epoch


def now_iso() -> str:
    """The current time as ``committed_at``: fixed width, so later times sort later as strings."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class _Moved(Exception):
    """A listed marker or index file was deleted (compacted) before it was read: list again."""


class CommitRecord:
    """Markers and index files under one output prefix (see the module docstring).

    Args:
        files: the output prefix.
        epoch: the lease epoch this writer's markers carry (:func:`epoch_of`); None writes markers without one.
    """

    def __init__(self, files: PrefixFiles, epoch: str | None = None) -> None:
        self.files = files
        self.epoch = epoch

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
            for key, status, _, _ in markers:
                if key in listed or key in found:
                    unclear.add(key)
                listed[key] = status
            found.update((k, s) for k, s in listed.items() if k not in unclear)
            if unclear:
                rows = table.filter(pc.is_in(table["key"], pa.array(sorted(unclear), pa.string())))
                columns = (rows.column(c).to_pylist() for c in ("key", "committed_at", "status"))
                newest = {k: (at, status) for k, at, status in zip(*columns, strict=True)}  # the newest row last
                for entry in self._read_markers([m for m in markers if m.key in unclear]):
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
            markers = [m for m in self.markers() if m.key in wanted]
            rows = [LedgerEntry(**r) for r in self._index(keys=sorted(wanted)).to_pylist()]
            return newest_entries([*rows, *self._read_markers(markers)])

        return self._listing_again(attempt)

    def run_entries(self, run_id: str) -> list[LedgerEntry]:
        """The records ``run_id`` wrote: index rows and loose markers (one listing, the index files, and a read
        of each loose marker, which compaction keeps to a few)."""

        def attempt() -> list[LedgerEntry]:
            markers = self.markers()
            table = self._index()
            rows = [LedgerEntry(**r) for r in table.filter(pc.equal(table["run_id"], run_id)).to_pylist()]
            newest = newest_entries([*rows, *self._read_markers(markers)])
            return [e for e in newest.values() if e.run_id == run_id]

        return self._listing_again(attempt)

    def markers(self) -> list[Marker]:
        """The commit markers that count: those of the current epoch and those without one (one read of
        ``_ledger/_epoch``, then one listing of ``_ledger/``; in this order, as :meth:`open_epoch` folds them
        before it switches the epoch)."""
        current = self.current_epoch()
        return [m for m in self.all_markers() if current is None or m.epoch in (None, current)]

    def all_markers(self) -> list[Marker]:
        """Every commit marker, superseded ones included, from one listing of ``_ledger/``."""
        found = []
        for info in self.files.list_files(self.files.path(MARKER_DIR)):
            if not info.base_name.endswith(".json") or info.base_name.startswith("."):
                continue
            key, status, *epoch = info.base_name.removesuffix(".json").split(".")
            if status in STATUSES and (not epoch or (len(epoch) == 1 and _EPOCH.fullmatch(epoch[0]))):
                found.append(Marker(key, status, epoch[0] if epoch else None, info.path))
        return found

    def marker(self, key: str, status: str, epoch: str | None = None) -> str:
        name = f"{key}.{status}.json" if epoch is None else f"{key}.{status}.{epoch}.json"
        return self.files.path(MARKER_DIR, name)

    def current_epoch(self) -> str | None:
        """The epoch whose markers count, or None if no run has opened one (then every marker counts)."""
        found = lease_store(self.files.fs, self.files.path(EPOCH_FILE)).read()  # uncached: switched by others
        return None if found is None else _epoch_named(found[0])

    def index_files(self) -> list[str]:
        """The index files (and legacy Parquet ones), by sequence number."""
        infos = self.files.list_files(self.files.path(INDEX_DIR))
        names = [i for i in infos if _INDEX_NAME.fullmatch(i.base_name) or _LEGACY_INDEX_NAME.fullmatch(i.base_name)]
        return [i.path for i in sorted(names, key=lambda i: i.base_name)]

    # -- writing ------------------------------------------------------------------------------------------

    def write_marker(self, entry: LedgerEntry) -> None:
        """Write ``entry``'s marker under this writer's epoch, then delete the key's markers of other statuses
        in that epoch (one marker per key)."""
        data = json.dumps({name: getattr(entry, name) for name in _INDEX_SCHEMA.names}, indent=1).encode()
        self.files.write_bytes(data, self.marker(entry.key, entry.status, self.epoch))
        self.files.delete_files([self.marker(entry.key, s, self.epoch) for s in STATUSES if s != entry.status])

    def open_epoch(self, epoch: str) -> list[Marker]:
        """Make ``epoch`` the one whose markers count (see "Epochs"); call it under the lease, before writing.

        Every marker that counts until now (a killed run's, committed before this point) is folded into a new
        index file first, then ``_ledger/_epoch`` is switched with a conditional write, then the folded markers
        are deleted. A marker of the old epoch written after the listing here never counts.

        Returns:
            The superseded markers listed here (of epochs switched away from earlier): the reconcile deletes
            them and the part files they name.

        Raises:
            LeaseLost: another run switched the epoch meanwhile (it holds the output's lease now).
        """
        store = lease_store(self.files.fs, self.files.path(EPOCH_FILE))
        found = store.read()  # before the listing, as readers do
        current = None if found is None else _epoch_named(found[0])
        listed = self.all_markers()
        counted = [m for m in listed if current is None or m.epoch in (None, current)]
        if counted:
            entries = newest_entries(self._read_markers(counted, missing_ok=True))
            self._write_index(list(entries.values()), self.index_files())  # durable before the switch
        data = json.dumps({"epoch": epoch, "opened_at": now_iso()}, indent=1).encode()
        if (store.create(data) if found is None else store.replace(data, found[1])) is None:
            raise LeaseLost(
                f"{self.files.path(EPOCH_FILE)} changed while this run opened its epoch {epoch}: another run "
                "took the output's lease over and opened its own"
            )
        self.files.delete_files([m.path for m in counted])  # in the index now, and no longer of the epoch
        return [m for m in listed if m not in counted]

    def read_markers(self, markers: list[Marker]) -> list[LedgerEntry]:
        """The content of those of ``markers`` that still exist."""
        return self._read_markers(markers, missing_ok=True)

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        self.files.write_bytes(json.dumps(payload, indent=1).encode(), self.files.path(relative))

    def compact(self, entries: Iterable[LedgerEntry] = ()) -> None:
        """Fold the markers of ``entries``' keys into one new index file (see "Compaction"); merge when due.

        Call it only while holding the output's lease, after the run's writes (no writer runs alongside).
        """
        markers = self.markers()  # listed before the index files, as readers do
        listed = {(m.key, m.status) for m in markers}
        statuses: dict[str, int] = {}
        for m in markers:
            statuses[m.key] = statuses.get(m.key, 0) + 1
        fold = {e.key: e for e in newest_entries(entries).values() if (e.key, e.status) in listed}
        several = [m for m in markers if m.key in fold and statuses[m.key] > 1]
        fold.update(newest_entries([*fold.values(), *self._read_markers(several, missing_ok=True)]))
        files = self.index_files()
        if fold:
            self._write_index(list(fold.values()), files)  # durable first ...
            crash_point("indexed")
            self.files.delete_files([m.path for m in markers if m.key in fold])  # ... markers after
            crash_point("compacted")
            markers = [m for m in markers if m.key not in fold]
            files = self.index_files()
        legacy = any(f.endswith(".parquet") for f in files)
        if len(files) > MAX_INDEX_FILES or legacy or len(markers) > MAX_LOOSE_MARKERS:
            self.merge(files, markers)
        logger.debug("compacted %d markers into %s", len(fold), self.files.path(INDEX_DIR))

    def merge(self, files: list[str], markers: list[Marker]) -> None:
        """Write the newest record of every key in ``files`` and ``markers`` into one new index file, then
        delete what it now holds."""
        rows = [LedgerEntry(**r) for r in self._read_index(files).to_pylist()]
        merged = newest_entries([*rows, *self._read_markers(markers, missing_ok=True)])
        self._write_index(list(merged.values()), files)
        self.files.delete_files(files)
        self.files.delete_files([m.path for m in markers])
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

    def _read_markers(self, markers: list[Marker], missing_ok: bool = False) -> list[LedgerEntry]:
        paths = [m.path for m in markers]
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
                table = _with_figures(self.files.read_arrow(path)).cast(_INDEX_SCHEMA)
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


def _epoch_named(data: bytes) -> str | None:
    """The epoch in a ``_ledger/_epoch`` document (None if it names none: then every marker counts)."""
    try:
        epoch = json.loads(data).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, str) and _EPOCH.fullmatch(epoch) else None


def _with_figures(table: pa.Table) -> pa.Table:
    """An index table written before the figure columns existed, with them as nulls."""
    for name in _FIGURES:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, _INDEX_SCHEMA.field(name).type))
    return table.select(_INDEX_SCHEMA.names)


def newest_entries(entries: Iterable[LedgerEntry]) -> dict[str, LedgerEntry]:
    """The entry with the latest ``committed_at`` per key."""
    newest: dict[str, LedgerEntry] = {}
    for entry in entries:
        old = newest.get(entry.key)
        if old is None or entry.committed_at >= old.committed_at:
            newest[entry.key] = entry
    return newest
