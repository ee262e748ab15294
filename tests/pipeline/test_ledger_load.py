"""The ledger at the scale of the issue: 100,000 committed videos asked about 10,000 candidates, half done.

The test checks the answers at that scale, before and after compaction. It asserts no time (the machines are
shared and noisy); it prints how long ``pending`` took (run with ``-s``) and records it as junit properties
``pending_markers_s`` and ``pending_index_s``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.commit.ledger import Ledger, ledger_key
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.stages.sources import make_video_id

COMMITTED = 100_000
CANDIDATES = 10_000
CONFIG_KEY = "0123456789abcdef"


def committed_entry(i: int) -> LedgerEntry:
    """The commit record of video ``i``; every 10th one failed."""
    uri = f"/videos/{i:06d}.mp4"
    video_id = make_video_id(uri, 1000 + i, None, 1.7e9)
    key = ledger_key(CONFIG_KEY, video_id, [])
    error = i % 10 == 0
    return LedgerEntry(
        key=key,
        video_id=video_id,
        source_uri=uri,
        file=f"part-{key}.parquet",
        rows=1 if error else 3,
        segments=0 if error else 3,
        status="error" if error else "ok",
        error_classes=["CorruptMedia"] if error else [],
        run_id="load",
        committed_at="2026-11-22T00:00:00+00:00",
    )


def timed(call: Callable[[], list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


@pytest.mark.slow
def test_pending_over_100k_committed_videos(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    entries = [committed_entry(i) for i in range(COMMITTED)]
    markers = tmp_path / "_ledger"
    markers.mkdir()
    for entry in entries:  # the documented layout, written directly (write_rows would take minutes)
        (markers / f"{entry.key}.{entry.status}.json").write_text(json.dumps(vars(entry)))
    done = entries[::40] + entries[5::40]  # spread over the ledger; the first half failed
    new = [committed_entry(COMMITTED + i).key for i in range(CANDIDATES - len(done))]
    candidates = [key for pair in zip([e.key for e in done], new, strict=True) for key in pair]
    retried = set(new) | {e.key for e in done if e.status == "error"}
    expected, expected_retry = new, [k for k in candidates if k in retried]
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path))

    pending, markers_s = timed(lambda: ledger.pending(candidates))
    assert pending == expected and len(pending) == CANDIDATES // 2
    assert ledger.pending(candidates, retry_errors=True) == expected_retry

    ledger.compact(entries)
    assert not any(markers.glob("*.json")) and len(list((markers / "_index").glob("*.arrow"))) == 1
    pending, index_s = timed(lambda: ledger.pending(candidates))
    assert pending == expected
    assert ledger.pending(candidates, retry_errors=True) == expected_retry
    assert ledger.entry(done[0].key) == done[0] and ledger.entry(new[0]) is None

    record_property("pending_markers_s", round(markers_s, 3))
    record_property("pending_index_s", round(index_s, 3))
    print(
        f"\nLedger.pending({CANDIDATES:,} candidates) over {COMMITTED:,} committed videos, local disk: "
        f"{markers_s:.3f} s from markers, {index_s:.3f} s from the compacted index"
    )
