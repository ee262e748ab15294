"""`python -m jobs.benchmark load` and the memory sampler it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from pipeline.harness.memory import (
    MemorySample,
    TreeMemorySampler,
    cpu_seconds_between,
    growth,
    process_tree,
    pss_bytes,
)


def test_the_tree_holds_children_and_grandchildren() -> None:
    sleep = "import time; time.sleep(30)"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleep!r}]); {sleep}"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            below = process_tree(child.pid)
            if len(below) >= 2:
                break
            subprocess.run(["sleep", "0.05"])
        assert below[0] == child.pid and len(below) == 2  # the child, then the grandchild it started
        assert child.pid in process_tree(os.getpid()) and below[1] in process_tree(os.getpid())
        assert pss_bytes(child.pid) > 0
    finally:
        for pid in process_tree(child.pid)[::-1]:
            os.kill(pid, 9)
        child.wait()
    assert pss_bytes(child.pid) == 0  # gone: no error


def _samples(totals: list[int]) -> list[MemorySample]:
    return [MemorySample(float(t), total, 1, total) for t, total in enumerate(totals)]


def test_growth_compares_after_warm_up_with_the_end() -> None:
    # 16 samples over 15 s: warm-up 0-3.75 s, early window 3.75-7.5 s (100), late window >= 11.25 s (110).
    totals = [50, 60, 70, 80, 100, 100, 100, 100, 105, 105, 105, 105, 110, 110, 110, 110]
    assert growth(_samples(totals)) == pytest.approx(0.10)
    assert growth(_samples([100] * 16)) == 0.0


def test_cpu_seconds_between_two_times_reads_between_the_samples() -> None:
    samples = [MemorySample(t, 1, 1, 1, cpu_s=cpu) for t, cpu in [(0.0, 0.0), (1.0, 2.0), (3.0, 3.0)]]
    assert cpu_seconds_between(samples, 0.5, 2.0) == pytest.approx(2.5 - 1.0)  # 1.0 at 0.5 s, 2.5 at 2 s
    assert cpu_seconds_between(samples, -5.0, 10.0) == 3.0  # clamped to the first and the last sample
    with pytest.raises(ValueError, match="start_s <= end_s"):
        cpu_seconds_between(samples, 2.0, 1.0)


def test_growth_needs_a_trend_worth_the_name() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        growth(_samples([1, 2, 3]))


def test_a_failing_sampler_reports_its_error() -> None:
    with (
        pytest.raises(ProcessLookupError, match="no such process"),
        TreeMemorySampler(os.getpid(), period_s=0.05, read=_broken),
    ):
        subprocess.run(["sleep", "0.2"])


def _broken(pid: int) -> int:
    raise ProcessLookupError(f"no such process {pid}")


def test_the_sampler_records_until_the_block_ends() -> None:
    with TreeMemorySampler(os.getpid(), period_s=0.05) as sampler:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5)"])
    count = len(sampler.samples)
    assert count >= 3 and all(s.total_bytes > 0 and s.processes >= 1 for s in sampler.samples)
    with pytest.raises(ValueError, match="period_s"), TreeMemorySampler(os.getpid(), period_s=0):
        pass


def test_the_sampler_counts_the_cpu_time_of_the_tree_during_the_block() -> None:
    # A child burns 1 CPU-second, says "ready" and waits; the block starts on its tree, tells it to go, and it
    # burns 0.4 more, says "done" and sleeps. The block counts the 0.4 (its last look is taken when it ends), not
    # the second before it. The child is the root: the test process may have other children (a Ray fixture's).
    code = "\n".join(
        [
            "import sys, time",
            "def burn(s):",
            "    t = time.process_time()",
            "    while time.process_time() - t < s: pass",
            "burn(1.0)",
            "print('ready', flush=True)",
            "sys.stdin.readline()",
            "burn(0.4)",
            "print('done', flush=True)",
            "time.sleep(60)",
        ]
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        with TreeMemorySampler(child.pid, period_s=0.05) as sampler:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
    finally:
        child.kill()
        child.wait()
    cpu = sampler.samples[-1].cpu_s
    # The burn in the block (ticks of 10 ms, utime and stime each rounded down), not the second before it.
    assert 0.4 - 0.03 <= cpu < 0.4 + 0.3
    assert [s.cpu_s for s in sampler.samples] == sorted(s.cpu_s for s in sampler.samples)
    name, used = max(sampler.cpu_by_name.items(), key=lambda kv: kv[1])
    assert name.endswith(" -c") and used == pytest.approx(cpu)  # a Python program run with -c


@pytest.mark.slow  # 21 s here (2 cores): a Ray run of 12 videos and its rerun
@pytest.mark.usefixtures("pipeline_ray")
def test_load_benchmark_command(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    main(["load", "--out", str(out), "--videos", "12", "--sample-seconds", "0.2"])
    report = json.loads(out.read_text())
    assert report["rows"] == 2 * 12  # a caption and one answer per 1 s video
    assert report["duplicate_rows"] == report["error_rows"] == 0
    assert report["videos_with_rows"] == 12 and report["run"]["processed"] == 12
    assert report["rerun"] == {"wall_s": report["rerun"]["wall_s"], "skipped": 12, "processed": 0}
    memory = report["memory"]
    assert len(memory["samples"]) >= 8 and memory["pss_mib_peak"] >= memory["pss_mib_first"] > 0
    assert isinstance(memory["growth_after_warm_up"], float)
