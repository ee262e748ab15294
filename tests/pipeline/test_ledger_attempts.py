"""Exactly once across attempts: a key's status is its newest record whatever the listing order, a stale
staged segment never truncates a video, and part files that no commit names are reconciled away."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from pipeline.commit.ledger import Ledger, ledger_key
from pipeline.commit.ledger_index import LedgerEntry
from tests.pipeline.ledgers import CONFIG_KEY, read_all, segment

OLD, NEW = "2026-01-01T00:00:00.000000+00:00", "2026-01-02T00:00:00.000000+00:00"


def put_marker(ledger: Ledger, entry: LedgerEntry) -> None:
    """A marker as a commit writes it, without deleting the key's other markers (an interrupted commit)."""
    with ledger.fs.open_output_stream(ledger.record.marker(entry.key, entry.status)) as f:
        f.write(json.dumps(dataclasses.asdict(entry)).encode())


def two_records(ledger: Ledger, video: str, older: str, newer: str) -> LedgerEntry:
    """Commit ``video`` and give it a second, older record of status ``older``; returns the newest entry."""
    (entry,) = ledger.write_rows(segment(video, 0, last=True), "r1")
    ledger.files.delete_files([ledger.record.marker(entry.key, "ok")])
    entry = dataclasses.replace(entry, status=newer, committed_at=NEW)
    put_marker(ledger, entry)
    put_marker(ledger, dataclasses.replace(entry, status=older, committed_at=OLD, run_id="r0"))
    return entry


def test_of_two_markers_the_newer_one_wins_whatever_the_listing_order(ledger: Ledger) -> None:
    # On S3 names list alphabetically (error < ok < partial); locally in directory order. One of the two keys
    # has its newer marker listed first, whichever order the listing has.
    a = two_records(ledger, "a", older="partial", newer="ok")
    b = two_records(ledger, "b", older="ok", newer="partial")
    assert ledger.committed() == {a.key: "ok", b.key: "partial"}
    assert ledger.entry(a.key) == a and ledger.entry(b.key) == b
    assert ledger.entries([a.key, b.key]) == {a.key: a, b.key: b}
    assert ledger.pending([a.key, b.key], retry_errors=True) == [b.key]
    ledger.compact([a, b])  # folds the newest record, deletes both markers
    assert ledger.record.markers() == [] and ledger.committed() == {a.key: "ok", b.key: "partial"}
    assert ledger.entries([a.key, b.key]) == {a.key: a, b.key: b}


def test_an_index_row_newer_than_a_marker_or_a_later_file_wins(ledger: Ledger) -> None:
    (entry,) = ledger.write_rows(segment("v", 0, last=True), "r1")
    newer = dataclasses.replace(entry, committed_at=NEW)
    older = dataclasses.replace(entry, status="error", committed_at=OLD, run_id="r0")
    ledger.fs.delete_file(ledger.record.marker(entry.key, "ok"))
    ledger.record._write_index([newer], [])  # file 1 holds the newer record ...
    ledger.record._write_index([older], ledger.record.index_files())  # ... file 2 an older one
    assert ledger.committed() == {entry.key: "ok"} and ledger.entry(entry.key) == newer
    put_marker(ledger, older)  # and a stale marker (a compaction stopped before deleting it)
    assert ledger.committed() == {entry.key: "ok"} and ledger.entries([entry.key]) == {entry.key: newer}
    ledger.record.merge(ledger.record.index_files(), ledger.record.markers())
    assert len(ledger.record.index_files()) == 1 and ledger.record.markers() == []
    assert ledger.committed() == {entry.key: "ok"} and ledger.entry(entry.key) == newer


def test_a_stale_last_segment_of_an_earlier_run_never_truncates_a_video(ledger: Ledger) -> None:
    # An earlier attempt failed at segment 2 and its driver died before segments 0 and 1 reached a writer.
    assert ledger.write_rows(segment("v", 2, last=True, error=True), "r0") == []
    staged = [segment("v", i, last=i == 4) for i in range(5)]
    assert ledger.write_rows(pa.concat_tables(staged[:3]), "r1") == []
    (entry,) = ledger.write_rows(pa.concat_tables(staged[3:]), "r1")
    assert (entry.status, entry.segments, entry.rows) == ("ok", 5, 10)
    assert sorted({i for _, i, _ in read_all(ledger)}) == [0, 1, 2, 3, 4]
    assert ledger.files.list_files(f"{ledger.base}/_staging", recursive=True) == []  # leftovers went too


def test_two_attempts_in_one_run_commit_the_one_that_got_further(ledger: Ledger) -> None:
    # A retried decode task: attempt B staged segment 3 before attempt A's error row at segment 2 arrived.
    assert ledger.write_rows(segment("v", 3, last=False), "r1") == []
    assert ledger.write_rows(pa.concat_tables([segment("v", 0, False), segment("v", 1, False)]), "r1") == []
    assert ledger.write_rows(segment("v", 2, last=True, error=True), "r1") == []  # not the end: 3 exists
    (entry,) = ledger.write_rows(pa.concat_tables([segment("v", 2, False), segment("v", 4, True)]), "r1")
    assert (entry.status, entry.segments) == ("ok", 5)
    assert [a for _, i, a in read_all(ledger) if i == 2] == ["v-2-0", "v-2-1"]


class Killed(BaseException):
    """The writer dies here (BaseException: no ``except Exception`` on the way catches it)."""


def kill_before_marker(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(entry: LedgerEntry) -> None:
        raise Killed

    monkeypatch.setattr(ledger.record, "write_marker", killed)


@pytest.mark.parametrize("rerun_partition", ["dt=2026-11-21", "dt=2026-11-22"])
def test_a_part_file_without_a_marker_is_reconciled_before_the_rerun(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, rerun_partition: str
) -> None:
    night1 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-21")
    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_before_marker(night1, m)
        night1.write_rows(pa.concat_tables([segment("v", 0, False), segment("v", 1, True)]), "r1")
    assert ledger.committed() == {} and len(ledger.part_files()) == 1  # the orphan: visible, never committed
    rerun = Ledger(ledger.fs, ledger.base, partition=rerun_partition)
    assert rerun.reconcile() == [f"dt=2026-11-21/part-{ledger_key(CONFIG_KEY, 'v', ['q'])}.parquet"]
    assert ledger.part_files() == [] and ledger.files.list_files(f"{ledger.base}/_staging", recursive=True) == []
    rerun.write_rows(pa.concat_tables([segment("v", 0, False), segment("v", 1, True)]), "r2")
    rows = read_all(ledger)
    assert len(rows) == len(set(rows)) == 4 and len(ledger.part_files()) == 1


def test_a_retry_killed_before_its_marker_keeps_the_committed_file(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    night1 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-21")
    (old,) = night1.write_rows(segment("bad", None, last=True, error=True), "r1")
    night2 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-22")
    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_before_marker(night2, m)
        night2.write_rows(segment("bad", 0, last=True), "r2", {old.key: old.file})
    assert len(read_all(ledger)) == 3  # the old error row beside the new rows, until the next run
    night3 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-23")
    assert night3.reconcile() == [f"dt=2026-11-22/part-{old.key}.parquet"]
    assert read_all(ledger) == [("bad", None, None)] and ledger.pending([old.key], retry_errors=True) == [old.key]
    (new,) = night3.write_rows(segment("bad", 0, last=True), "r3", {old.key: old.file})
    assert ledger.part_files() == [f"{ledger.base}/{new.file}"] and len(read_all(ledger)) == 2
    assert night3.reconcile() == []  # a consistent output has nothing to reconcile


def test_the_reconcile_leaves_foreign_and_nested_files_alone(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local and S3: only this ledger's own orphans go; other tools' part-* tables, an input video named part-*
    and a nested pipeline output's part files (its ledger beside them) stay."""
    night1 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-21")
    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_before_marker(night1, m)
        night1.write_rows(pa.concat_tables([segment("v", 0, False), segment("v", 1, True)]), "r1")
    nested = Ledger(ledger.fs, ledger.files.path("sub"))
    (committed,) = nested.write_rows(pa.concat_tables([segment("v", 0, False), segment("v", 1, True)]), "n1")
    foreign = [ledger.files.path(p) for p in ("other/part-00000-a.snappy.parquet", "in/part-01.avi")]
    foreign.append(ledger.files.path("dt=2026-11-21", "part-00000-1b2c-c000.snappy.parquet"))
    for path in foreign:
        ledger.files.write_bytes(b"x", path)
    assert Ledger(ledger.fs, ledger.base).reconcile() == [f"dt=2026-11-21/part-{committed.key}.parquet"]
    for path in [*foreign, nested.files.path(committed.file)]:
        assert ledger.fs.get_file_info(path).type == pafs.FileType.File, path
    assert nested.committed() == {committed.key: "ok"}
