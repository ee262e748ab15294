"""One driver per output: the lease is created atomically, renewed, taken over only when expired or its
holder's process is gone, and a second driver is refused with the holder's name (exit code 1 from the jobs:
a run failure)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from jobs import caption
from jobs.common import run_cli
from pipeline.commit.lease import LeaseHeld, LeaseLost, OutputLease
from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import Marker
from pipeline.run import run_pipeline
from tests.pipeline.ledgers import CONFIG_KEY, ledger_key, make_ledger, segment
from tests.pipeline.runs import make_config


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[pafs.FileSystem, str]:
    ledger = make_ledger(request.param, tmp_path, request)
    return ledger.fs, ledger.base


def lease_document(fs: pafs.FileSystem, base: str) -> dict[str, object] | None:
    try:
        with fs.open_input_stream(f"{base}/_lease") as f:
            return dict(json.loads(f.read()))
    except FileNotFoundError:
        return None


def test_a_second_driver_is_refused_until_the_first_releases(output: tuple[pafs.FileSystem, str]) -> None:
    fs, base = output
    with OutputLease(fs, base, "nightly").acquire() as first:
        assert first.holder is not None and lease_document(fs, base) == vars(first.holder)
        with pytest.raises(LeaseHeld, match=r"run 'nightly' \(host .*, pid \d+\) since .*, until 20\d\d-.*--wait-for"):
            OutputLease(fs, base, "caption").acquire()
        first.check()
    assert lease_document(fs, base) is None
    with OutputLease(fs, base, "caption").acquire() as second:
        assert second.holder is not None and second.holder.run_id == "caption"


def test_the_lease_is_renewed_while_the_run_lasts(output: tuple[pafs.FileSystem, str]) -> None:
    fs, base = output
    with OutputLease(fs, base, "long", ttl_s=0.9).acquire() as lease:
        assert lease.holder is not None
        first_expiry = lease.holder.expires_at
        time.sleep(1.5)  # past the first expiry: renewed every 0.3 s
        lease.check()
        assert lease.holder.expires_at > first_expiry
        with pytest.raises(LeaseHeld):
            OutputLease(fs, base, "other").acquire()


def test_an_expired_lease_is_taken_over_and_its_old_holder_knows(output: tuple[pafs.FileSystem, str]) -> None:
    fs, base = output
    stalled = OutputLease(fs, base, "stalled", ttl_s=0.5).acquire()
    stalled._stop.set()  # its driver stops renewing (paused, or cut off from storage)
    time.sleep(0.7)
    with OutputLease(fs, base, "next", ttl_s=30).acquire() as taker:
        assert taker.holder is not None and lease_document(fs, base) == vars(taker.holder)
        stalled.renew()
        with pytest.raises(LeaseLost, match="was taken over: run 'next'"):
            stalled.check()
        stalled.release()  # must not delete the new holder's lease
        assert lease_document(fs, base) == vars(taker.holder)


def test_a_lease_of_a_killed_local_driver_is_taken_over_at_once(output: tuple[pafs.FileSystem, str]) -> None:
    fs, base = output
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    lease = OutputLease(fs, base, "killed").acquire()
    lease._stop.set()
    assert lease.holder is not None
    document = {**vars(lease.holder), "pid": int(dead.stdout)}  # the same lease, held by a process now gone
    with fs.open_output_stream(f"{base}/_lease") as f:
        f.write(json.dumps(document).encode())
    with OutputLease(fs, base, "rerun").acquire() as rerun:
        assert rerun.holder is not None and lease_document(fs, base) == vars(rerun.holder)


def test_a_waiting_driver_gets_the_lease_when_it_is_released(output: tuple[pafs.FileSystem, str]) -> None:
    fs, base = output
    first = OutputLease(fs, base, "first").acquire()
    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as m:
        m.setattr("pipeline.commit.lease._POLL_S", 0.1)
        with OutputLease(fs, base, "second").acquire(wait_s=20) as second:
            assert second.holder is not None and second.holder.run_id == "second"
    assert 0.4 < time.monotonic() - started < 10


def test_a_second_job_on_a_leased_output_exits_with_code_1_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    with OutputLease(pafs.LocalFileSystem(), str(output), "nightly-1").acquire():
        args = ["--input", str(tmp_path), "--output", str(output), "--run-id", "caption-1"]
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: caption.main(args))
        assert exit_info.value.code == 1  # a run failure (try again later), not a usage error
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "holds the output lease" in line and "run 'nightly-1'" in line and "until" in line
        with pytest.raises(LeaseHeld):  # the library raises before it reads or writes anything
            run_pipeline(make_config(str(tmp_path), str(output), tmp_path / "no-model"))
    assert not output.exists()  # the lease was the only thing written, and is gone


def test_a_holder_that_lost_its_lease_commits_and_compacts_nothing(output: tuple[pafs.FileSystem, str]) -> None:
    """Fencing: a driver paused past its TTL is taken over; its writers and its driver check the lease in
    storage before each commit and before deleting or compacting, and stop."""
    fs, base = output
    stalled = OutputLease(fs, base, "stalled", ttl_s=0.5).acquire()
    stalled._stop.set()  # paused: no renewal
    writer = Ledger(fs, base, "dt=2026-11-22", lease_token=stalled.token)
    writer.write_rows(segment("before", None, last=True), "stalled")  # still its lease: committed
    time.sleep(0.7)
    with OutputLease(fs, base, "next", ttl_s=30).acquire():
        stalled._valid_until = float("inf")  # as if its clock had not seen the pause: only storage tells
        with pytest.raises(LeaseLost, match=r"no longer this run's .*run 'next'"):
            writer.write_rows(segment("after", None, last=True), "stalled")
        with pytest.raises(LeaseLost, match="was taken over: run 'next'"):
            stalled.check()
        assert writer.committed() == {ledger_key(CONFIG_KEY, "before", ["q"]): "ok"}
        assert [p.rsplit("/", 1)[1][:11] for p in writer.part_files()] == ["part-before"]
        stalled.release()  # must not delete the new holder's lease
        assert lease_document(fs, base) is not None


def test_a_holder_taken_over_unawares_releases_nothing(output: tuple[pafs.FileSystem, str]) -> None:
    """Its release must not delete the new holder's lease: it re-reads the lease, and deletes conditionally
    (S3: If-Match on DeleteObject, 412 otherwise; moto and AWS S3 both evaluate it)."""
    fs, base = output
    stalled = OutputLease(fs, base, "stalled", ttl_s=0.5).acquire()
    stalled._stop.set()
    time.sleep(0.7)
    with OutputLease(fs, base, "next", ttl_s=30).acquire() as taker:
        assert taker.holder is not None
        stalled.release()  # it never renewed or checked, so it does not know
        assert lease_document(fs, base) == vars(taker.holder)
        if not isinstance(fs, pafs.LocalFileSystem):  # the conditional delete alone refuses it too
            stalled._store.delete(stalled._version)
            assert lease_document(fs, base) == vars(taker.holder)


def test_a_commit_that_lands_after_a_takeover_never_counts(
    output: tuple[pafs.FileSystem, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fencing window: a writer passes its lease check and stalls; meanwhile its lease expires, another run
    takes it over, opens its epoch and commits the same video into the next partition. Then the stalled writer
    lands its part file and marker. The marker's epoch is superseded: the ledger names the taker's file only, the
    writer's second check stops it before it deletes anything, and the next reconcile removes the late file."""
    fs, base = output
    stalled = OutputLease(fs, base, "stalled").acquire()
    stalled._stop.set()  # paused: no renewal
    Ledger(fs, base).reconcile(stalled.token)
    key = ledger_key(CONFIG_KEY, "v", ["q"])
    taken: list[OutputLease] = []

    def take_over_while_stalled(step: str) -> None:  # runs where the stalled writer sits after its check
        if step != "fenced" or taken:
            return
        expired = {**(lease_document(fs, base) or {}), "expires_at": "2000-01-01T00:00:00+00:00"}  # its TTL passed
        with fs.open_output_stream(f"{base}/_lease") as f:
            f.write(json.dumps(expired).encode())
        taker = OutputLease(fs, base, "taker").acquire()
        taken.append(taker)
        assert Ledger(fs, base).reconcile(taker.token) == []
        Ledger(fs, base, "dt=2026-11-22", lease_token=taker.token).write_rows(segment("v", 0, last=True), "taker")

    monkeypatch.setattr("pipeline.commit.ledger.crash_point", take_over_while_stalled)
    writer = Ledger(fs, base, "dt=2026-11-21", lease_token=stalled.token)
    with pytest.raises(LeaseLost, match="no longer this run's"):
        writer.write_rows(segment("v", 0, last=True), "stalled")
    (taker,) = taken
    try:
        ledger = Ledger(fs, base)
        late, current = (f"{base}/dt=2026-11-2{night}/part-{key}.parquet" for night in (1, 2))
        assert ledger.part_files() == [late, current]  # it landed: a glob reads the video twice until a reconcile
        assert [m.epoch for m in ledger.record.all_markers()] != [m.epoch for m in ledger.record.markers()]
        entry = ledger.entry(key)
        assert entry is not None and (entry.run_id, entry.file) == ("taker", f"dt=2026-11-22/part-{key}.parquet")
        assert ledger.result_files() == [current] and ledger.run_entries("stalled") == []
        ledger.compact([entry])  # the taker's compaction folds its own marker, never the late one
        assert ledger.committed() == {key: "ok"} and ledger.result_files() == [current]
        assert ledger.reconcile(taker.token) == [f"dt=2026-11-21/part-{key}.parquet"]  # the next run's
        assert ledger.part_files() == [current] and ledger.record.all_markers() == []
        assert ledger.entry(key) == entry
    finally:
        taker.release()
        stalled.release()


def test_a_writer_that_loses_its_lease_after_its_marker_deletes_nothing(
    output: tuple[pafs.FileSystem, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried video's commit whose lease is taken over right after its marker: its second check stops it
    before it deletes the old part file or its staging. Its marker landed before the taker listed the markers,
    so it counts (as a commit just before the takeover would), and the taker's reconcile deletes the old file."""
    fs, base = output
    key = ledger_key(CONFIG_KEY, "v", ["q"])
    (old,) = Ledger(fs, base, "dt=2026-11-20").write_rows(segment("v", None, last=True, error=True), "r0")
    stalled = OutputLease(fs, base, "stalled").acquire()
    stalled._stop.set()
    Ledger(fs, base).reconcile(stalled.token)
    taken: list[OutputLease] = []

    def take_over_after_the_marker(step: str) -> None:
        if step == "marker" and not taken:
            expired = {**(lease_document(fs, base) or {}), "expires_at": "2000-01-01T00:00:00+00:00"}
            with fs.open_output_stream(f"{base}/_lease") as f:
                f.write(json.dumps(expired).encode())
            taken.append(OutputLease(fs, base, "taker").acquire())

    monkeypatch.setattr("pipeline.commit.ledger.crash_point", take_over_after_the_marker)
    writer = Ledger(fs, base, "dt=2026-11-21", lease_token=stalled.token)
    with pytest.raises(LeaseLost, match="no longer this run's"):
        writer.write_rows(segment("v", 0, last=True), "stalled", replaces={key: old.file})
    (taker,) = taken
    try:
        ledger = Ledger(fs, base)
        assert fs.get_file_info(f"{base}/{old.file}").type == pafs.FileType.File  # not deleted after the loss
        assert ledger.files.list_files(f"{base}/_staging/{key}", recursive=True) != []
        assert ledger.reconcile(taker.token) == [old.file]  # the taker's: the marker counts, the old file goes
        entry = ledger.entry(key)
        assert entry is not None and (entry.run_id, entry.status) == ("stalled", "ok")
        assert ledger.result_files() == ledger.part_files() == [f"{base}/dt=2026-11-21/part-{key}.parquet"]
    finally:
        taker.release()
        stalled.release()


def test_an_epoch_is_switched_only_from_the_one_read(output: tuple[pafs.FileSystem, str]) -> None:
    """Of two runs that read the same epoch and switch away from it, the second fails (If-Match on S3, the
    content's hash under flock locally) and the first one's epoch stays."""
    fs, base = output
    record = Ledger(fs, base).record
    record.open_epoch("0" * 16)
    listing = record.all_markers

    def listing_while_another_run_switches() -> list[Marker]:
        Ledger(fs, base).record.open_epoch("1" * 16)
        return listing()

    record.all_markers = listing_while_another_run_switches  # type: ignore[method-assign]
    with pytest.raises(LeaseLost, match="changed while this run opened its epoch 2222222222222222"):
        record.open_epoch("2" * 16)
    assert Ledger(fs, base).record.current_epoch() == "1" * 16
