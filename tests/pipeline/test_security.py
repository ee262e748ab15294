"""Security properties of the pipeline: no checkpoint code runs, credentials are never written or logged, no
input can place output outside the output prefix, only file and s3 inputs are read, and oversized input
becomes error rows.

Everything runs through the plain-function path of the Ray stages (``list_sources`` -> ``source_row`` ->
``decode_rows`` -> ``Predictor`` -> ``Ledger``), and ``run_pipeline`` / ``jobs.caption`` only where nothing is
pending (they then start no Ray), so no test here needs Ray.

Covered elsewhere and not repeated: pickled weights are refused with a message naming the file and the fix
(``tests/sparsevlm/test_engine.py::test_refuses_pickled_weights``, and through ``run_pipeline`` in
``tests/pipeline/test_build.py::test_fails_fast_when_the_model_cannot_load``); ledger keys that could name a file
elsewhere are refused by the ledger itself (``tests/pipeline/test_ledger.py``); URIs with other schemes, and a
text manifest naming one (``tests/pipeline/test_sources.py``); the duration guard through ``decode_rows``
(``tests/pipeline/test_bad_input.py::test_hour_long_video_over_the_duration_guard_is_one_error_row``).
"""

from __future__ import annotations

import ast
import json
import logging
import runpy
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import s3fs
from transformers import VideoLlavaForConditionalGeneration

from jobs import caption
from jobs.common import run_cli
from pipeline.commit.ledger import Ledger
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.config import PipelineConfig
from pipeline.run import PipelineError, run_pipeline
from pipeline.stages.decode import decode_rows, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.sources import SourceError, list_sources, read_manifest
from sparsevlm.engine import VideoQAEngine, inspect_checkpoint
from sparsevlm.engine_types import CheckpointError
from sparsevlm.tiny.loading import load_tiny

ROOT = Path(__file__).resolve().parents[2]
CLIP = "gradio_video_sample.webm"  # 5 s of VP9, the smallest real clip
QUESTION = "What happens?"


@pytest.fixture(scope="module")
def engine(pipeline_model_dir: Path) -> VideoQAEngine:
    return VideoQAEngine.from_pretrained(pipeline_model_dir, "video-25")


def make_config(input_uri: str, output_uri: str, model: Path, **changes: Any) -> PipelineConfig:
    """One frame of each whole video and a two-token answer: the cheapest run that writes every kind of file."""
    settings: dict[str, Any] = {
        "questions": (QUESTION,),
        "segment_seconds": None,
        "frames_per_segment": 1,
        "max_new_tokens": 2,
        "run_id": "security",
        **changes,
    }
    return PipelineConfig(input_uri=input_uri, output_uri=output_uri, model=str(model), **settings).resolved()


def run_stages(config: PipelineConfig, engine: VideoQAEngine, compact: bool = True) -> list[LedgerEntry]:
    """What the Ray chain does, in this process: list, decode, answer, write and commit, then compact."""
    sources = list_sources(
        config.input_uri, config.storage.fsspec(config.input_uri), allow_prefixes=config.allow_prefixes
    )
    predictor = Predictor(config.model_settings, config.answering, engine)
    ledger = Ledger(*config.output.filesystem(), partition=config.partition)
    entries = []
    for source in sources:
        rows = list(
            decode_rows(
                source_row(source, config.config_key(), config.questions), config.decoding, engine.spec.frame_size
            )
        )
        entries += ledger.write_rows(predictor(pa.Table.from_pylist(rows)), config.run_id)
    if compact:
        ledger.compact(entries)
    return entries


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# No code from a checkpoint ever runs


@pytest.fixture
def trap(pipeline_model_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A copy of the tiny checkpoint plus ``evil.py``, which leaves a sentinel file and raises when imported."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(pipeline_model_dir, checkpoint)
    sentinel = tmp_path / "EVIL_CODE_RAN"
    (checkpoint / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('imported')\n"
        "raise RuntimeError('checkpoint code was imported')\n"
    )
    with pytest.raises(RuntimeError, match="checkpoint code was imported"):  # the trap works when run
        runpy.run_path(str(checkpoint / "evil.py"))
    assert sentinel.exists()
    sentinel.unlink()
    yield checkpoint, sentinel
    assert not sentinel.exists(), "code shipped with the checkpoint was imported"
    assert not [name for name in sys.modules if "evil" in name.lower()]


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("file", "changes"),
    [
        ("config.json", {"auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}),
        ("config.json", {"model_type": "evil_llava", "auto_map": {"AutoConfig": "evil.EvilConfig"}}),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}),
    ],
    ids=["config-video-llava", "config-unknown-type", "tokenizer"],
)
def test_a_checkpoint_asking_for_its_own_code_is_refused_without_running_it(
    trap: tuple[Path, Path], tmp_path: Path, file: str, changes: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, _ = trap
    edit_json(checkpoint / file, **changes)
    message = rf"its {file} maps classes to code shipped with the checkpoint .*never runs checkpoint code"
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match=message):
        VideoQAEngine.from_pretrained(checkpoint)
    config = make_config(str(tmp_path), str(tmp_path / "out"), checkpoint)
    with pytest.raises(CheckpointError, match=message):
        Predictor(config.model_settings, config.answering)
    with pytest.raises(PipelineError, match=message):
        run_pipeline(config)
    argv = ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--model", str(checkpoint)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: caption.main(argv))
    assert exit_info.value.code == 2 and "never runs checkpoint code" in capsys.readouterr().err
    # The second line of defence, for a loader that checks nothing first (the tiny model's): transformers called
    # with trust_remote_code=False builds the stock classes and never imports evil.py (the fixture checks).
    model, _, _ = load_tiny(checkpoint, allow_random=False)
    assert type(model) is VideoLlavaForConditionalGeneration


def test_no_call_path_trusts_remote_code() -> None:
    """Every ``trust_remote_code`` argument is the literal False, and every ``Auto*.from_pretrained`` passes it
    (transformers' default asks the user interactively, or trusts when a hub revision says so)."""
    problems = []
    sources = [p for package in ("sparsevlm", "pipeline", "jobs") for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(sources) > 20
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    named = isinstance(key, ast.Constant) and key.value == "trust_remote_code"
                    if named and not (isinstance(value, ast.Constant) and value.value is False):
                        problems.append(f"{where}: trust_remote_code in a dict is not False")
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            trust = keywords.get("trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                problems.append(f"{where}: trust_remote_code={ast.unparse(trust)}")
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "from_pretrained"
                and isinstance(func.value, ast.Name)
                and func.value.id.startswith("Auto")
                and trust is None
            ):
                problems.append(f"{where}: {func.value.id}.from_pretrained without trust_remote_code=False")
    assert problems == []


# ---------------------------------------------------------------------------------------------------------
# Credentials are never written or logged

CANARY_KEY = "AKIACANARY0LEAK7Q2X9"
CANARY_SECRET = "canary/Secret+Do-Not-Leak-4f1c9e2b7a"


def readable(path: str, data: bytes) -> bytes:
    """The bytes of an output object plus, for Parquet (compressed), every value and the schema as text."""
    if not path.endswith(".parquet"):
        return data
    table = pq.read_table(pa.BufferReader(data))
    return data + str(table.schema).encode() + json.dumps(table.to_pylist(), default=str).encode()


def test_credentials_never_reach_rows_markers_manifests_or_logs(
    s3_server: str,
    pipeline_model_dir: Path,
    engine: VideoQAEngine,
    assets: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CANARY_KEY)  # the standard variables, as in production
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still sign with the session's credentials
    caplog.set_level(logging.DEBUG)
    admin = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    admin.mkdir("creds")
    admin.put_file(str(assets / CLIP), f"creds/in/{CLIP}")
    admin.pipe("creds/in/broken.mp4", b"not a video")  # an error row, whose message names the source
    config = make_config("s3://creds/in", "s3://creds/out", pipeline_model_dir, s3_endpoint_url=s3_server)

    entries = run_stages(config, engine, compact=False)  # part files and markers
    assert [e.status for e in entries] == ["error", "ok"]
    Ledger(*config.output.filesystem()).compact(entries[:1])  # one marker folded into the index, one left
    marker = {path: admin.cat_file(path) for path in admin.find("creds/out/_ledger") if path.endswith(".json")}
    assert len(marker) == 1  # (the next run folds it into the index as it opens its epoch)
    admin.invalidate_cache()  # its listing of _ledger/ would hide what the runs below write there
    argv = ["--input", "s3://creds/in", "--output", "s3://creds/out", "--model", str(pipeline_model_dir)]
    argv += ["--question", QUESTION, "--segment-seconds", "0", "--frames", "1", "--max-new-tokens", "2"]
    rerun = [*argv, "--s3-endpoint-url", s3_server, "--run-id", "cli-rerun", "--log-format", "json"]
    run_cli(lambda: caption.main(rerun))
    with_options = config.replace(run_id="api-rerun", s3_options={"key": CANARY_KEY, "secret": CANARY_SECRET})
    assert run_pipeline(with_options).skipped == 2  # credentials passed as options: the manifest must not show them

    objects = {path: admin.cat_file(path) for path in admin.find("creds/out")}
    kinds = sorted({path.split("/")[2] if "/_" in path else "part" for path in objects})
    # part files, two index files, the epoch, and two runs' record and page
    assert kinds == ["_ledger", "_runs", "part"] and len(objects) == 2 + 2 + 1 + 2 * 2
    for path, data in {**objects, **marker}.items():
        text = readable(path, data)
        assert CANARY_KEY.encode() not in text and CANARY_SECRET.encode() not in text, path

    printed = capsys.readouterr()
    assert json.loads(printed.out)["skipped"] == 2
    ours = [r for r in caplog.records if not r.name.startswith(("moto", "werkzeug"))]  # not the test server's
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in ours)
    assert CANARY_SECRET not in printed.out + printed.err + logged
    assert CANARY_KEY not in printed.out + printed.err
    assert [r.name for r in ours if r.levelno >= logging.INFO and CANARY_KEY in r.getMessage()] == []
    # Evidence that the canary signed the requests: botocore's DEBUG log of a request shows the key id (an
    # identifier, not a secret) in its Authorization header; the secret itself never appears.
    assert any(f"Credential={CANARY_KEY}/" in r.getMessage() for r in ours if r.name == "botocore.endpoint")


def test_the_config_never_shows_credentials_and_refuses_them_in_uris(tmp_path: Path) -> None:
    options = {"key": CANARY_KEY, "secret": CANARY_SECRET, "client_kwargs": {"region_name": "us-east-1"}}
    config = PipelineConfig(input_uri="s3://in/videos", output_uri="s3://out/rows", model="m", s3_options=options)
    for shown in (repr(config), str(config), f"{config}", repr(config.replace(workers=2))):
        assert CANARY_KEY not in shown and CANARY_SECRET not in shown
    assert config.replace(workers=2).s3_options == options  # still used, just never shown
    bad = {
        "input_uri": f"s3://{CANARY_KEY}:{CANARY_SECRET}@bucket/in",
        "output_uri": f"s3://{CANARY_KEY}:{CANARY_SECRET}@bucket/out",
        "s3_endpoint_url": f"http://{CANARY_KEY}:{CANARY_SECRET}@127.0.0.1:9000",
    }
    for field, value in bad.items():
        with pytest.raises(ValueError, match=r"credentials|user name or password") as caught:
            PipelineConfig(**{"input_uri": "/in", "output_uri": "/out", "model": "m", field: value})
        assert CANARY_KEY not in str(caught.value) and CANARY_SECRET not in str(caught.value)
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"s3://{CANARY_KEY}:{CANARY_SECRET}@bucket/in/a.mp4\n")
    with pytest.raises(SourceError, match=r"'s3://\*\*\*@bucket/in/a.mp4': credentials in a URI are not accepted"):
        read_manifest(str(manifest))


# ---------------------------------------------------------------------------------------------------------
# Nothing is written outside the output prefix

ODD_NAMES = [
    "a..b.mp4",
    "vidéo 📼 ünïcode.mp4",
    "x" * 240 + ".mp4",
    "back\\slash.mp4",
    "new\nline.mp4",
    "pct%2F..%2Fescaped.mp4",
    "-rf.mp4",
    "_underscore.mp4",
]


def test_odd_file_names_and_manifest_columns_write_only_under_the_prefix(
    pipeline_model_dir: Path, engine: VideoQAEngine, assets: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ODD_NAMES:
        shutil.copy(assets / CLIP, inputs / name)
    shutil.copy(assets / CLIP, tmp_path / "outside.mp4")
    # A manifest may name files outside its folder when a prefix allows them, and may carry columns that look
    # like ours: they are carried in `extra` and never used for paths.
    manifest = inputs / "list.csv"
    table = pa.table(
        {
            "uri": [*ODD_NAMES, "../outside.mp4", "nul\0byte.mp4"],
            "video_id": ["../../../evil"] * (len(ODD_NAMES) + 2),
            "ledger_key": ["../../../evil"] * (len(ODD_NAMES) + 2),
            "partition": ["../.."] * (len(ODD_NAMES) + 2),
            "run_id": ["../../evil"] * (len(ODD_NAMES) + 2),
        }
    )
    pa_csv.write_csv(table, manifest)
    sources = read_manifest(str(manifest), allow_prefixes=[str(tmp_path)])
    assert len(sources) == len(ODD_NAMES) + 2
    assert all(len(s.video_id) == 40 and set(s.video_id) <= set("0123456789abcdef") for s in sources)
    assert {s.extra["video_id"] for s in sources} == {"../../../evil"}

    output = tmp_path / "a" / "b" / "c" / "out"
    before = files_under(tmp_path)
    for input_uri in (str(inputs), str(manifest)):  # a folder listing, then the manifest
        config = make_config(
            input_uri, str(output), pipeline_model_dir, partition="dt=2026-11-22", allow_prefixes=(str(tmp_path),)
        )
        entries = run_stages(config, engine)
        run_pipeline(config.replace(run_id="rerun"))  # nothing pending: writes the run manifest only
    statuses = {Path(e.source_uri).name: e.status for e in entries}
    assert statuses.pop("nul\0byte.mp4") == "error" and set(statuses.values()) == {"ok"}
    written = files_under(tmp_path) - before
    assert written and all(output in p.parents for p in written), sorted(map(str, written - {output}))
    parts = [p for p in written if p.name.startswith("part-")]
    assert len(parts) == len(ODD_NAMES) + 2 and {p.parent.name for p in parts} == {"dt=2026-11-22"}
    assert all(len(p.name) < 100 for p in written)


def test_odd_s3_keys_write_only_under_the_prefix(
    s3_server: str, pipeline_model_dir: Path, engine: VideoQAEngine, assets: Path
) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir("odd-keys")
    # (keys whose ".." would leave the manifest's prefix are refused: see test_an_s3_manifest_cannot_name_...)
    keys = ["in/x/../../in/evil.mp4", "in/a//double.mp4", "in/./dot.mp4", "in/vidéo 📼.mp4", "in/" + "k" * 900 + ".mp4"]
    keys.append("in/long-extension." + "y" * 300)  # object keys may have any "extension"
    for key in keys:
        fs.put_file(str(assets / CLIP), f"odd-keys/{key}")
    fs.pipe("odd-keys/list.txt", "".join(f"s3://odd-keys/{key}\n" for key in keys).encode())
    config = make_config(
        "s3://odd-keys/list.txt",
        "s3://odd-keys/results/out",
        pipeline_model_dir,
        s3_endpoint_url=s3_server,
        s3_options={"key": "testing", "secret": "testing"},
    )
    before = set(fs.find("odd-keys"))
    entries = run_stages(config, engine)
    run_pipeline(config.replace(run_id="rerun"))
    assert sorted(e.status for e in entries) == ["ok"] * len(keys)
    written = set(fs.find("odd-keys")) - before
    assert written and all(path.startswith("odd-keys/results/out/") for path in written), sorted(written)
    assert {path.split("/")[3][:5] for path in written} == {"part-", "_ledg", "_runs"}


@pytest.mark.parametrize("run_id", ["../../evil", "a/b", "..", ".hidden", "x\0y", "", "r" * 129])
def test_a_run_id_that_could_name_a_file_elsewhere_is_refused(
    run_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"run_id names the file _runs/<run_id>\.json"):
        PipelineConfig(input_uri=str(tmp_path), output_uri=str(tmp_path / "out"), model="m", run_id=run_id)
    if run_id:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: caption.main(["--input", str(tmp_path), "--output", str(tmp_path), "--run-id", run_id]))
        assert exit_info.value.code == 2 and "--run-id names the file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Only local files and s3 objects are read, whatever a manifest says


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/a.mp4",
        "https://example.com/a.mp4",
        "ftp://host/a.mp4",
        "gs://bucket/a.mp4",
        "hdfs://namenode/a.mp4",
        "javascript:alert(1)",
        "data:video/mp4;base64,AAAA",
        "s3a://bucket/a.mp4",
    ],
)
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifests_cannot_name_other_schemes(tmp_path: Path, uri: str, kind: str) -> None:
    (tmp_path / "good.mp4").write_bytes(b"x")
    table = pa.table({"uri": ["good.mp4", uri]})
    manifest = tmp_path / f"list.{kind}"
    if kind == "csv":
        pa_csv.write_csv(table, manifest)
    else:
        pq.write_table(table, manifest)
    scheme = uri.split(":", 1)[0]
    with pytest.raises(SourceError, match=rf"scheme '{scheme}' is not supported; use a local path, file://"):
        read_manifest(str(manifest))


# ---------------------------------------------------------------------------------------------------------
# A manifest reads only below its own folder, in its own bucket, unless --allow-prefix names more


@pytest.mark.parametrize(
    ("entry", "resolved"),
    [
        ("file:///etc/hostname", "'/etc/hostname'"),  # a local file of the worker
        ("/etc/hostname", "'/etc/hostname'"),
        ("../../other-bucket/secret.mp4", "'s3://other-bucket/secret.mp4'"),  # another bucket, same credentials
        ("../sibling/v.mp4", "'s3://confine/sibling/v.mp4'"),  # another prefix of the same bucket
        ("s3://other-bucket/secret.mp4", "'s3://other-bucket/secret.mp4'"),
        ("s3://confine/in/../../other-bucket/secret.mp4", "'s3://confine/in/../../other-bucket/secret.mp4'"),
        ("s3://confine/in/x/../../sibling/v.mp4", "'s3://confine/in/x/../../sibling/v.mp4'"),
    ],
)
def test_an_s3_manifest_cannot_name_local_files_or_other_buckets(s3_server: str, entry: str, resolved: str) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing", skip_instance_cache=True)
    for bucket in ("confine", "other-bucket"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    fs.pipe({"confine/in/ok.mp4": b"v", "other-bucket/secret.mp4": b"s", "confine/sibling/v.mp4": b"v"})
    fs.pipe("confine/in/list.txt", f"ok.mp4\n{entry}\n".encode())
    with pytest.raises(SourceError, match=r"--allow-prefix") as caught:
        read_manifest("s3://confine/in/list.txt", fs)
    message = str(caught.value)
    assert f"row 2 ({entry!r})" in message and resolved in message and "(s3://confine/in)" in message


def test_an_allowed_prefix_opens_exactly_that_prefix(s3_server: str, tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir("allowed")
    fs.pipe({"allowed/in/a.mp4": b"a", "allowed/videos/b.mp4": b"b", "allowed/videos-private/c.mp4": b"c"})
    fs.pipe("allowed/in/list.txt", b"a.mp4\n../videos/b.mp4\n")
    sources = read_manifest("s3://allowed/in/list.txt", fs, allow_prefixes=["s3://allowed/videos/"])
    assert [s.uri for s in sources] == ["s3://allowed/in/a.mp4", "s3://allowed/videos/b.mp4"]
    fs.pipe("allowed/in/list.txt", b"a.mp4\n../videos-private/c.mp4\n")  # a prefix ends at a "/"
    with pytest.raises(SourceError, match=r"videos-private/c\.mp4' is outside"):
        read_manifest("s3://allowed/in/list.txt", fs, allow_prefixes=["s3://allowed/videos"])
    (tmp_path / "local.mp4").write_bytes(b"l")
    fs.pipe("allowed/in/list.txt", f"a.mp4\nfile://{tmp_path / 'local.mp4'}\n".encode())
    assert len(read_manifest("s3://allowed/in/list.txt", fs, allow_prefixes=[str(tmp_path)])) == 2


def test_a_local_manifest_stays_in_its_folder_and_the_flag_opens_more(
    tmp_path: Path, pipeline_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lists, videos = tmp_path / "lists", tmp_path / "videos"
    lists.mkdir()
    videos.mkdir()
    (lists / "here.mp4").write_bytes(b"h")
    (videos / "there.mp4").write_bytes(b"t")
    manifest = lists / "list.csv"
    for entry in ("../videos/there.mp4", str(videos / "there.mp4"), "sub/../../videos/there.mp4", "s3://b/k.mp4"):
        manifest.write_text(f"uri\nhere.mp4\n{entry}\n")
        with pytest.raises(SourceError, match=rf"row 2 \({entry!r}\): .* is outside .* --allow-prefix"):
            list_sources(str(manifest))
    manifest.write_text("uri\nhere.mp4\n../videos/there.mp4\n")
    assert len(list_sources(str(manifest), allow_prefixes=[str(videos)])) == 2
    argv = ["--input", str(manifest), "--output", str(tmp_path / "out"), "--model", str(pipeline_model_dir)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: caption.main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "outside the manifest's own folder" in err and "--allow-prefix" in err
    config = PipelineConfig(input_uri=str(manifest), output_uri=str(tmp_path / "out"), model="m")
    assert config.replace(allow_prefixes=str(videos)).allow_prefixes == (str(videos),)
    with pytest.raises(SourceError, match="scheme 'gs' is not supported"):
        config.replace(allow_prefixes=("gs://bucket/x",))


# ---------------------------------------------------------------------------------------------------------
# Size and duration guards make error rows, not failures


@pytest.mark.parametrize(
    ("limit", "message"),
    [({"max_video_bytes": 1000}, "exceed max_bytes=1000"), ({"max_duration_s": 1.0}, "exceeds max_duration_s=1.0")],
)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_oversized_videos_become_one_error_row(
    where: str, limit: dict[str, float], message: str, assets: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if where == "local":
        shutil.copy(assets / CLIP, tmp_path / CLIP)
        config = make_config(str(tmp_path), str(tmp_path / "out"), Path("unused"), **limit)
    else:
        endpoint = request.getfixturevalue("s3_server")
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
        bucket = f"guard-{tmp_path.name.replace('_', '-').lower()[-40:]}"
        fs.mkdir(bucket)
        fs.put_file(str(assets / CLIP), f"{bucket}/in/{CLIP}")
        options = {"s3_endpoint_url": endpoint, "s3_options": {"key": "testing", "secret": "testing"}}
        config = make_config(f"s3://{bucket}/in", str(tmp_path / "out"), Path("unused"), **options, **limit)
    (source,) = list_sources(config.input_uri, config.storage.fsspec(config.input_uri))
    (row,) = decode_rows(source_row(source, config.config_key(), config.questions), config.decoding, frame_size=32)
    assert (row["error_class"], row["segment_index"], row["frames"]) == ("TooLarge", None, b"")
    assert message in row["error_message"] and row["source_uri"] == source.uri
