"""`python -m jobs.benchmark pipeline --stand-in` at a tiny size: the report's fields and their sanity, not speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main


@pytest.mark.slow  # 16 s here (2 cores): stand-in Ray runs at 1 and 2 accelerators
@pytest.mark.usefixtures("pipeline_ray")
def test_stand_in_benchmark_reports_throughput_bound_busy_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "standin.json"
    argv = ["pipeline", "--stand-in", "--out", str(out), "--accelerators", "1", "2", "--synthetic", "1"]
    argv += ["--synthetic-seconds", "4", "--real", "1", "--copies", "1", "--segment-seconds", "2", "--frame-size", "64"]
    argv += ["--stand-in-ms-per-segment", "20", "--batch-size", "2", "--decode-cpus", "0.5", "--sample-seconds", "0.2"]
    main(argv)
    report = json.loads(out.read_text())
    raw = report["raw_decode"]
    assert raw["segments"] == 2 + 5 and raw["cpu_s"] > 0  # 4 s at 2 s segments; the 10.4 s MKV: 5
    assert [run["accelerators"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["videos"] == 2 and run["segments"] == 7 and run["duplicates"] == run["error_rows"] == 0
        assert run["stand_in_rows"] == run["rows"] == 2 * 7  # a caption and one answer per segment
        assert run["accelerator_capacity"] == pytest.approx(run["accelerators"] * 1000 / 20, rel=1e-3)
        assert run["bound"] == min(run["decode_capacity"], run["accelerator_capacity"]) > 0
        assert run["segments_per_s_steady"] > 0 and run["of_bound"] > 0
        assert 1 <= len(run["busy"]) <= run["accelerators"]
        assert all(0 < busy <= 1 for busy in run["busy"].values())
        assert 0 < run["first_batch_s"] < run["wall_s"]
        assert run["cpu_s"] > 0 and run["cpu_s_per_segment"] == pytest.approx(run["cpu_s"] / 7, abs=1e-3)
        assert run["of_raw_decode"] == pytest.approx(run["cpu_s_per_segment"] / raw["cpu_s_per_segment"], rel=0.01)
        assert run["steady_cpu_s_per_segment"] > 0 and run["steady_of_raw_decode"] > 0
        memory = run["memory"]
        assert memory["samples"] and memory["driver_mib_peak"] > 0 and memory["workers_mib_peak"] > 0
