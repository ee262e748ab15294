"""`python -m jobs.benchmark pipeline`: Ray pipeline vs plain loop, at a size that only proves it works."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.benchmark.cli import main
from pipeline.harness.benchmark import measure_rows


def _rows(batches: list[tuple[float, float, int]]) -> pa.Table:
    """Result rows of model batches given as (end epoch s, latency ms, rows), one video per batch."""
    ids, segments, latencies, created = [], [], [], []
    for i, (end, latency, count) in enumerate(batches):
        for j in range(count):
            ids.append(f"v{i}")
            segments.append(j)
            latencies.append(latency)
            created.append(dt.datetime.fromtimestamp(end, dt.UTC))
    return pa.table(
        {
            "video_id": ids,
            "segment_index": segments,
            "latency_ms": latencies,
            "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
        }
    )


def test_steady_state_window_and_busy_time_come_from_the_batches() -> None:
    # Batch 1 runs 100.0-100.5 s, batch 2 runs 101.0-102.0 s: window 2 s, busy 1.5 s.
    table = _rows([(100.5, 500.0, 2), (102.0, 1000.0, 3)])
    measure = measure_rows("ray", table, wall_s=10.0)
    assert measure.window_s == pytest.approx(2.0)
    assert measure.busy_s == pytest.approx(1.5)
    assert measure.busy_fraction == pytest.approx(0.75)
    assert (measure.videos, measure.segments, measure.batches) == (2, 5, 2)
    assert measure.segments_per_s_steady == pytest.approx(2.5)
    assert measure.startup_s == pytest.approx(8.0)


def test_a_run_without_model_batches_is_refused() -> None:
    table = _rows([(100.0, 1.0, 1)]).set_column(2, "latency_ms", pa.array([None], pa.float64()))
    with pytest.raises(ValueError, match="no row came from a model batch"):
        measure_rows("loop", table, wall_s=1.0)


@pytest.mark.slow  # 10 s here (2 cores): the plain loop and a Ray run
@pytest.mark.usefixtures("pipeline_ray")
def test_pipeline_benchmark_command(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    main(["pipeline", "--out", str(out), "--synthetic", "2", "--real", "1", "--copies", "1"])
    report = json.loads(out.read_text())
    for mode in ("loop", "ray"):
        assert report[mode]["videos"] == 3
        assert 0 < report[mode]["busy_fraction"] <= 1.0
        assert report[mode]["window_s"] <= report[mode]["wall_s"]
    assert report["ray"]["segments"] == report["loop"]["segments"]
    assert report["steady_state_ratio"] > 0
    assert report["decode"][0]["segments"] >= 1 and report["decode"][0]["ours_ms_per_segment"] > 0
