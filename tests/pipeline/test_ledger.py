"""The ledger's commit protocol on a local folder and on S3 (moto): exactly-once rows under reruns, and
compaction of the markers into index files that changes no answer, whatever step it stops at."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

import pipeline.commit.ledger_index
from pipeline.commit.ledger import Ledger, ledger_key
from pipeline.commit.ledger_index import LedgerEntry, LedgerError
from pipeline.observability.quality import QualityTally
from pipeline.stages.schema import LEDGER_KEY, SEGMENT_ROWS
from tests.pipeline.ledgers import CONFIG_KEY, quality_files, read_all, read_quality, segment


def test_a_video_commits_when_all_its_segments_are_staged(ledger: Ledger) -> None:
    key = ledger_key(CONFIG_KEY, "v1", ["q"])
    assert ledger.write_rows(segment("v1", 2, last=True), "r1") == []  # out of order, across calls
    assert ledger.write_rows(segment("v1", 0, last=False), "r1") == []
    assert ledger.committed() == {} and ledger.pending([key]) == [key]
    (entry,) = ledger.write_rows(pa.concat_tables([segment("v1", 1, last=False), segment("v2", 0, True)]), "r1")[:1]
    assert (entry.key, entry.rows, entry.segments, entry.status) == (key, 6, 3, "ok")
    assert set(ledger.committed()) == {key, ledger_key(CONFIG_KEY, "v2", ["q"])}
    assert ledger.pending([key]) == []
    part = pads.dataset(ledger.part_files()[0], format="parquet", filesystem=ledger.fs).to_table()
    assert part.column("segment_index").to_pylist() == [0, 0, 1, 1, 2, 2]  # sorted by segment
    assert ledger.fs.get_file_info(f"{ledger.base}/_staging/{key}").type == pafs.FileType.NotFound
    assert len(read_all(ledger)) == 8


def test_reruns_and_interrupted_runs_leave_every_row_once(ledger: Ledger) -> None:
    ledger.write_rows(segment("v1", 0, last=False), "r1")  # run 1 stops here: v1 half staged
    ledger.write_rows(pa.concat_tables([segment("v2", 0, False), segment("v2", 1, True)]), "r1")
    assert [v for v, _, _ in read_all(ledger)] == ["v2"] * 4  # readers never see the half video
    for _ in range(2):  # run 2 redoes v1 (its keys overwrite), run 3 repeats everything
        ledger.write_rows(pa.concat_tables([segment("v1", 0, False), segment("v1", 1, True)]), "r2")
        ledger.write_rows(pa.concat_tables([segment("v2", 0, False), segment("v2", 1, True)]), "r2")
    rows = read_all(ledger)
    assert len(rows) == len(set(rows)) == 8
    assert len(ledger.part_files()) == 2


def test_failed_videos_commit_as_errors_and_retry_on_request(ledger: Ledger) -> None:
    key = ledger_key(CONFIG_KEY, "bad", ["q"])
    (entry,) = ledger.write_rows(segment("bad", None, last=True, error=True), "r1")
    assert (entry.status, entry.error_classes, entry.segments) == ("error", ["CorruptMedia"], 0)
    assert ledger.pending([key]) == [] and ledger.pending([key], retry_errors=True) == [key]
    (retried,) = ledger.write_rows(segment("bad", 0, last=True), "r2")  # fixed: now it decodes
    assert retried.status == "ok" and ledger.committed() == {key: "ok"}  # the error marker is gone
    assert ledger.entry(key) == retried and len(read_all(ledger)) == 2


def test_a_retry_into_another_partition_deletes_the_old_rows_when_it_commits(ledger: Ledger) -> None:
    night1 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-21")
    (old,) = night1.write_rows(segment("bad", None, last=True, error=True), "r1")
    night2 = Ledger(ledger.fs, ledger.base, partition="dt=2026-11-22")
    replaces = {key: entry.file for key, entry in night2.entries([old.key]).items()}
    assert night2.write_rows(segment("bad", 0, last=False), "r2", replaces) == []
    assert read_all(ledger) == [("bad", None, None)]  # not committed yet: the old error row stays
    (new,) = night2.write_rows(segment("bad", 1, last=True), "r2", replaces)  # no driver step after this
    assert new.file.startswith("dt=2026-11-22/") and ledger.part_files() == [f"{ledger.base}/{new.file}"]
    assert [(v, i) for v, i, _ in read_all(ledger)] == [("bad", 0), ("bad", 0), ("bad", 1), ("bad", 1)]
    # in the same partition the new file is the old name: it is overwritten, never deleted
    (again,) = night2.write_rows(segment("bad", 0, last=True), "r3", {new.key: new.file})
    assert again.file == new.file and len(read_all(ledger)) == 2


def test_a_partial_video_records_its_failing_segment(ledger: Ledger) -> None:
    rows = pa.concat_tables([segment("v", 0, last=False), segment("v", 1, last=True, error=True)])
    (entry,) = ledger.write_rows(rows, "r1")
    assert (entry.status, entry.rows, entry.segments) == ("partial", 3, 2)


def test_rows_of_one_segment_split_across_calls_are_refused(tmp_path: Path) -> None:
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path))
    with pytest.raises(LedgerError, match="segment 0: got 1 rows, the model stage made"):
        ledger.write_rows(segment("v", 0, last=True).slice(0, 1), "r1")
    with pytest.raises(LedgerError, match="lack columns"):
        ledger.write_rows(segment("v", 0, last=True).drop_columns([SEGMENT_ROWS]), "r1")


def test_keys_change_with_config_video_and_questions() -> None:
    base = ledger_key(CONFIG_KEY, "v", ["q"])
    assert base.startswith("v-") and base == ledger_key(CONFIG_KEY, "v", ["q"])
    others = {ledger_key("f" * 16, "v", ["q"]), ledger_key(CONFIG_KEY, "w", ["q"]), ledger_key(CONFIG_KEY, "v", [])}
    assert base not in others and len(others) == 3


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path))
    ledger.write_rows(segment("v", 0, last=True), "r1")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    key = ledger_key(CONFIG_KEY, "v", ["q"])
    assert names == [f"_ledger/{key}.ok.json", f"part-{key}.parquet"]


def test_ledger_keys_that_could_name_a_file_elsewhere_are_refused(tmp_path: Path) -> None:
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path / "out"))
    for video_id in ("../../evil", "a/b", "..", "_hidden", ".dot", "nul\0x", "é", "x" * 300, ""):
        with pytest.raises(LedgerError, match="cannot name a file under the output prefix"):
            ledger_key(CONFIG_KEY, video_id, ["q"])
    rows = segment("v", 0, last=True)
    for key in ("../../evil-0123", "a/b", "_staging", "x\0y"):
        bad = rows.set_column(rows.schema.get_field_index(LEDGER_KEY), LEDGER_KEY, pa.array([key] * rows.num_rows))
        with pytest.raises(LedgerError, match="cannot name a file"):
            ledger.write_rows(bad, "r1")
        with pytest.raises(LedgerError, match="cannot name a file"):
            ledger.commit_if_complete(key, "r1")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------
# Compaction: markers folded into _ledger/_index/ change no answer


def snapshot(ledger: Ledger, keys: list[str]) -> dict[str, Any]:
    """Every answer the ledger gives about ``keys``, and what a dataset reader sees."""
    return {
        "committed": ledger.committed(),
        "pending": ledger.pending(keys),
        "retry": ledger.pending(keys, retry_errors=True),
        "entries": [ledger.entry(k) for k in keys],
        "rows": read_all(ledger),
    }


def names(ledger: Ledger, folder: str) -> list[str]:
    infos = ledger.fs.get_file_info(pafs.FileSelector(f"{ledger.base}/{folder}", allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def commit_videos(ledger: Ledger, run_id: str = "r1") -> tuple[list[LedgerEntry], list[str]]:
    """Three committed videos (ok, error, partial), one half staged, one never seen."""
    rows = [
        pa.concat_tables([segment("ok", 0, False), segment("ok", 1, True)]),
        segment("bad", None, last=True, error=True),
        pa.concat_tables([segment("part", 0, False), segment("part", 1, True, error=True)]),
        segment("half", 0, last=False),
    ]
    entries = [e for table in rows for e in ledger.write_rows(table, run_id)]
    keys = [ledger_key(CONFIG_KEY, v, ["q"]) for v in ("ok", "bad", "part", "half", "new")]
    return entries, keys


def test_compaction_replaces_markers_by_an_index_with_the_same_answers(ledger: Ledger) -> None:
    entries, keys = commit_videos(ledger)
    before = snapshot(ledger, keys)
    assert before["pending"] == keys[3:] and before["retry"] == keys[1:]
    ledger.compact([*entries, entries[0]])  # the same video may come back from two write tasks
    assert names(ledger, "_ledger") == []
    (index,) = names(ledger, "_ledger/_index")
    assert index.startswith("00000001-") and index.endswith(".arrow")
    assert snapshot(ledger, keys) == before  # readers (pyarrow.dataset) never see _ledger/
    ledger.compact()  # nothing to do
    assert names(ledger, "_ledger/_index") == [index] and snapshot(ledger, keys) == before


def test_compaction_folds_only_what_a_marker_stands_for(ledger: Ledger) -> None:
    entries, _ = commit_videos(ledger)
    ledger.fs.delete_file(ledger.record.marker(entries[0].key, "ok"))  # a run that stopped before this marker
    stale = dataclasses.replace(entries[1], status="ok")  # not what the marker says
    ledger.compact([entries[0], stale])
    assert ledger.committed() == {entries[1].key: "error", entries[2].key: "partial"}
    assert names(ledger, "_ledger/_index") == [] and len(names(ledger, "_ledger")) == 2


def test_a_compaction_stopped_at_any_step_loses_nothing(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, keys = commit_videos(ledger)
    before = snapshot(ledger, keys)

    def crash(paths: list[str]) -> None:
        raise OSError("killed")

    with monkeypatch.context() as m:  # killed after writing the index, before deleting a marker
        m.setattr(ledger.files, "delete_files", crash)
        with pytest.raises(OSError, match="killed"):
            ledger.compact(entries)
    assert len(names(ledger, "_ledger")) == 3 and len(names(ledger, "_ledger/_index")) == 1
    assert snapshot(ledger, keys) == before  # each key twice, with the same content

    monkeypatch.setattr(pipeline.commit.ledger_index, "MAX_LOOSE_MARKERS", 0)  # the next compaction merges
    deleted: list[str] = []
    real_delete = ledger.files.delete_files

    def crash_after_index_files(paths: list[str]) -> None:
        if deleted:
            raise OSError("killed")
        deleted.extend(paths)
        real_delete(paths)

    with monkeypatch.context() as m:  # killed after deleting the merged index file, before the markers
        m.setattr(ledger.files, "delete_files", crash_after_index_files)
        with pytest.raises(OSError, match="killed"):
            ledger.compact()
    assert [p.rsplit("/", 1)[1][:9] for p in deleted] == ["00000001-"]
    assert [n[:9] for n in names(ledger, "_ledger/_index")] == ["00000002-"] and len(names(ledger, "_ledger")) == 3
    assert snapshot(ledger, keys) == before
    ledger.compact()  # the next compaction finishes the job
    assert [n[:9] for n in names(ledger, "_ledger/_index")] == ["00000003-"] and names(ledger, "_ledger") == []
    assert snapshot(ledger, keys) == before


def test_a_retried_video_is_newer_than_its_compacted_error(ledger: Ledger) -> None:
    key = ledger_key(CONFIG_KEY, "bad", ["q"])
    failed = ledger.write_rows(segment("bad", None, last=True, error=True), "r1")
    ledger.compact(failed)
    assert ledger.pending([key]) == [] and ledger.pending([key], retry_errors=True) == [key]
    (retried,) = ledger.write_rows(segment("bad", 0, last=True), "r2")
    assert ledger.committed() == {key: "ok"} and ledger.entry(key) == retried  # the marker wins over the index
    ledger.compact([retried])
    assert ledger.committed() == {key: "ok"} and ledger.entry(key) == retried  # the later index file wins
    assert len(names(ledger, "_ledger/_index")) == 2 and len(read_all(ledger)) == 2


def test_loose_markers_and_many_index_files_merge_into_one(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.commit.ledger_index, "MAX_INDEX_FILES", 2)
    monkeypatch.setattr(pipeline.commit.ledger_index, "MAX_LOOSE_MARKERS", 2)
    entries, keys = commit_videos(ledger)
    for entry in entries[:2]:  # two small runs that compacted
        ledger.compact([entry])
    # A commit interrupted between writing its new marker and deleting the old one leaves two markers of one key.
    bad = entries[1]
    (fixed,) = ledger.write_rows(segment("bad", 0, last=True), "r2")
    old = json_bytes(dataclasses.replace(bad, committed_at="2000-01-01T00:00:00+00:00"))
    with ledger.fs.open_output_stream(ledger.record.marker(bad.key, "error")) as f:
        f.write(old)
    before = snapshot(ledger, keys)
    assert before["committed"][bad.key] in ("ok", "error")  # ambiguous while both markers exist
    ledger.compact()  # 2 index files, 3 loose markers (one run never compacted, plus the pair)
    assert names(ledger, "_ledger") == [] and [n[:9] for n in names(ledger, "_ledger/_index")] == ["00000003-"]
    after = snapshot(ledger, keys)
    assert after["committed"] == {**before["committed"], bad.key: "ok"} and after["entries"][1] == fixed
    assert after["rows"] == before["rows"]


def test_a_reader_lists_again_when_a_merge_replaced_the_files_it_listed(ledger: Ledger) -> None:
    entries, _ = commit_videos(ledger)
    ledger.compact(entries[:1])
    stale = ledger.record.index_files()
    ledger.compact(entries[1:])
    ledger.record.merge(ledger.record.index_files(), [])
    listings = [stale]
    real = ledger.record.index_files
    ledger.record.index_files = lambda: listings.pop() if listings else real()  # type: ignore[method-assign]
    assert ledger.committed() == {e.key: e.status for e in entries} and not listings


def json_bytes(entry: LedgerEntry) -> bytes:
    import json

    return json.dumps(dataclasses.asdict(entry)).encode()


def test_a_runs_records_carry_its_videos_figures_before_and_after_compaction(ledger: Ledger) -> None:
    ok = segment("a", 0, last=True)
    ok = ok.set_column(ok.schema.get_field_index("duration_s"), "duration_s", pa.array([12.5, 12.5]))
    ok = ok.set_column(ok.schema.get_field_index("equivalent_tokens"), "equivalent_tokens", pa.array([30.0, 34.0]))
    ok = ok.set_column(ok.schema.get_field_index("visual_tokens_in"), "visual_tokens_in", pa.array([130, 130]))
    written = ledger.write_rows(ok, "r1") + ledger.write_rows(segment("b", None, last=True, error=True), "r1")
    figures = {(e.video_id, e.duration_s, e.ok_rows, e.equivalent_tokens, e.visual_tokens_in) for e in written}
    assert figures == {("a", 12.5, 2, 64.0, 260), ("b", None, 0, 0.0, 0)}
    ledger.write_rows(segment("c", None, last=True, error=True), "r2")
    assert {e.key: e for e in ledger.run_entries("r1")} == {e.key: e for e in written}  # from the markers
    ledger.compact(written)
    assert {e.key: e for e in ledger.run_entries("r1")} == {e.key: e for e in written}  # from the index


def test_index_files_from_before_the_figures_read_as_unknown_figures(ledger: Ledger) -> None:
    (old,) = ledger.write_rows(segment("a", 0, last=True), "r1")
    ledger.compact([old])
    (index,) = ledger.record.index_files()
    table = ledger.files.read_arrow(index)
    ledger.files.write_arrow(
        table.drop_columns(["duration_s", "ok_rows", "equivalent_tokens", "visual_tokens_in"]), index
    )
    (read,) = ledger.run_entries("r1")
    assert read == dataclasses.replace(
        old, duration_s=None, ok_rows=None, equivalent_tokens=None, visual_tokens_in=None
    )
    assert ledger.committed() == {old.key: "ok"}


def test_quality_rows_commit_once_with_their_video_and_leave_the_results_alone(ledger: Ledger, tmp_path: Path) -> None:
    key = ledger_key(CONFIG_KEY, "v", ["q"])
    segments = [segment("v", 0, False, shadow=True), segment("v", 1, True, shadow=False)]
    for _ in range(2):  # a retried write task stages and commits again under the same names
        (entry,) = ledger.write_rows(pa.concat_tables(segments), "r1")
    assert entry.quality_file == f"_quality/{key}/r1.arrow"
    assert (
        entry.quality
        == QualityTally(caption_samples=1, caption_sum=0.0, qa_samples=1, dense_ms=2.0, model_ms=8.0).to_dict()
    )
    assert read_quality(ledger) == [("v", 0, "caption", "dense-v-0-0"), ("v", 0, "qa", "dense-v-0-1")]
    assert quality_files(ledger) == {entry.quality_file}
    plain = Ledger(pafs.LocalFileSystem(), str(tmp_path / "plain"))  # the same video without a sample
    (without,) = plain.write_rows(pa.concat_tables([segment("v", 0, False), segment("v", 1, True)]), "r1")
    assert without.quality_file is None and without.quality == QualityTally().to_dict()
    assert read_all(ledger) == read_all(plain)  # the results are the same rows
    part = pads.dataset(ledger.part_files(), format="parquet", filesystem=ledger.fs).to_table()
    assert part.equals(pads.dataset(plain.part_files(), format="parquet", filesystem=plain.fs).to_table())
    ledger.compact([entry])
    assert ledger.run_entries("r1") == [entry]  # the index keeps the quality file and the tally


def test_quality_rows_of_an_uncommitted_or_replaced_attempt_never_count(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ledger_key(CONFIG_KEY, "v", ["q"])

    class Killed(BaseException):
        pass

    def die(entry: LedgerEntry) -> None:
        raise Killed

    killed = Ledger(ledger.fs, ledger.base)
    monkeypatch.setattr(killed.record, "write_marker", die)
    with pytest.raises(Killed):  # the quality file and the part file are written, the marker is not
        killed.write_rows(segment("v", 0, True, shadow=True), "r1")
    assert quality_files(ledger) == {f"_quality/{key}/r1.arrow"} and read_quality(ledger) == []
    ledger.reconcile()
    assert quality_files(ledger) == set()
    (first,) = ledger.write_rows(segment("v", 0, True, shadow=True), "r2")
    (second,) = ledger.write_rows(segment("v", 0, True, shadow=True), "r3")  # e.g. retried: a newer commit
    assert second.quality_file == f"_quality/{key}/r3.arrow" != first.quality_file
    assert [r[:3] for r in read_quality(ledger)] == [("v", 0, "caption"), ("v", 0, "qa")]  # once, from r3
    assert quality_files(ledger) == {first.quality_file, second.quality_file}
    ledger.reconcile()  # the next run's start deletes the replaced attempt's file
    assert quality_files(ledger) == {second.quality_file}
