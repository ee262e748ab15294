"""The jobs' command line: help with defaults, errors that name flags, exit codes, JSON logs, --dry-run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import caption, index_archive
from jobs.common import CONFIG_FLAGS, RUN_FAILED, USAGE_ERROR, HelpFormatter, config_from_args, run_cli
from jobs.logs import configure_logging
from pipeline.commit.lease import LeaseHeld
from pipeline.config import PipelineConfig
from pipeline.run import PipelineError
from pipeline.stages.shots import ShotSegmenting
from sparsevlm.engine_types import CheckpointError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _text_logs() -> object:
    yield
    configure_logging("text")  # a test that switched to JSON leaves the next ones plain


@pytest.mark.parametrize("job", [caption, index_archive])
def test_help_shows_every_default_and_every_flag_has_help(job: object) -> None:
    parser: argparse.ArgumentParser = job.build_parser()  # type: ignore[attr-defined]
    formatter = HelpFormatter(parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.option_strings} has no help text"
        text = formatter._get_help_string(action)
        assert action.required or "default" in text, f"{action.option_strings}: {text!r} says no default"
    shown = parser.format_help()
    assert "--segment-seconds SEGMENT_SECONDS" in shown and "(default: 10.0)" in shown
    assert "(default: 0, exit at once with code 1)" in shown  # --wait-for-lease, a default said in words
    assert "exit codes:" in shown and f"  {RUN_FAILED}  the run failed" in shown
    assert f"  {USAGE_ERROR}  the command line is wrong" in shown


def test_every_config_flag_exists_and_sets_its_field() -> None:
    dests = {a.dest for a in caption.build_parser()._actions}
    assert set(CONFIG_FLAGS.values()) <= dests
    assert set(CONFIG_FLAGS) <= {f for f in PipelineConfig.__dataclass_fields__}


def test_segment_flags_set_the_config(tmp_path: Path) -> None:
    base = ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--ray-address", "127.0.0.1:1", "--dry-run"]
    parser = caption.build_parser()
    fixed = config_from_args(parser.parse_args(base))
    assert fixed.shots is None and fixed.segment_seconds == 10.0
    shots = config_from_args(parser.parse_args([*base, "--segment-by", "shots", "--max-segment-seconds", "20"]))
    assert shots.shots == ShotSegmenting(max_segment_seconds=20.0) and shots.segment_by == "shots"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "--workers must be an int >= 1, got 0"),
        (["--frames", "0"], "--frames must be an int >= 1, got 0"),
        (["--batch-size", "-2"], "--batch-size must be an int >= 1, got -2"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker must be > 0, got 0.0"),
        (["--io-retries", "-1"], "--io-retries must be an int >= 0, got -1"),
        (["--segment-seconds", "-5"], "--segment-seconds must be > 0 or 0 (whole video), got -5.0"),
        (["--preset", "video-11"], "unknown --preset 'video-11'; known presets: dense,"),
        (["--run-id", "a/b"], "--run-id names the file _runs/<run_id>.json"),
        (["--question", "a", "--question", " "], "--question must be non-empty strings"),
        (["--segment-by", "shots", "--shot-threshold", "0"], "--shot-threshold must be a number > 0, got 0.0"),
        (
            ["--segment-by", "shots", "--min-segment-seconds", "4", "--max-segment-seconds", "6"],
            "--max-segment-seconds must be at least twice min_segment_seconds (4.0), got 6.0",
        ),
        (["--min-segment-seconds", "4"], "--min-segment-seconds apply to --segment-by shots only"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--input", str(tmp_path), "--output", str(tmp_path / "out"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: caption.main(argv))
    assert exit_info.value.code == USAGE_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "out").exists()


def _raise(err: BaseException) -> dict[str, object]:
    raise err


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (ValueError("--date must be YYYY-MM-DD"), USAGE_ERROR),
        (CheckpointError("not a checkpoint"), USAGE_ERROR),
        (PipelineError("the Ray job failed: boom"), RUN_FAILED),
        (LeaseHeld("run 'x' holds the output lease"), RUN_FAILED),
        (PermissionError("denied"), RUN_FAILED),
        (RuntimeError("unexpected"), RUN_FAILED),
    ],
)
def test_usage_errors_exit_2_and_run_failures_exit_1(
    err: BaseException, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: _raise(err))
    assert exit_info.value.code == code
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_a_run_failure_that_wraps_an_input_or_model_problem_is_a_usage_error() -> None:
    try:
        raise PipelineError("cannot read a model config") from CheckpointError("cannot read a model config")
    except PipelineError as wrapped:
        err = wrapped
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: _raise(err))
    assert exit_info.value.code == USAGE_ERROR


def test_log_format_json_writes_one_object_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--log-format", "json", "--workers", "0"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: caption.main(argv))
    assert exit_info.value.code == USAGE_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["exit_code"] == USAGE_ERROR
    assert record["message"] == "--workers must be an int >= 1, got 0"

    configure_logging("json")
    try:
        raise OSError("disk gone")
    except OSError:
        logging.getLogger("pipeline.build").warning("progress %d/%d", 1, 2, extra={"fields": {"videos_done": 1}})
        logging.getLogger("pipeline.build").exception("failed")
    first, second = (json.loads(x) for x in capsys.readouterr().err.strip().splitlines())
    assert (first["logger"], first["level"], first["message"], first["videos_done"]) == (
        "pipeline.build",
        "WARNING",
        "progress 1/2",
        1,
    )
    assert "OSError: disk gone" in second["exc_info"]  # the traceback inside the record: still one line


def test_dry_run_starts_no_ray_and_writes_nothing(assets: Path, tmp_path: Path) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    for name in ("gradio_video_sample.webm", "mmaction2_test.avi"):
        (videos / name).write_bytes((assets / name).read_bytes())
    probe = (
        "import json, sys; from jobs import caption; "
        f"plan = caption.main(['--input', {str(videos)!r}, '--output', {str(out)!r}, '--dry-run', "
        "'--question', 'what?', '--segment-seconds', '0', '--log-format', 'json']); "
        "print(json.dumps({'plan': plan, 'ray': 'ray' in sys.modules and sys.modules['ray'].is_initialized()}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    plan = result["plan"]
    assert result["ray"] is False and not out.exists()
    assert (plan["seen"], plan["new"], plan["done"], plan["to_process"]) == (2, 2, 0, 2)
    assert plan["bytes_to_read"] == sum(p.stat().st_size for p in videos.iterdir())
    estimate = plan["estimate"]
    # the bundled tiny model: 8 frames x 65 tokens, video-25 keeps a quarter; one segment per video, 2 prompts
    assert estimate["visual_tokens_per_segment"] == 8 * 65 and estimate["kept_fraction"] == pytest.approx(0.25, 0.02)
    assert estimate["prompts_per_segment"] == 2 and estimate["prompts_to_run"] == 4
    assert 0 < estimate["prefill_flops_per_segment"] < estimate["dense_prefill_flops_per_segment"]
    assert [v["state"] for v in plan["videos"]] == ["new", "new"]
