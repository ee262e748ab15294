"""What the caption and index_archive jobs share: their flags, the flags-to-config step, and clean exits.

Errors a user can fix (a bad URI, unreachable storage, missing credentials, an unknown preset, a directory
that is not a Video-LLaVA checkpoint, another run holding the output's lease) end the job with exit code 2 and
one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from pipeline.config import PipelineConfig
from pipeline.ray_env import use_local_ray_env
from pipeline.video import DEFAULT_MAX_DECODE_S, DEFAULT_MAX_FRAMES
from sparsevlm.config import PRESETS, SparseConfig
from sparsevlm.engine import DTYPE_NAMES
from sparsevlm.tiny import CHECKPOINT_DIR

USAGE_ERROR = 2


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every pipeline job takes."""
    parser.add_argument("--input", required=True, help="folder, s3://bucket/prefix, or a manifest (.txt/.csv/.parquet)")
    parser.add_argument("--output", required=True, help="folder or s3://bucket/prefix for Parquet results")
    parser.add_argument("--question", action="append", default=[], help="a question asked of every segment (repeat)")
    parser.add_argument("--questions-file", help="a text file with one question per line")
    parser.add_argument("--model", default=str(CHECKPOINT_DIR), help="Video-LLaVA checkpoint dir or hub id")
    parser.add_argument("--preset", default="video-25", help=f"SparseVLM preset: {', '.join(PRESETS)}")
    parser.add_argument("--segment-seconds", type=float, default=10.0, help="segment length; 0 = whole video")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per segment")
    parser.add_argument("--max-new-tokens", type=int, default=PipelineConfig.max_new_tokens, help="per answer")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="model weights: auto = bfloat16 on GPUs with native bf16, float16 on other GPUs, float32 on CPU",
    )
    parser.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="GPUs per model actor (1 on GPU nodes)")
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
    parser.add_argument("--retry-errors", action="store_true", help="reprocess videos whose rows are errors")
    parser.add_argument("--ray-address", help="Ray cluster address (default: the job's cluster, or a local Ray)")
    parser.add_argument("--run-id", help="identifies this run in every row (default: time + random)")
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
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run on the same output to finish (default: exit at once with code 2)",
    )


def _seconds(text: str) -> float:
    """argparse type of a duration in seconds: a number >= 0 (argparse names the flag in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def config_from_args(ns: argparse.Namespace, **extra: Any) -> PipelineConfig:
    """Turn parsed flags into a validated :class:`PipelineConfig` (raises ValueError naming the bad flag)."""
    questions = list(ns.question)
    if ns.questions_file:
        path = Path(ns.questions_file)
        if not path.is_file():
            raise ValueError(f"--questions-file {path} does not exist")
        questions += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if ns.preset not in PRESETS:
        raise ValueError(f"unknown --preset {ns.preset!r}; known presets: {', '.join(PRESETS)}")
    fields: dict[str, Any] = {
        "input_uri": ns.input,
        "output_uri": ns.output,
        "model": ns.model,
        "questions": tuple(dict.fromkeys(questions)),
        "segment_seconds": ns.segment_seconds or None,
        "frames_per_segment": ns.frames,
        "max_new_tokens": ns.max_new_tokens,
        "dtype": ns.dtype,
        "sparse": SparseConfig.preset(ns.preset),
        "workers": ns.workers,
        "num_gpus_per_worker": ns.num_gpus_per_worker,
        "cpus_per_worker": ns.cpus_per_worker,
        "decode_cpus": ns.decode_cpus,
        "batch_size": ns.batch_size,
        "max_frames": ns.max_frames,
        "max_decode_seconds": ns.max_decode_seconds or None,
        "s3_endpoint_url": ns.s3_endpoint_url,
        "retry_errors": ns.retry_errors,
        "ray_address": ns.ray_address,
        "allow_prefixes": tuple(ns.allow_prefix),
        "io_retries": ns.io_retries,
        **extra,
    }
    if ns.run_id:
        fields["run_id"] = ns.run_id
    config = PipelineConfig(**fields)
    if config.ray_address is None and "RAY_ADDRESS" not in os.environ:  # the job will start a local Ray
        use_local_ray_env()
    return config


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def run_cli(main: Callable[[], dict[str, Any]]) -> None:
    """Run a job's main, printing its summary as JSON, and turn user-fixable errors into exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from pipeline.build import PipelineError
    from pipeline.lease import LeaseHeld
    from pipeline.sources import SourceError
    from sparsevlm.engine import CheckpointError

    try:
        summary = main()
    except NoCredentialsError:
        fail("no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role")
    except (PipelineError, SourceError, CheckpointError, LeaseHeld, ValueError) as err:
        fail(_one_line(err))
    except (BotoCoreError, ClientError, OSError) as err:
        fail(f"storage is not reachable or refused the request: {_one_line(err)}")
    print(json.dumps(summary, indent=2, default=str))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
