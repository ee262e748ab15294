"""The caption and nightly index jobs end to end on local Ray, and their clean errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from jobs import caption, index_archive
from jobs.common import config_from_args, run_cli
from pipeline.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]

CLIPS = ("gradio_video_sample.webm", "mmaction2_test.avi")  # 5 s VP9/WebM, 6.6 s MPEG-4/AVI: one segment each
FAST = ["--frames", "2", "--max-new-tokens", "3", "--question", "what happens?"]


def _videos(assets: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in CLIPS:
        shutil.copy(assets / name, folder / name)
    return folder


@pytest.mark.slow  # 5 s here (2 cores): a run of the job and its rerun
@pytest.mark.usefixtures("pipeline_ray")
def test_caption_writes_rows_then_skips_on_rerun(assets: Path, pipeline_model_dir: Path, tmp_path: Path) -> None:
    videos, out = _videos(assets, tmp_path / "in"), tmp_path / "out"
    argv = ["--input", str(videos), "--output", str(out), "--model", str(pipeline_model_dir), *FAST]
    first = caption.main(argv)
    assert (first["seen"], first["processed"], first["skipped"], first["failed"]) == (2, 2, 0, 0)
    table = ds.dataset(out, format="parquet").to_table()
    assert table.num_rows == 2 * 2  # a caption and one answer per (single-segment) video
    assert sorted(set(table["task"].to_pylist())) == ["caption", "qa"]
    second = caption.main(argv)
    assert (second["processed"], second["skipped"]) == (0, 2)
    assert ds.dataset(out, format="parquet").to_table().num_rows == 4

    # --dry-run reads the same ledger: a touched video is "changed", another one "new", the rest "done".
    touched = videos / CLIPS[0]
    os.utime(touched, (touched.stat().st_atime, touched.stat().st_mtime + 60))
    shutil.copy(assets / "decord_flipping_a_pancake.mkv", videos / "new.mkv")
    plan = caption.main([*argv, "--dry-run"])
    states = {Path(v["source_uri"]).name: v["state"] for v in plan["videos"]}
    assert states == {CLIPS[0]: "changed", CLIPS[1]: "done", "new.mkv": "new"}
    assert (plan["seen"], plan["to_process"], plan["bytes_to_read"]) == (
        3,
        2,
        touched.stat().st_size + (videos / "new.mkv").stat().st_size,
    )
    assert ds.dataset(out, format="parquet").to_table().num_rows == 4  # a dry run writes nothing


@pytest.mark.slow  # 12 s here (2 cores): three nightly runs of the job
@pytest.mark.usefixtures("pipeline_ray")
def test_index_archive_processes_only_new_or_changed_videos(
    assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    videos, out = _videos(assets, tmp_path / "archive"), tmp_path / "index"
    argv = ["--input", str(videos), "--output", str(out), "--model", str(pipeline_model_dir), *FAST]
    night1 = index_archive.main([*argv, "--date", "2026-11-21"])
    assert (night1["seen"], night1["processed"], night1["skipped"]) == (2, 2, 0)
    rows = ds.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()  # the figures, from the rows
    ok = [r for r in rows if r["status"] == "ok"]
    hours = sum({r["video_id"]: r["duration_s"] for r in rows}.values()) / 3600
    assert night1["video_hours"] == pytest.approx(hours, abs=1e-4) and night1["video_hours"] > 0
    assert night1["mean_equivalent_tokens"] == pytest.approx(
        sum(r["equivalent_tokens"] for r in ok) / len(ok), abs=0.01
    )
    assert night1["mean_visual_tokens_in"] == pytest.approx(sum(r["visual_tokens_in"] for r in ok) / len(ok), abs=0.01)
    manifest = json.loads((out / "_runs" / f"{night1['run_id']}.json").read_text())
    assert all(isinstance(manifest[k], int) for k in ("seen", "processed", "skipped", "failed"))
    assert (out / "dt=2026-11-21").is_dir()

    night2 = index_archive.main([*argv, "--date", "2026-11-22"])
    assert (night2["processed"], night2["skipped"]) == (0, 2)

    touched = videos / CLIPS[0]
    os.utime(touched, (touched.stat().st_atime, touched.stat().st_mtime + 60))  # a new version of one video
    night3 = index_archive.main([*argv, "--date", "2026-11-23"])
    assert (night3["processed"], night3["skipped"]) == (1, 1)
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert sorted(set(table["dt"].to_pylist())) == ["2026-11-21", "2026-11-23"]
    assert table.num_rows == 3 * 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "ftp://host/x", "--output", "/tmp/o"], "scheme 'ftp' is not supported"),
        (["--input", ".", "--output", "/tmp/o", "--preset", "video-11"], "unknown --preset 'video-11'"),
        (["--input", ".", "--output", "/tmp/o", "--model", "/tmp"], "not a Hugging Face checkpoint"),
        (["--input", ".", "--output", "/tmp/o", "--questions-file", "/nope.txt"], "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "o") if a == "/tmp/o" else a for a in argv]  # a failed run leaves its record there
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: caption.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_index_archive_rejects_a_bad_date(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(lambda: index_archive.main(["--input", ".", "--output", "/tmp/o", "--date", "22/11/2026"]))
    assert "--date must be YYYY-MM-DD" in capsys.readouterr().err


def test_unreachable_storage_and_missing_credentials(
    pipeline_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    argv = ["--input", "s3://bucket/videos/", "--output", str(tmp_path / "o"), "--model", str(pipeline_model_dir)]
    with pytest.raises(SystemExit):  # nothing listens on this port
        run_cli(lambda: caption.main([*argv, "--s3-endpoint-url", "http://127.0.0.1:9"]))
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("extra", "loopback"), [([], True), (["--ray-address", "10.0.0.1:6379"], False)])
def test_a_job_that_starts_its_own_ray_keeps_it_on_loopback(extra: list[str], loopback: bool) -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import: the job sets it before anything imports
    Ray, and only when it will start Ray itself (a cluster's driver must announce its real address)."""
    probe = (
        "from jobs.caption import build_parser; from jobs.common import config_from_args; "
        f"config_from_args(build_parser().parse_args(['--input', '/tmp', '--output', '/tmp/out', *{extra!r}])); "
        "from ray._private import ray_constants; print(ray_constants.ENABLE_RAY_CLUSTER)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == str(not loopback)


def test_dtype_and_max_new_tokens_flags(capsys: pytest.CaptureFixture[str]) -> None:
    ns = caption.build_parser().parse_args(["--input", ".", "--output", "/tmp/o"])
    assert (ns.dtype, ns.max_new_tokens) == ("auto", 64)
    assert PipelineConfig.max_new_tokens == 64  # one default for the CLI and the library config
    config = config_from_args(
        caption.build_parser().parse_args(["--input", ".", "--output", "/tmp/o", "--dtype", "float16"])
    )
    assert config.dtype == "float16"
    with pytest.raises(SystemExit) as exit_info:
        caption.build_parser().parse_args(["--input", ".", "--output", "/tmp/o", "--dtype", "fp16"])
    assert exit_info.value.code == 2
    assert "--dtype: invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"dtype must be one of auto, bfloat16, float16, float32, got 'half'"):
        PipelineConfig(input_uri=".", output_uri="/tmp/o", model="m", dtype="half")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_wait_for_lease_must_be_seconds_at_least_zero(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = caption.build_parser()
    assert parser.parse_args(["--input", ".", "--output", "o", "--wait-for-lease", "30"]).wait_for_lease == 30.0
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--input", ".", "--output", "o", "--wait-for-lease", value])
    assert exit_info.value.code == 2
    assert "--wait-for-lease: expected" in capsys.readouterr().err
