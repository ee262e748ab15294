"""Storage failures on input objects, injected by a proxy in front of the S3 server (tests/pipeline/faulty_s3.py):
a permanent answer (403, 404) is an error row and the run completes; a transient one (503) is retried, by the
storage client with backoff and then by Ray, a bounded number of times. The same for the writes of results."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs

from pipeline import run
from pipeline.commit.ledger import Ledger
from pipeline.config import PipelineConfig
from pipeline.run import PipelineError, run_pipeline
from pipeline.stages.decode import decode_rows, source_row
from pipeline.stages.sources import list_sources
from pipeline.stages.storage import TransientIOError, storage_failure
from tests.pipeline.faulty_s3 import FaultyS3, faulty_s3
from tests.pipeline.runs import make_config, read_rows

CLIP = "gradio_video_sample.webm"  # 5 s of VP9: one segment
S3_KEY = S3_SECRET = "testing"
ATTEMPTS = 2  # the storage client's attempts per request (botocore "standard" mode, backoff between them)


@pytest.fixture
def proxy(s3_server: str) -> Iterator[FaultyS3]:
    with faulty_s3(s3_server) as state:
        yield state


def bucket_with(s3_server: str, bucket: str, assets: Path, names: list[str]) -> None:
    admin = s3fs.S3FileSystem(endpoint_url=s3_server, key=S3_KEY, secret=S3_SECRET, skip_instance_cache=True)
    admin.mkdir(bucket)
    for name in names:
        admin.put_file(str(assets / CLIP), f"{bucket}/in/{name}")


def config_through(proxy: FaultyS3, bucket: str, output: str, model: Path, **changes: Any) -> PipelineConfig:
    options = {
        "key": S3_KEY,
        "secret": S3_SECRET,
        "config_kwargs": {"retries": {"max_attempts": ATTEMPTS, "mode": "standard"}},
    }
    settings: dict[str, Any] = {"s3_endpoint_url": proxy.url, "s3_options": options, "preflight_videos": 0}
    return make_config(f"s3://{bucket}/in", output, model, **{**settings, **changes})


def decode_all(config: PipelineConfig) -> dict[str, list[dict[str, Any]]]:
    sources = list_sources(config.input_uri, config.storage.fsspec(config.input_uri))
    return {
        Path(s.uri).name: list(decode_rows(source_row(s, config.config_key(), config.questions), config.decoding, 32))
        for s in sources
    }


@pytest.mark.parametrize(("status", "error_class"), [(403, "AccessDenied"), (404, "MissingMedia")])
def test_a_permanent_refusal_is_one_error_row(
    status: int, error_class: str, proxy: FaultyS3, s3_server: str, assets: Path, tmp_path: Path
) -> None:
    bucket = f"refused-{status}"
    bucket_with(s3_server, bucket, assets, ["ok.webm", "refused.webm"])
    config = config_through(proxy, bucket, str(tmp_path / "out"), Path("unused"))
    proxy.fail(f"/{bucket}/in/refused.webm", status)
    rows = decode_all(config)
    (row,) = rows["refused.webm"]
    assert (row["error_class"], row["segment_index"]) == (error_class, None)
    assert f"s3://{bucket}/in/refused.webm" in row["error_message"]
    assert proxy.requests[f"/{bucket}/in/refused.webm"] == 1  # never retried
    assert [r["error_class"] for r in rows["ok.webm"]] == [None]


def requests_of_one_failed_attempt(proxy: FaultyS3, config: PipelineConfig, name: str) -> int:
    """Requests for ``name`` that one decode attempt makes while the storage answers 503 to all of them
    (the client's retries included), after checking that the attempt raises the one type Ray retries."""
    (source,) = [
        s for s in list_sources(config.input_uri, config.storage.fsspec(config.input_uri)) if s.uri.endswith(name)
    ]
    path = "/" + source.uri.removeprefix("s3://")
    proxy.fail(path, 503)
    proxy.requests.clear()
    with pytest.raises(TransientIOError, match=rf"{source.uri}: HTTP 503") as caught:
        list(decode_rows(source_row(source, config.config_key(), config.questions), config.decoding, 32))
    assert storage_failure(caught.value) == "transient"
    proxy.faults.pop(path)
    return proxy.requests[path]


def test_a_transient_failure_is_retried_with_backoff_then_raised(
    proxy: FaultyS3, s3_server: str, assets: Path, tmp_path: Path
) -> None:
    bucket_with(s3_server, "flaky", assets, ["a.webm"])
    config = config_through(proxy, "flaky", str(tmp_path / "out"), Path("unused"))
    assert requests_of_one_failed_attempt(proxy, config, "a.webm") >= ATTEMPTS  # bounded, and retried
    (source,) = list_sources(config.input_uri, config.storage.fsspec(config.input_uri))
    proxy.fail("/flaky/in/a.webm", 503, times=ATTEMPTS - 1)  # the client's own retry absorbs it
    assert [
        r["error_class"]
        for r in decode_rows(source_row(source, config.config_key(), config.questions), config.decoding, 32)
    ] == [None]


@pytest.mark.slow  # 12 s here (2 cores): Ray runs against a failing S3 proxy
def test_ray_retries_transient_failures_and_the_run_completes_past_a_refused_object(
    pipeline_ray: None, proxy: FaultyS3, s3_server: str, assets: Path, pipeline_model_dir: Path, tmp_path: Path
) -> None:
    bucket_with(s3_server, "ray-faults", assets, ["denied.webm", "flaky.webm", "ok.webm"])
    flaky = "/ray-faults/in/flaky.webm"
    config = config_through(proxy, "ray-faults", str(tmp_path / "out"), pipeline_model_dir, run_id="faults")
    per_attempt = requests_of_one_failed_attempt(proxy, config, "flaky.webm")
    proxy.fail("/ray-faults/in/denied.webm", 403)
    proxy.fail(flaky, 503, times=per_attempt + 1)  # fails one task attempt, and the next one's first request
    proxy.requests.clear()
    summary = run_pipeline(config)
    assert (summary.processed, summary.failed, summary.error_classes) == (3, 1, {"AccessDenied": 1})
    assert proxy.requests[flaky] > per_attempt + 1  # the failed attempt's requests, then the retry's
    rows = read_rows(config)
    assert sorted((Path(r["source_uri"]).name, r["status"]) for r in rows if r["task"] == "caption") == [
        ("denied.webm", "error"),
        ("flaky.webm", "ok"),
        ("ok.webm", "ok"),
    ]

    # A storage that stays down: the task is tried 1 + io_retries times, then the run fails with a record.
    shutil.rmtree(tmp_path / "out")
    proxy.fail(flaky, 503)
    proxy.requests.clear()
    down = config.replace(run_id="down", io_retries=1)
    with pytest.raises(PipelineError, match="the Ray job failed"):
        run_pipeline(down)
    assert proxy.requests[flaky] == (1 + down.io_retries) * per_attempt
    record = json.loads((tmp_path / "out" / "_runs" / "down.json").read_text())
    assert (record["status"], record["error_class"]) == ("failed", "PipelineError")


@pytest.mark.parametrize(("method", "permission"), [("PUT", "s3:PutObject"), ("POST", "s3:DeleteObject")])
def test_an_output_that_refuses_writes_or_deletes_fails_before_anything_else(
    method: str,
    permission: str,
    proxy: FaultyS3,
    s3_server: str,
    pipeline_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket_with(s3_server, f"refusing-{method.lower()}", Path(), [])
    config = config_through(
        proxy, "unused", f"s3://refusing-{method.lower()}/rows", pipeline_model_dir, run_id=f"probe-{method}"
    )
    if method == "PUT":
        proxy.fail(f"/refusing-{method.lower()}/rows/_runs/.probe-probe-{method}.json", 403, method=method)
    else:  # the probe is written, and its deletion (DeleteObjects, a POST to the bucket) silently refused
        proxy.fail(f"/refusing-{method.lower()}", 200, method=method)

    def no_work(*args: Any) -> None:
        raise AssertionError("the run went past the probe")

    monkeypatch.setattr(run, "inspect_checkpoint", no_work)
    output = f"s3://refusing-{method.lower()}/rows"
    with pytest.raises(PipelineError, match=rf"the output {output} is not writable \(PermissionError: ") as caught:
        run_pipeline(config)
    assert permission in str(caught.value) and "choose another --output" in str(caught.value)


@pytest.mark.slow  # 26 s here (2 cores): Ray runs against a failing S3 proxy
def test_writes_are_retried_boundedly_and_a_retried_write_task_never_duplicates(
    pipeline_ray: None, proxy: FaultyS3, s3_server: str, assets: Path, pipeline_model_dir: Path
) -> None:
    """503 answers to the PUTs of part files: each PUT is retried by the client with backoff; one that
    outlasts it fails the write task with TransientIOError, which Ray retries (at most io_retries times). A
    storage that stays down fails the run after bounded attempts, leaving nothing visible; the next run,
    whose first attempt also fails, is retried by Ray and commits every video exactly once."""
    bucket_with(s3_server, "write-faults", assets, ["a.webm", "b.webm"])
    output = "s3://write-faults/rows"
    config = config_through(proxy, "write-faults", output, pipeline_model_dir, run_id="down", io_retries=1)
    ledger = Ledger(*config.output.filesystem())
    proxy.fail("/write-faults/rows/probe.bin", 503)
    with pytest.raises(OSError) as caught:
        ledger.files.write_bytes(b"x", ledger.files.path("probe.bin"))
    assert storage_failure(caught.value) == "transient"
    per_put = proxy.requests["/write-faults/rows/probe.bin"]  # one PUT's attempts inside the client
    assert per_put >= ATTEMPTS

    parts = "/write-faults/rows/part-*"
    proxy.fail(parts, 503, method="PUT")
    with pytest.raises(PipelineError, match=r"the Ray job failed: .*TransientIOError"):
        run_pipeline(config)
    put_requests = sum(n for path, n in proxy.requests.items() if path.startswith(parts[:-1]))
    assert per_put * 2 <= put_requests <= (1 + config.io_retries) * per_put * 2  # bounded: 2 videos at most
    assert ledger.part_files() == [] and ledger.committed() == {}

    proxy.fail(parts, 503, times=per_put + 1, method="PUT")  # a task attempt fails, the retry's first PUT too
    summary = run_pipeline(config.replace(run_id="retried", io_retries=3))
    assert (summary.processed, summary.uncommitted) == (2, 0)
    assert proxy.faults[parts].times == 0  # every injected 503 was answered
    rows = read_rows(config)
    keys = [(Path(r["source_uri"]).name, r["segment_index"], r["task"]) for r in rows]
    assert sorted(keys) == [(n, 0, t) for n in ("a.webm", "b.webm") for t in ("caption", "qa")]  # each once
    assert len(ledger.part_files()) == 2 and ledger.files.list_files(ledger.files.path("_staging"), True) == []
