"""The completion ledger: which (video, model, config, questions) are done, and the commit protocol. No Ray.

Layout under the output prefix (local folder or S3, through one pyarrow filesystem)::

    [<partition>/]part-<key>.parquet     all result rows of one video for one config key, sorted by segment
    _quality/<key>/<run_id>.arrow        the video's shadow dense sample, before its marker
                                         (pipeline/observability/quality.py)
    _ledger/<key>.<status>.<epoch>.json  commit marker, written after the part file is durable (ok|partial|error)
    _ledger/_index/<seq>-<8 hex>.arrow   compacted markers (pipeline/commit/ledger_index.py)
    _ledger/_epoch                       the lease epoch whose markers count (pipeline/commit/ledger_index.py, "Epochs")
    _staging/<key>/<run_id>/seg-<i>[-last].arrow   rows of single segments until the whole video is there
    _lease                               the running driver's lease on the prefix (pipeline/commit/lease.py)

where ``<key> = <video_id>-<16 hex>`` (:func:`ledger_key`): the video version (its id hashes uri, size and
ETag/mtime) plus everything that changes its rows (model, SparseConfig, segmenting, prompts, schema). A video's
``summary`` row has a key of its own in the same form (pipeline/stages/summary.py), committed the same way as a
whole-video row; its record's ``kind`` is ``"summary"``. A key is
one path component of letters, digits, ``-`` and ``_`` (checked on every write), so no row can name a file
outside the prefix. The only ``.parquet`` names are part files: internal tables are Arrow IPC (``.arrow``)
and local temporary files end in ``.tmp``, so a recursive glob (DuckDB, Polars) reads results only.

Commit protocol. One driver at a time holds the prefix's lease; it opens its epoch and reconciles at its start
(below), and only it compacts; its write tasks check before each commit that the lease is still the run's
(``lease_token``), and their markers carry the lease's epoch, so a commit that passed its check and landed after
another run took the output over never counts (its marker names a superseded epoch; fencing, below).
Segments of one video reach the writers in any order and in different write tasks. Each task stages every
segment it receives under its run's folder, named by index (a retried segment overwrites itself); the decode
stage flags the video's final segment (``-last``). The task then lists that run folder; when it holds
``seg-<L>-last`` for the largest flagged ``L``, every ``seg-<i>`` below it, and nothing beyond it (a staged
segment past ``L`` means another attempt of the video got further: wait for its own last), it concatenates
them, writes the video's quality rows (the shadow dense sample, when it has any) to
``_quality/<key>/<run_id>.arrow``, then the results to ``part-<key>.parquet`` (one atomic object PUT on S3;
write-then-rename locally), then writes the marker, which names the quality file and carries its tally, and
deletes the key's markers of other statuses, checks the lease again (a writer that lost it stops here and
deletes nothing), then deletes a replaced part file (a retry into another partition), then deletes
``_staging/<key>/`` (leftovers of every run included). Segments of another run never enter a commit, so a
stale ``-last`` row from an earlier attempt cannot truncate a video.

Fencing. A check and the writes after it are separate requests, and no storage request can make the PUT of
a part file depend on another object, so a write task stopped between its check and its commit (a slow upload,
a paused VM) can land its part file after a takeover, even in another ``dt=`` partition. What makes a commit
count is its marker, and a marker counts only while its epoch is the one ``_ledger/_epoch`` names. The new
holder lists the markers that count, folds them into the index and only then switches the epoch (a
conditional write): once it is switched, a late marker that the listing missed never counts for this module,
the compaction, the index or :func:`pipeline.query.results.open_results`, whatever its ``committed_at``; one that
the listing found counts, as if it had landed before the takeover (the new run skips its video). A late part file stays
visible to a glob of the prefix until the next reconcile deletes it.

Reconcile (:meth:`Ledger.reconcile`), by the driver under the lease before it writes: opens the run's epoch,
deletes every orphan part file, then the superseded markers, then ``_staging/`` (nothing of this run is in
flight). It deletes only what this pipeline provably wrote: a file named ``part-<key>.parquet`` (the key's
full pattern and the extension) directly under the prefix or under a ``name=value`` partition folder, whose
key the staging area knows but no marker commits (its writer died before the marker; every commit stages its
rows first, a whole-video failure as ``whole.arrow``), or whose committed key's newest record names another
file (an old file a dead writer did not get to delete), or that a superseded marker names and no record that
counts does (a commit that landed after its run lost the lease). Likewise every quality file under
``_quality/<key>/`` that the key's newest record does not name (a writer that died before its marker, an
earlier attempt of a retried video, a commit that never counted). Nothing else is touched: other tools' tables
(Spark's ``part-00000-<uuid>.snappy.parquet``), input videos when the output is also the input, and a pipeline
output nested below this one (a folder with its own ``_ledger/``, which is left alone, not refused) keep their
files. It costs a listing of the prefix's top level and of each partition folder (a LIST request per 1,000
names), a marker read per key that has more than one part file and per superseded or folded marker.

What readers may rely on:

* :func:`pipeline.query.results.open_results` (the part files the ledger names) sees every committed (video version,
  config key, segment, task) exactly once, whole videos only, at any moment; :func:`pipeline.query.results.open_quality`
  (the quality files the ledger names) sees the quality rows of exactly those videos, once.
* ``pyarrow.dataset.dataset(output, format="parquet")``, ``duckdb.read_parquet('output/**/*.parquet')`` and
  ``polars.scan_parquet('output/**/*.parquet')`` see only part files, and after any run's reconcile every
  (video version, config key, segment, task) exactly once, whole videos only, however often earlier runs
  were killed, unless a writer of a superseded epoch landed a commit after that reconcile (see "Fencing").
* Rows of different config keys (another model or SparseConfig) are different rows; filter on ``model_id`` /
  ``sparse_config_json``. A changed video has a new ``video_id``.
* A marker or index row exists only after its part file is complete; a key's status is that of its newest
  record by ``committed_at``. Runs skip committed videos before decoding (``error`` ones only with
  ``retry_errors``).
* Between a killed writer and the next run's reconcile, a glob may see a video that no marker names yet
  (whole, once) or, for a video retried into another partition, its old error rows beside the new ones; and
  after a superseded writer's late commit, that video twice (its part file in the writer's partition).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.commit.lease import check_fence
from pipeline.commit.ledger_files import PARTITION, PrefixFiles
from pipeline.commit.ledger_index import CommitRecord, LedgerEntry, LedgerError, epoch_of, now_iso
from pipeline.harness.crash import crash_point
from pipeline.observability.quality import QUALITY_DIR, SHADOW_COLUMNS, QualityTally, quality_rows
from pipeline.stages.schema import (
    COLUMNS,
    INTERNAL_COLUMNS,
    LAST_SEGMENT,
    LEDGER_KEY,
    RESULT_SCHEMA,
    SEGMENT_ROWS,
    SUMMARY_TASK,
)

logger = logging.getLogger(__name__)

__all__ = ["Ledger", "ledger_key"]

# What a staged segment holds: the result columns and the shadow sample's internal columns
# (pipeline/observability/quality.py; filled with nulls when the rows lack them), which the commit splits into the part
# file and the quality file.
STAGED_SCHEMA = pa.schema([*RESULT_SCHEMA, *(pa.field(name, type_) for name, type_ in SHADOW_COLUMNS)])
STAGING_DIR = "_staging"
# One path component that readers do not skip (no "/", "..", NUL or leading "_"/"."), short enough for any
# filesystem with "part-" and ".parquet" around it. ledger_key() of a hex video id always matches.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")  # a run id, as PipelineConfig checks it
_SEGMENT = re.compile(r"seg-(\d{6,})(-last)?\.arrow")
# The name of a part file this pipeline writes: ledger_key()'s "<video_id>-<16 hex>" inside "part-...parquet".
_PART = re.compile(r"part-([A-Za-z0-9][A-Za-z0-9_-]{0,182}-[0-9a-f]{16})\.parquet")
# A quality file this pipeline writes, relative to the prefix: _quality/<key>/<run_id>.arrow.
_QUALITY = re.compile(QUALITY_DIR + r"/([A-Za-z0-9][A-Za-z0-9_-]{0,199})/[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\.arrow")
WHOLE_VIDEO = "whole.arrow"  # the staged rows of a video that failed as a whole (no segment rows)


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


def _checked_run(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN.fullmatch(run_id):
        raise LedgerError(
            f"run id {run_id!r} cannot name a staging folder; expected letters, digits and _ . : - (at most 128, "
            "starting with a letter or digit), as PipelineConfig makes"
        )
    return run_id


class Ledger:
    """Commit markers and part files under one output prefix.

    Args:
        filesystem: a pyarrow filesystem (``LocalFileSystem``, or ``PyFileSystem(FSSpecHandler(s3fs))``).
        base: the output prefix as a path of that filesystem (``bucket/prefix`` on S3).
        partition: a hive partition folder (``dt=2026-11-22``) for the part files written now; the markers
            stay under ``<base>/_ledger`` so every partition shares one ledger (nightly increments).
        lease_token: the token of the run's output lease (pipeline/commit/lease.py); when given, every commit first
            checks that the lease still carries it and raises ``LeaseLost`` otherwise, and its marker carries
            the lease's epoch, so a commit that lands after another run took over never counts (fencing).
    """

    def __init__(
        self, filesystem: pafs.FileSystem, base: str, partition: str | None = None, lease_token: str | None = None
    ) -> None:
        self.files = PrefixFiles(filesystem, base)
        self.lease_token = lease_token
        self.record = CommitRecord(self.files, None if lease_token is None else epoch_of(lease_token))
        self.fs = filesystem
        self.base = self.files.base
        self.partition = partition

    # -- reading ------------------------------------------------------------------------------------------

    def committed(self) -> dict[str, str]:
        """Committed keys and the status of their newest record (``committed_at``)."""
        return self.record.committed()

    def pending(self, keys: Iterable[str], retry_errors: bool = False, done: dict[str, str] | None = None) -> list[str]:
        """The keys a run must process: not committed, or committed with error rows when ``retry_errors``.

        ``done`` is a :meth:`committed` result the caller already has (saves a listing)."""
        done = self.committed() if done is None else done
        return [k for k in keys if k not in done or (retry_errors and done[k] != "ok")]

    def entry(self, key: str) -> LedgerEntry | None:
        """The newest commit record of ``key``, or None if it is not committed."""
        return self.record.entries([key]).get(key)

    def entries(self, keys: Iterable[str]) -> dict[str, LedgerEntry]:
        """The newest commit records of those of ``keys`` that are committed: one listing and one index read."""
        return self.record.entries(keys)

    def run_entries(self, run_id: str) -> list[LedgerEntry]:
        """The commit records one run wrote, from the index and the loose markers (never the part files)."""
        return self.record.run_entries(run_id)

    def result_files(self) -> list[str]:
        """The part file of every committed key's newest record: the results, each (video version, config key,
        segment, task) once at any time, without the part files a killed writer or a superseded epoch left."""
        return sorted(self.files.path(e.file) for e in self.entries(self.committed()).values())

    def part_files(self) -> list[str]:
        """Paths of all part files under the prefix (what a dataset reader of the prefix sees)."""
        return sorted(
            i.path
            for i in self.files.list_files(self.base, recursive=True)
            if i.base_name.startswith("part-")
            and not any(part.startswith(("_", ".")) for part in posixpath.relpath(i.path, self.base).split("/"))
        )

    # -- the driver, under the lease ----------------------------------------------------------------------

    def own_part_files(self) -> list[str]:
        """The files that can only be this pipeline's part files: named ``part-<key>.parquet`` with a key of
        :func:`ledger_key`'s form, directly under the prefix or under a partition folder (``name=value``,
        :data:`~pipeline.commit.ledger_files.PARTITION`) that is not itself a pipeline output (no ``_ledger/`` or
        ``_lease`` in it). Nothing deeper is looked at: another tool's table, an input video or a nested
        output below the prefix is never listed here."""
        found = []
        folders = [self.base]
        for info in self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and PARTITION.fullmatch(info.base_name):
                folders.append(info.path)
        for folder in folders:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            names = {i.base_name for i in infos}
            if folder != self.base and ("_ledger" in names or "_lease" in names):
                logger.info("reconcile: %s holds another pipeline output; left alone", folder)
                continue
            found += [i.path for i in infos if i.type == pafs.FileType.File and _PART.fullmatch(i.base_name)]
        return sorted(found)

    def reconcile(self, lease_token: str | None = None) -> list[str]:
        """Open the run's epoch, then delete what dead or superseded writers left: all of ``_staging/``, orphan
        part files and superseded markers (see "Reconcile").

        Only files this pipeline provably wrote are deleted: :meth:`own_part_files` whose key is either staged
        but not committed (the writer died between its part file and its marker: every commit stages its rows
        first), or committed with its newest record naming another file, or named by a superseded marker (a
        commit that landed after its run lost the lease) and by no record that counts. A file of the part-file
        pattern that neither the staging area nor the ledger knows is left alone (another tool's, or a copy).

        Call it only while holding the output's lease, before the run writes, with the lease's token: its epoch
        becomes the one whose markers count (pipeline/commit/ledger_index.py, "Epochs"). Without a token the epoch
        stays as it is. Returns the deleted part files, relative to the prefix.
        """
        if lease_token is not None:
            superseded = self.record.open_epoch(epoch_of(lease_token))
        else:
            counted = set(self.record.markers())
            superseded = [m for m in self.record.all_markers() if m not in counted]
        staging = self.files.path(STAGING_DIR)
        staged = {
            i.base_name
            for i in self.fs.get_file_info(pafs.FileSelector(staging, allow_not_found=True))
            if i.type == pafs.FileType.Directory
        }
        by_key: dict[str, list[str]] = {}
        for path in self.own_part_files():
            match = _PART.fullmatch(posixpath.basename(path))
            assert match is not None  # own_part_files() matched it
            by_key.setdefault(match[1], []).append(path)
        done = self.committed()
        orphans = [p for key, paths in by_key.items() if key not in done and key in staged for p in paths]
        several = {key: paths for key, paths in by_key.items() if key in done and len(paths) > 1}
        for key, entry in self.entries(several).items():
            orphans += [p for p in several[key] if p != self.files.path(entry.file)]
        late = self.record.read_markers(superseded)  # what commits that never counted wrote
        newest = self.entries({e.key for e in late})
        for entry in late:
            path = self.files.path(entry.file)
            if path in by_key.get(entry.key, []) and (entry.key not in newest or newest[entry.key].file != entry.file):
                orphans.append(path)
        orphans = sorted(set(orphans))
        self.files.delete_files(orphans)
        self.files.delete_files(self._orphan_quality_files())
        self.files.delete_files([m.path for m in superseded])  # after their part files, for the same reason
        self.files.delete_dir(staging)  # after the orphans: a crash in between leaves their keys known
        removed = sorted(posixpath.relpath(p, self.base) for p in orphans)
        if removed:
            logger.warning(
                "deleted %d part files that no commit names (left by killed writers or commits that never counted): %s",
                len(removed),
                removed,
            )
        return removed

    def _orphan_quality_files(self) -> list[str]:
        """The quality files (one listing of ``_quality/``) that their key's newest record does not name."""
        by_key: dict[str, list[str]] = {}
        for info in self.files.list_files(self.files.path(QUALITY_DIR), recursive=True):
            match = _QUALITY.fullmatch(posixpath.relpath(info.path, self.base))
            if match:
                by_key.setdefault(match[1], []).append(posixpath.relpath(info.path, self.base))
        newest = self.entries(by_key)
        orphans = [
            self.files.path(name)
            for key, names in by_key.items()
            for name in names
            if key not in newest or newest[key].quality_file != name
        ]
        if orphans:
            logger.info("deleting %d quality files that no commit names", len(orphans))
        return orphans

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
                self.files.delete_file(self.files.path(old.file))
                removed.append(old.file)
        return removed

    def compact(self, entries: Iterable[LedgerEntry] = ()) -> None:
        """Fold this run's markers into the index (pipeline/commit/ledger_index.py); only under the output's lease."""
        self.record.compact(entries)

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        """Write a small JSON document under the prefix atomically (e.g. ``_runs/<run_id>.json``)."""
        self.record.write_json(relative, payload)

    # -- writing ------------------------------------------------------------------------------------------

    def write_rows(self, table: pa.Table, run_id: str, replaces: Mapping[str, str] | None = None) -> list[LedgerEntry]:
        """Stage result rows (with the :data:`INTERNAL_COLUMNS`) and commit every video they complete.

        Args:
            table: rows of ``RESULT_SCHEMA`` plus the internal columns; all rows of a segment together.
            run_id: names the staging folder and is recorded in the markers written now.
            replaces: old part file per key (retried videos, :meth:`entries`); a file in another partition is
                deleted right after the key's new marker, so the old rows never stay beside the new ones.

        Returns:
            The entries committed by this call.
        """
        _checked_run(run_id)
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
            if nulls:  # the video failed as a whole: staged too, so a reconcile knows its key if the commit dies
                self.files.write_arrow(_staged(rows), self._staging(key, run_id, WHOLE_VIDEO))
                committed.append(self._commit(key, _staged(rows), run_id, replaces.get(key)))
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
                name = f"seg-{index:06d}{'-last' if last else ''}.arrow"
                self.files.write_arrow(_staged(segment), self._staging(key, run_id, name))
                crash_point("staged")
            entry = self.commit_if_complete(key, run_id, replaces.get(key))
            if entry is not None:
                committed.append(entry)
        return committed

    def commit_if_complete(self, key: str, run_id: str, replaces: str | None = None) -> LedgerEntry | None:
        """Merge the segments ``run_id`` staged for ``key`` into its part file and commit it, if all are there.

        ``replaces`` is the key's old part file (another partition's), deleted once the new one is committed.
        """
        _checked_key(key)
        staged: dict[tuple[int, bool], str] = {}
        for info in self.files.list_files(self._staging(key, _checked_run(run_id))):
            match = _SEGMENT.fullmatch(info.base_name)
            if match:
                staged[int(match[1]), bool(match[2])] = info.path
        lasts = [i for i, last in staged if last]
        if not lasts:
            return None
        end = max(lasts)
        wanted = [(i, i == end) for i in range(end + 1)]
        if any(i > end for i, _ in staged) or any(w not in staged for w in wanted):
            return None  # an attempt is still on its way: its own last segment commits it
        try:
            parts = [self.files.read_arrow(staged[w]) for w in wanted]
        except FileNotFoundError:
            if self.entry(key) is not None:  # another task committed it and removed the staging folder meanwhile
                return None
            raise
        return self._commit(key, pa.concat_tables(parts).cast(STAGED_SCHEMA), run_id, replaces)

    def _commit(self, key: str, staged: pa.Table, run_id: str, replaces: str | None = None) -> LedgerEntry:
        """Write the quality file (if any), the part file, then the marker that names both (see the module)."""
        if self.lease_token is not None:  # the run lost the output to another: commit nothing more
            check_fence(self.files, self.lease_token)
        crash_point("fenced")  # a pause here is the window the marker's epoch closes
        rows = _results(staged)
        quality = quality_rows(staged)
        quality_file = None
        if quality.num_rows:  # counts only once the marker names it, like the part file
            quality_file = posixpath.join(QUALITY_DIR, key, f"{run_id}.arrow")
            self.files.write_arrow(quality, self.files.path(quality_file))
            crash_point("quality")
        name = posixpath.join(self.partition or "", f"part-{key}.parquet")
        self.files.write_parquet(rows, self.files.path(name))  # data first ...
        crash_point("part")
        statuses = rows.column("status").to_pylist()
        status = "ok" if "error" not in statuses else "error" if "ok" not in statuses else "partial"
        classes = sorted({c for c in rows.column("error_class").to_pylist() if c})
        segments = {i for i in rows.column("segment_index").to_pylist() if i is not None}
        ok = rows.filter(pc.equal(rows["status"], "ok"))
        summary = set(rows.column("task").to_pylist()) == {SUMMARY_TASK}
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
            committed_at=now_iso(),
            duration_s=pc.max(rows["duration_s"]).as_py(),
            ok_rows=ok.num_rows,
            equivalent_tokens=float(pc.sum(ok["equivalent_tokens"]).as_py() or 0.0),
            visual_tokens_in=int(pc.sum(ok["visual_tokens_in"]).as_py() or 0),
            quality_file=quality_file,
            quality=QualityTally.from_rows(staged, quality).to_dict(),
            kind=SUMMARY_TASK if summary else None,
        )
        self.record.write_marker(entry)  # ... marker last (a retried video may change status: one per key)
        crash_point("marker")
        if self.lease_token is not None:  # taken over meanwhile: the marker may not count; delete nothing
            check_fence(self.files, self.lease_token)
        if replaces is not None and replaces != name:  # the retried video's old rows, now superseded
            self.files.delete_file(self.files.path(replaces))
            crash_point("replaced")
        self.files.delete_dir(self._staging(key))  # this attempt's segments and any run's leftovers
        crash_point("committed")
        logger.debug("committed %s: %d rows, status %s", key, entry.rows, status)
        return entry

    def _staging(self, key: str, *parts: str) -> str:
        return self.files.path(STAGING_DIR, key, *parts)


def _results(rows: pa.Table) -> pa.Table:
    """The Parquet content: exactly RESULT_SCHEMA (internal columns dropped, schema metadata kept)."""
    return rows.select(list(COLUMNS)).cast(RESULT_SCHEMA)


def _staged(rows: pa.Table) -> pa.Table:
    """A staged segment's content: exactly STAGED_SCHEMA (the shadow columns null when the rows lack them)."""
    for name, type_ in SHADOW_COLUMNS:
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, type_))
    return rows.select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)
