"""What the caption and index_archive jobs share: their flags, the flags-to-config step, and clean exits.

Exit codes (:data:`EXIT_CODES`, printed in every job's ``--help``): 0 the run finished; 1 the run failed
(storage unreachable or refusing, the output not writable, another run holding or taking over the output's
lease, no credentials, the model failing to load, the Ray job failing, every video failing); 2 the command
line is wrong (a flag's value, an unknown preset, an input URI or manifest that cannot name videos, a
``--model`` that is not a Video-LLaVA checkpoint). Either failure ends with one line naming the problem, and
names the flag when a flag's value is the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from jobs.flags import auto_or_count, fraction, non_negative
from jobs.logs import LOG_FORMATS, LOG_LEVELS, configure_logging, error_line, json_logging, route_ray_logs
from pipeline.config import PipelineConfig
from pipeline.error_lines import headline
from pipeline.observability.progress import PROGRESS_MODES
from pipeline.observability.quality import DEFAULT_SHADOW_FRACTION
from pipeline.ray_env import use_local_ray_env
from pipeline.stages.shots import SEGMENT_BY, ShotSegmenting
from pipeline.stages.video import DEFAULT_MAX_DECODE_S, DEFAULT_MAX_FRAMES
from sparsevlm.config import DEFAULT_PRESET, PRESETS, SparseConfig
from sparsevlm.engine_types import DTYPE_NAMES
from sparsevlm.tiny import BUNDLED_LABELS, BUNDLED_REPEAT_STOP, bundled_label

logger = logging.getLogger(__name__)

RUN_FAILED = 1
USAGE_ERROR = 2
EXIT_CODES = f"""exit codes:
  0  the run finished; its summary (or the --dry-run plan) is printed on stdout (one JSON line with
     --log-format json)
  {RUN_FAILED}  the run failed: storage unreachable or refusing, the output not writable, another run holding
     the output's lease, no credentials, the model failing to load, the Ray job failing, every video failing
  {USAGE_ERROR}  the command line is wrong: a flag's value, an unknown preset, an --input that names no videos or
     a manifest entry outside its folder, a --model that is not a Video-LLaVA checkpoint
  130, 143  interrupted (SIGINT / Ctrl-C, SIGTERM): the run's record is written and its lease released; a rerun
     resumes
"""

# PipelineConfig field -> the flag (argparse dest) that sets it: builds the config, and turns the config's
# errors, which name fields, into errors that name the flag the user typed.
CONFIG_FLAGS: dict[str, str] = {
    "input_uri": "input",
    "output_uri": "output",
    "model": "model",
    "questions": "question",
    "segment_seconds": "segment_seconds",
    "frames_per_segment": "frames",
    "max_new_tokens": "max_new_tokens",
    "repeat_stop": "repeat_stop",
    "dtype": "dtype",
    "sparse": "preset",  # SparseConfig.preset(--preset)
    "workers": "workers",
    "num_gpus_per_worker": "num_gpus_per_worker",
    "cpus_per_worker": "cpus_per_worker",
    "decode_cpus": "decode_cpus",
    "batch_size": "batch_size",
    "max_frames": "max_frames",
    "max_decode_seconds": "max_decode_seconds",
    "s3_endpoint_url": "s3_endpoint_url",
    "retry_errors": "retry_errors",
    "ray_address": "ray_address",
    "allow_prefixes": "allow_prefix",
    "io_retries": "io_retries",
    "preflight_videos": "preflight_videos",
    "run_id": "run_id",
    "shadow_fraction": "shadow_fraction",
    "summarize": "summarize",
    "summary_prompt": "summary_prompt",
}
# ShotSegmenting field -> the flag that sets it (``--segment-by shots``; the field names its errors).
SHOT_FLAGS: dict[str, str] = {
    "threshold": "shot_threshold",
    "min_segment_seconds": "min_segment_seconds",
    "max_segment_seconds": "max_segment_seconds",
}
# Fields where the config's None (no segmenting, no limit) is the flag's 0.
_ZERO_IS_NONE = ("segment_seconds", "max_decode_seconds")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and ends each flag's help with its default, unless the help already
    says what the default is (a flag whose default is None, a list or a switch says it in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unstated = action.default is None or action.default is False or action.default == []
        if "default" in text or action.required or unstated or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def job_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A job's parser: its docstring as the description, defaults in the help, the exit codes as the epilog."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES, formatter_class=HelpFormatter)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every pipeline job takes."""
    parser.add_argument("--input", required=True, help="folder, s3://bucket/prefix, or a manifest (.txt/.csv/.parquet)")
    parser.add_argument("--output", required=True, help="folder or s3://bucket/prefix for Parquet results")
    parser.add_argument(
        "--question", action="append", default=[], help="a question asked of every segment (repeat; default: none)"
    )
    parser.add_argument("--questions-file", help="a text file with one question per line (default: none)")
    parser.add_argument(
        "--model",
        default=next(iter(BUNDLED_LABELS)),
        help="Video-LLaVA checkpoint dir or hub id, e.g. LanguageBind/Video-LLaVA-7B-hf; "
        f"{' and '.join(BUNDLED_LABELS)} are bundled toy models that know only synthetic coloured shapes",
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"SparseVLM preset: {', '.join(PRESETS)}")
    parser.add_argument(
        "--segment-by",
        choices=SEGMENT_BY,
        default="fixed",
        help="fixed = segments of --segment-seconds; shots = cut at detected shot boundaries, short shots merged "
        "and long ones split (--min-segment-seconds, --max-segment-seconds)",
    )
    parser.add_argument(
        "--segment-seconds", type=float, default=10.0, help="segment length with --segment-by fixed; 0 = whole video"
    )
    shots = ShotSegmenting()
    parser.add_argument(
        "--min-segment-seconds",
        type=float,
        help=f"--segment-by shots: shorter shots join their neighbours (default: {shots.min_segment_seconds:g})",
    )
    parser.add_argument(
        "--max-segment-seconds",
        type=float,
        help="--segment-by shots: longer shots are split into equal parts, at least twice the minimum "
        f"(default: {shots.max_segment_seconds:g})",
    )
    parser.add_argument(
        "--shot-threshold",
        type=float,
        help="--segment-by shots: mean HSV change (0-255) between frames sampled "
        f"{shots.sample_fps:g} times a second that makes a cut; lower finds more cuts (default: {shots.threshold:g})",
    )
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per segment")
    parser.add_argument(
        "--shadow-fraction",
        type=fraction,
        default=DEFAULT_SHADOW_FRACTION,
        metavar="F",
        help="answer this share of the segments (picked by a hash of their key: a rerun picks the same) again "
        "under the dense preset, in the same model actor, and report how often the answers agree, with a 95 %% "
        "interval per task; the dense answers go to _quality/, never to the results; 0 = off",
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="after the segments, one row of task 'summary' per video of two or more segments whose rows are all "
        "ok: its captions in order, read as text by the same model; committed exactly once, also for videos that "
        "earlier runs committed (default: no summaries)",
    )
    parser.add_argument(
        "--summary-prompt",
        default=PipelineConfig.summary_prompt,
        help="the instruction after the captions (--summarize)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=PipelineConfig.max_new_tokens, help="generation budget per answer"
    )
    parser.add_argument(
        "--repeat-stop",
        type=auto_or_count,
        default="auto",
        metavar="N",
        help="stop an answer once it ends with the same 1 to N tokens twice in a row, keeping the first copy; "
        f"0 = off; auto = {BUNDLED_REPEAT_STOP} for the bundled models (they loop on real video), 0 for others (a "
        "real model's 'ha ha' or '2000' would be cut)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="model weights: auto = bfloat16 on GPUs with native bf16, float16 on other GPUs, float32 on CPU",
    )
    parser.add_argument(
        "--num-gpus-per-worker",
        type=float,
        help="GPUs per model actor (default: 1 when the Ray cluster has a GPU, else 0 = the CPU)",
    )
    parser.add_argument("--workers", type=int, default=1, help="model actors")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) per model actor")
    parser.add_argument(
        "--decode-cpus", type=float, default=1.0, help="CPUs per decode task (decord is single-threaded)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="segments per model call")
    parser.add_argument(
        "--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="videos with more frames become TooLarge error rows"
    )
    parser.add_argument(
        "--max-decode-seconds",
        type=float,
        default=DEFAULT_MAX_DECODE_S,
        help="wall-clock limit per video (download and decoding); past it a Timeout error row; 0 = no limit",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS); credentials come from the standard "
        "AWS sources (environment, ~/.aws, instance roles)",
    )
    parser.add_argument(
        "--io-retries",
        type=int,
        default=3,
        help="Ray retries of a decode task after a transient storage error (5xx, throttling, dropped connection)",
    )
    parser.add_argument(
        "--preflight-videos",
        type=int,
        default=PipelineConfig.preflight_videos,
        metavar="N",
        help="before loading the model, decode one frame of a sample of N pending videos spread over the run; the "
        "run stops only if no pending video decodes; 0 = skip the check",
    )
    parser.add_argument(
        "--retry-errors", action="store_true", help="reprocess videos whose rows are errors (default: skip them)"
    )
    parser.add_argument(
        "--ray-address", help="Ray cluster address (default: the job's cluster if submitted to one, else a local Ray)"
    )
    parser.add_argument("--run-id", help="identifies this run in every row (default: UTC start time + random)")
    parser.add_argument(
        "--allow-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a folder or s3://bucket/prefix that a manifest's entries may name besides the manifest's own folder "
        "(repeat; by default a manifest reads only below its own folder)",
    )
    parser.add_argument(
        "--wait-for-lease",
        type=non_negative(float),
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run on the same output to finish (default: 0, exit at once with code "
        f"{RUN_FAILED})",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list what a run would process (new, changed, retried, already done) with its token and FLOPs "
        "estimate, then exit; starts no model and no Ray, writes nothing (default: run)",
    )
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="the driver's progress line: bar = redrawn in place, log = a log line every 10 s, off; auto = bar on "
        "a terminal, else log (always log under --log-format json)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="Prometheus port of the local Ray the job starts, on 127.0.0.1 (default: a free port, logged at the "
        "start); a cluster's nodes serve theirs at ray start --metrics-export-port",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="stderr lines: text for people, json for log shippers (one JSON object per line)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="info leaves out Ray's and transformers' notes an operator cannot act on; debug shows them and every "
        "library's debug records",
    )


def parse_run_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a job's flags and set up its logging (``--log-format``) before anything else can fail."""
    ns = parser.parse_args(argv)
    configure_logging(ns.log_format, ns.log_level)
    return ns


def config_from_args(ns: argparse.Namespace, **extra: Any) -> PipelineConfig:
    """Turn parsed flags into a validated :class:`PipelineConfig`.

    Raises:
        ValueError: a flag's value is invalid; the message names the flag (``--workers must be ...``), not
            the config field, and ``extra`` fields by their own names.
    """
    questions = list(ns.question)
    if ns.questions_file:
        path = Path(ns.questions_file)
        if not path.is_file():
            raise ValueError(f"--questions-file {path} does not exist")
        questions += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    check_local_locations(ns.input, ns.output)
    fields: dict[str, Any] = {name: getattr(ns, dest) for name, dest in CONFIG_FLAGS.items()}
    fields["questions"] = tuple(dict.fromkeys(questions))
    fields["allow_prefixes"] = tuple(ns.allow_prefix)
    for name in _ZERO_IS_NONE:
        fields[name] = fields[name] or None
    if fields["repeat_stop"] == "auto":
        fields["repeat_stop"] = BUNDLED_REPEAT_STOP if bundled_label(ns.model) else 0
    if not ns.run_id:
        del fields["run_id"]
    shot_flags = {name: getattr(ns, dest) for name, dest in SHOT_FLAGS.items() if getattr(ns, dest) is not None}
    if ns.segment_by == "fixed" and shot_flags:
        given = ", ".join("--" + SHOT_FLAGS[name].replace("_", "-") for name in shot_flags)
        raise ValueError(f"{given} apply to --segment-by shots only; add --segment-by shots or leave them out")
    try:
        fields["sparse"] = SparseConfig.preset(ns.preset)
        fields["shots"] = ShotSegmenting(**shot_flags) if ns.segment_by == "shots" else None
        config = PipelineConfig(**fields, **extra)
    except ValueError as err:
        raise ValueError(flag_message(str(err))) from err
    if config.ray_address is None and "RAY_ADDRESS" not in os.environ:  # the job will start a local Ray
        use_local_ray_env()
    if not ns.dry_run:  # Ray is imported from here on: its loggers go through the root handler and its filter
        route_ray_logs()
    return config


def check_local_locations(input_location: str, output_location: str) -> None:
    """Refuse a local ``--input`` that does not exist and a local ``--output`` that is a file, before the job
    writes anything (no output folder, no run record). Plain paths are taken literally (``#``, ``?``, ``%41``,
    spaces and non-ASCII names are file names); ``s3://`` locations are checked by the run itself.

    Raises:
        ValueError: naming the flag, the path and the fix.
    """
    from pipeline.stages.sources import check_scheme  # here: --help answers without the storage modules
    from pipeline.stages.storage import local_path

    if check_scheme(input_location) != "s3" and not os.path.exists(local_path(input_location)):
        raise ValueError(
            f"--input {input_location!r}: no such file or folder ({local_path(input_location)}); give an existing "
            "folder, video or manifest"
        )
    output = local_path(output_location) if check_scheme(output_location) != "s3" else None
    if output is not None and os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(
            f"--output {output_location!r} is a file, not a folder; give a folder (it is created if missing)"
        )


def run_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`pipeline.run.run_pipeline` that flags set besides the config."""
    progress = "log" if ns.log_format == "json" and ns.progress != "off" else ns.progress
    return {"lease_wait_s": ns.wait_for_lease, "progress": progress, "metrics_export_port": ns.metrics_port}


def flag_message(message: str) -> str:
    """A :class:`PipelineConfig` error with the field it names replaced by the flag that sets it.

    The config's messages name their field first (``workers must be an int >= 1, got 0`` becomes
    ``--workers must be an int >= 1, got 0``) or after "unknown" (``unknown preset 'x'``, from
    ``SparseConfig.preset``); only those places change, so a URI or a
    placeholder in the message (``_runs/<run_id>.json``) stays as it is. Where the flag's 0 is the config's
    None, the message says 0.
    """
    for name, dest in (CONFIG_FLAGS | SHOT_FLAGS).items():
        flag = "--" + dest.replace("_", "-")
        rewritten = re.sub(rf"^(unknown )?({name}|{dest})(?= )", rf"\g<1>{flag}", message)
        if rewritten != message:
            return rewritten.replace(" or None", " or 0", 1) if name in _ZERO_IS_NONE else rewritten
    return message


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """End the job with one line on stderr (``error: ...``, or a JSON record under ``--log-format json``)."""
    print(error_line(message, code), file=sys.stderr)
    raise SystemExit(code)


class Interrupted(BaseException):
    """The job received SIGTERM (what Kubernetes and ``kill`` send) or SIGINT (Ctrl-C): a BaseException, so it
    passes every ``except Exception`` on its way out and the run still writes its failure record and releases
    its lease."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean stop; a second signal does not cut it short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(signum)


def _interrupted_line(err: BaseException) -> tuple[str, int]:
    """The one error line and exit code (128 + the signal: 143 for SIGTERM, 130 for SIGINT) of a stopped job."""
    signum = err.signum if isinstance(err, Interrupted) else int(signal.SIGINT)
    notes = getattr(err, "__notes__", [])
    committed = notes[-1] if notes else "nothing was committed"
    return (
        f"interrupted by {signal.Signals(signum).name}: {committed}; rerunning the same command resumes "
        "(committed videos are skipped)",
        128 + signum,
    )


def run_cli(main: Callable[[], dict[str, Any]]) -> None:
    """Run a job's main and print its summary; end a failing job with one line and its exit code.

    The summary (or the ``--dry-run`` plan) is a short block for people (:mod:`jobs.summaries`), or one JSON
    line under ``--log-format json``. Usage errors (a flag's value, the input, the model; see
    :data:`EXIT_CODES`) exit with :data:`USAGE_ERROR`, everything that stops a run otherwise with
    :data:`RUN_FAILED`; an unexpected exception is logged with its traceback first. SIGTERM and SIGINT stop
    the run like a failure (its record is written, its lease released) and exit with 143 and 130, with one
    line saying what was committed.
    """
    configure_logging("text")  # until the job's main has read --log-format
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        summary = main()
    except (Interrupted, KeyboardInterrupt) as err:
        fail(*_interrupted_line(err))
    except Exception as err:
        fail(*_failure(err))
    if json_logging():
        print(json.dumps(summary, default=str))
    else:
        from jobs.summaries import format_plan, format_summary

        print(format_plan(summary) if summary.get("dry_run") else format_summary(summary))


def _failure(err: Exception) -> tuple[str, int]:
    """The one line and the exit code that end a job that raised ``err``.

    The run's modules are imported here, on failure, not with this module: ``--help`` and usage errors answer
    without loading Ray or the storage clients.
    """
    from pipeline.stages.sources import SourceError
    from sparsevlm.engine_types import CheckpointError

    usage = (ValueError, SourceError, CheckpointError)
    if isinstance(err, usage):
        return headline(err), USAGE_ERROR
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from pipeline.commit.lease import LeaseHeld, LeaseLost
    from pipeline.run import PipelineError

    if isinstance(err, NoCredentialsError):
        return (
            "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role",
            RUN_FAILED,
        )
    if isinstance(err, PipelineError):  # the run wraps what it finds wrong with its input or model
        return headline(err), USAGE_ERROR if isinstance(err.__cause__, usage) else RUN_FAILED
    if isinstance(err, LeaseHeld | LeaseLost):
        return headline(err), RUN_FAILED
    if isinstance(err, BotoCoreError | ClientError | OSError):
        return storage_failure(err), RUN_FAILED
    logger.exception("the run failed")
    return f"{type(err).__name__}: {headline(err)}", RUN_FAILED


def storage_failure(err: BaseException) -> str:
    """The one line that ends a job whose storage could not be reached or refused a request."""
    return f"storage is not reachable or refused the request: {headline(err)}"
