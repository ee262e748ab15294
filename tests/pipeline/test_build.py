"""The Ray chain end to end on real clips (local Ray, 2 CPUs; moto S3): rows, reruns, interrupted runs."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import s3fs

from jobs import caption
from jobs.common import run_cli
from pipeline import run
from pipeline.build import build_dataset
from pipeline.commit.ledger import Ledger
from pipeline.run import PipelineError, run_pipeline
from pipeline.stages.decode import decode_rows, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.sources import list_sources
from tests.pipeline.runs import make_config, read_rows

S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials (tests/conftest.py)
BROKEN_CLIP = "broken_truncated.mp4"  # made by the pipeline_videos fixture
# Segments of 5 s: the 10.4 s mkv gives 2, the 6.6 s avi and the 5.0 s webm 1 each (short tails merge).
SEGMENTS = {"decord_flipping_a_pancake.mkv": 2, "mmaction2_test.avi": 1, "gradio_video_sample.webm": 1}


def assert_exactly_once(rows: list[dict[str, Any]]) -> None:
    """Every (video, segment, task, question) once; every clip complete; the broken file one error row."""
    counts = Counter((r["source_uri"], r["segment_index"], r["task"], r["question"]) for r in rows)
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    per_clip = Counter(Path(r["source_uri"]).name for r in rows)
    assert per_clip == {**{name: 2 * n for name, n in SEGMENTS.items()}, BROKEN_CLIP: 1}


@pytest.mark.slow  # 8 s with its fixture here (2 cores): two Ray runs
def test_end_to_end_local_then_a_rerun_writes_nothing(
    pipeline_ray: None, pipeline_videos: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    config = make_config(str(pipeline_videos), str(tmp_path / "out"), pipeline_model_dir)
    summary = run_pipeline(config)
    assert (summary.seen, summary.skipped, summary.processed, summary.failed) == (4, 0, 4, 1)
    assert (summary.rows, summary.uncommitted, summary.error_classes) == (9, 0, {"CorruptMedia": 1})
    rows = read_rows(config)
    assert_exactly_once(rows)
    for row in rows:
        if row["source_uri"].endswith(BROKEN_CLIP):
            assert (row["status"], row["error_class"], row["segment_index"]) == ("error", "CorruptMedia", None)
            assert row["error_message"]
            continue
        assert row["status"] == "ok" and row["error_class"] is None and isinstance(row["answer"], str)
        ts = row["frame_timestamps_s"]
        assert len(ts) == 2 and row["segment_start_s"] <= ts[0] < ts[1] <= row["segment_end_s"] <= row["duration_s"]
        assert row["visual_tokens_in"] == 2 * 65 and 0 < row["equivalent_tokens"] < row["visual_tokens_in"]
        assert 0 < row["prefill_flops"] < row["dense_prefill_flops"] and row["latency_ms"] > 0
        assert (row["run_id"], row["sparse_preset"], row["model_id"]) == (
            config.run_id,
            config.sparse.name,
            config.model,
        )
    output = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    assert len(before) == 4 and (output / "_runs" / f"{config.run_id}.json").exists()

    again = run_pipeline(config.replace(run_id="rerun"))
    assert (again.seen, again.skipped, again.processed, again.rows) == (4, 4, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")} == before


@pytest.mark.slow  # 6 s here (2 cores): interrupted and resumed Ray runs on S3
def test_s3_in_s3_out_resumes_an_interrupted_run_exactly_once(
    pipeline_ray: None, pipeline_videos: Path, pipeline_model_dir: Path, s3_server: str
) -> None:
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir("in-videos")
    fs.mkdir("out-results")
    for path in sorted(pipeline_videos.iterdir()):
        fs.put(str(path), f"in-videos/clips/{path.name}")
    config = make_config(
        "s3://in-videos/clips",
        "s3://out-results/captions",
        pipeline_model_dir,
        s3_endpoint_url=s3_server,
        s3_options={"key": S3_KEY, "secret": S3_SECRET},
        run_id="killed",
    )
    # What a run killed in the middle leaves on S3, made by the same stage code outside Ray: the broken clip
    # committed; the avi's part file written but not its marker; the mkv with only its first segment staged;
    # the webm never reached.
    ledger = Ledger(*config.output.filesystem())
    predictor = Predictor(config.model_settings, config.answering)
    items = {
        Path(s.uri).name: source_row(s, config.config_key(), config.questions)
        for s in list_sources(config.input_uri, fs)
    }
    results = {
        name: predictor(pa.Table.from_pylist(list(decode_rows(items[name], config.decoding, 64)))) for name in items
    }
    ledger.write_rows(results[BROKEN_CLIP], "killed")
    (avi,) = ledger.write_rows(results["mmaction2_test.avi"], "killed")
    fs.rm(f"out-results/captions/_ledger/{avi.key}.ok.json")
    mkv = results["decord_flipping_a_pancake.mkv"]
    assert ledger.write_rows(mkv.filter(pc.equal(mkv["segment_index"], 0)), "killed") == []
    assert len(read_rows(config)) == 1 + 2  # readers see whole videos only

    resumed = run_pipeline(config.replace(run_id="resume"))
    assert (resumed.seen, resumed.skipped, resumed.processed, resumed.failed, resumed.rows) == (4, 1, 3, 0, 8)
    rows = read_rows(config)
    assert_exactly_once(rows)
    assert Counter(r["run_id"] for r in rows) == {"killed": 1, "resume": 8}
    assert not fs.exists("out-results/captions/_staging") or not fs.ls("out-results/captions/_staging")
    assert len(ledger.part_files()) == 4 and len(ledger.committed()) == 4


def test_the_chain_keeps_decoding_out_of_the_model_actors(
    pipeline_ray: None, pipeline_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(str(tmp_path), str(tmp_path / "out"), pipeline_model_dir)
    build_dataset(config, [{"ledger_key": "k"}], frame_size=64).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[FlatMap(decode_rows)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(Predictor)]" in optimized


def test_fails_fast_when_the_model_cannot_load(pipeline_videos: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "video_llava"}')
    (tmp_path / "model" / "pytorch_model.bin").write_bytes(b"pickle")
    config = make_config(str(pipeline_videos), str(tmp_path / "out"), tmp_path / "model")
    with pytest.raises(PipelineError, match="only pickled weights"):
        run_pipeline(config)
    record = only_the_run_record(tmp_path / "out", config.run_id)  # nothing else written, Ray never started
    assert (record["status"], record["error_class"], record["seen"]) == ("failed", "PipelineError", 0)
    assert "only pickled weights" in record["error_message"]


def test_fails_fast_when_nothing_decodes(pipeline_model_dir: Path, tmp_path: Path) -> None:
    for name in ("a.mp4", "b.mkv"):
        (tmp_path / name).write_bytes(b"\x00" * 4096)
    config = make_config(str(tmp_path), str(tmp_path / "out"), pipeline_model_dir)
    with pytest.raises(PipelineError, match=r"none of the 2 pending videos decodes.*a\.mp4"):
        run_pipeline(config)
    record = only_the_run_record(tmp_path / "out", config.run_id)  # nothing else written, Ray never started
    assert (record["status"], record["seen"], record["processed"], record["uncommitted"]) == ("failed", 2, 0, 2)
    assert record["error_message"].startswith("none of the 2 pending videos decodes")


def only_the_run_record(output: Path, run_id: str) -> dict[str, Any]:
    """The run record, after checking that it, its page and the run's lease epoch (opened by the reconcile under
    the lease, before anything else: pipeline/commit/ledger_index.py) are the only files under ``output``."""
    files = sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file())
    assert files == [Path("_ledger/_epoch"), Path(f"_runs/{run_id}.html"), Path(f"_runs/{run_id}.json")]
    return json.loads((output / "_runs" / f"{run_id}.json").read_text())


def test_a_run_stopped_after_some_commits_records_them(
    pipeline_videos: Path, pipeline_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped (here by Ctrl-C) once the first video is committed, the run still leaves its record."""
    config = make_config(str(pipeline_videos), str(tmp_path / "out"), pipeline_model_dir, run_id="stopped")

    def commit_one_then_stop(address: str | None, metrics_port: int | None) -> None:  # Ray: one video, then ^C
        (source,) = [s for s in list_sources(config.input_uri) if s.uri.endswith("mmaction2_test.avi")]
        rows = list(decode_rows(source_row(source, config.config_key(), config.questions), config.decoding, 64))
        Ledger(*config.output.filesystem()).write_rows(
            Predictor(config.model_settings, config.answering)(pa.Table.from_pylist(rows)), config.run_id
        )
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "init_ray", commit_one_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    record = json.loads((tmp_path / "out" / "_runs" / "stopped.json").read_text())
    assert (record["status"], record["error_class"]) == ("failed", "KeyboardInterrupt")
    assert (record["seen"], record["processed"], record["rows"], record["uncommitted"]) == (4, 1, 2, 3)
    page = (tmp_path / "out" / "_runs" / "stopped.html").read_text()  # its page too, with what it committed
    assert '<span class="badge failed" id="run-status">failed</span>' in page and "<b>KeyboardInterrupt</b>" in page
    assert page.count('<section class="sample">') == 1 and "mmaction2_test.avi" in page and "data:image/jpeg" in page


@pytest.mark.parametrize("where", ["below-a-file", "missing-bucket"])
def test_an_unwritable_output_fails_in_seconds_before_ray(
    where: str,
    pipeline_videos: Path,
    pipeline_model_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_ray(address: str | None, metrics_port: int | None) -> None:
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(run, "init_ray", no_ray)
    argv = ["--input", str(pipeline_videos), "--model", str(pipeline_model_dir), "--frames", "1"]
    if where == "below-a-file":
        (tmp_path / "file").write_text("not a folder")
        output = str(tmp_path / "file" / "out")
    else:
        output = "s3://no-such-bucket/out"
        argv += ["--s3-endpoint-url", request.getfixturevalue("s3_server")]
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: caption.main([*argv, "--output", output]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and time.monotonic() - start < 20
    assert err.startswith(f"error: the output {output} is not writable (") and "choose another --output" in err


@pytest.mark.slow  # 8 s here (2 cores): two Ray runs
def test_a_video_retried_into_another_partition_replaces_its_old_rows(
    pipeline_ray: None, pipeline_videos: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy2(pipeline_videos / "mmaction2_test.avi", videos / "mmaction2_test.avi")
    output = tmp_path / "out"
    night1 = make_config(
        str(videos), str(output), pipeline_model_dir, partition="dt=2026-11-21", max_duration_s=1.0, preflight_videos=0
    )
    with pytest.raises(PipelineError, match="every one of the 1 processed videos failed"):
        run_pipeline(night1)  # too long for night 1's guard: committed as an error row in dt=2026-11-21
    assert [r["error_class"] for r in read_rows(night1)] == ["TooLarge"]

    night2 = night1.replace(partition="dt=2026-11-22", max_duration_s=None, retry_errors=True)
    summary = run_pipeline(night2)
    assert summary.processed == 1 and len(summary.replaced) == 1
    assert summary.replaced[0].startswith("dt=2026-11-21/part-")
    rows = read_rows(night2)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2 * SEGMENTS["mmaction2_test.avi"]
    assert not list((output / "dt=2026-11-21").glob("part-*"))
