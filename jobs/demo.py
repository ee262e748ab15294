"""`make demo`: the embedded default, end to end on this machine with nothing running and no cloud.

    python -m jobs.demo [--videos N] [--s3] [--keep DIR]

1. Says what the bundled tiny model can answer (one-word answers to the question families it was trained on)
   and what it cannot (captions, real video).
2. Writes N synthetic test videos (moving shapes, whose true answers are known) as MP4 files, plus a real clip.
3. Starts a local Ray on loopback (and, with --s3, a local S3-compatible server holding input and output).
4. Runs the pipeline with the bundled tiny Video-LLaVA under the `video-25` preset: a caption and two
   standard questions per segment, written as Parquet. A generation that only repeats itself stops
   (`repeat_stop`: the answer keeps the first copy of the repeated words).
5. Prints the rows and the run summary; then a dense-vs-sparse comparison of the method itself on the same
   kind of videos (answers, tokens, FLOPs side by side).
6. Stops what it started (with --s3, after copying the results out of the server), and ends with where its
   videos and results stay and commands that read them with what the venv holds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.logs import configure_logging, route_ray_logs
from jobs.summaries import format_summary
from pipeline.ray_env import use_local_ray_env
from sparsevlm.tiny import BUNDLED_REPEAT_STOP

QUESTIONS = ("how many objects are there?", "is there a red square?")
REAL_CLIP = Path(__file__).resolve().parent.parent / "tests" / "assets" / "decord_flipping_a_pancake.mkv"


def write_synthetic_videos(folder: Path, count: int) -> dict[str, dict[str, str]]:
    """Encode test-split synthetic videos as H.264 MP4 (8 frames at 8 fps); returns the true answers per file."""
    import av

    from sparsevlm.tiny.video_qa import COUNT_WORDS, make_sample

    truths = {}
    for i in range(count):
        sample = make_sample("test", 900_000 + i)
        path = folder / f"synthetic_{i:02d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height = sample.frames.shape[2], sample.frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "4", "preset": "veryfast"}
            for frame in sample.frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        names = {o.name for o in sample.objects}
        truths[path.name] = {
            QUESTIONS[0]: COUNT_WORDS[len(sample.objects)],
            QUESTIONS[1]: "yes" if "red square" in names else "no",
        }
    return truths


def describe_bundled_model() -> str:
    """What the bundled tiny model was trained to answer, from the generator of its training data."""
    from sparsevlm.tiny.video_qa import ANSWER_WORDS, FAMILIES, make_sample

    examples: dict[str, str] = {}
    index = 0
    while len(examples) < len(FAMILIES) and index < 200:  # the first test clips cover every family
        for qa in make_sample("test", index).questions:
            examples.setdefault(qa.family, qa.question)
        index += 1
    families = "\n".join(f"  {family:<9} e.g. {examples.get(family, '?')!r}" for family in FAMILIES)
    return (
        "The bundled model is a tiny Video-LLaVA trained only on synthetic clips of coloured shapes moving over a\n"
        "grey background (sparsevlm/tiny/video_qa.py). It answers these question families with one word:\n"
        f"{families}\n"
        f"Every answer is one of: {' '.join(ANSWER_WORDS)}.\n"
        "It cannot caption, and it knows nothing of real video: for 'describe the video.' and on the real clip it\n"
        "still answers with shape and colour words, and greedy decoding tends to repeat them. The run stops an\n"
        f"answer once it ends with the same 1-{BUNDLED_REPEAT_STOP} tokens twice in a row and keeps the first\n"
        f"copy (--repeat-stop {BUNDLED_REPEAT_STOP}, the jobs' default for the bundled models), so 'square square\n"
        "square' is written as 'square'. For real answers run a real checkpoint (--model\n"
        "LanguageBind/Video-LLaVA-7B-hf on a GPU; README, 'The real checkpoint').\n"
    )


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """The demo's pipeline run: whether it succeeded, where its results are kept, and its run id."""

    ok: bool
    results: Path
    run_id: str


def run_pipeline_demo(work: Path, count: int, use_s3: bool) -> DemoRun:
    """Run the pipeline on synthetic videos and a real clip into ``work``; print its rows and summary."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    from pipeline.config import PipelineConfig
    from pipeline.ray_env import local_ray
    from pipeline.run import run_pipeline
    from sparsevlm.config import SparseConfig

    inputs = work / "videos"
    inputs.mkdir()
    truths = write_synthetic_videos(inputs, count)
    if REAL_CLIP.exists():
        shutil.copy(REAL_CLIP, inputs / REAL_CLIP.name)
    server = None
    input_uri, output_uri, s3_options, endpoint = str(inputs), str(work / "results"), {}, None
    if use_s3:
        server, endpoint = _start_s3(inputs)
        input_uri, output_uri = "s3://demo-videos/", "s3://demo-results/run/"
        s3_options = {"key": "demo", "secret": "demo"}
    ray_session = contextlib.ExitStack()
    try:
        ray_session.enter_context(local_ray(cpus=2))
        config = PipelineConfig(
            input_uri=input_uri,
            output_uri=output_uri,
            model=str(_model_dir(work)),
            questions=QUESTIONS,
            frames_per_segment=8,
            max_new_tokens=12,
            repeat_stop=BUNDLED_REPEAT_STOP,
            sparse=SparseConfig.preset("video-25"),
            s3_endpoint_url=endpoint,
            s3_options=s3_options,
        )
        print(f"input: {input_uri} ({count} synthetic videos + {REAL_CLIP.name})\noutput: {output_uri}\n")
        summary = run_pipeline(config)
        fs, base = config.output.filesystem()
        table = (
            ds.dataset(base, filesystem=fs, format="parquet")
            .to_table()
            .sort_by([("source_uri", "ascending"), ("segment_index", "ascending"), ("task", "ascending")])
        )
        rows = []
        for r in table.to_pylist():
            name = r["source_uri"].rsplit("/", 1)[-1]
            truth = truths.get(name, {}).get(r["question"] or "", "")
            answer = r["answer"] if r["status"] == "ok" else f"[{r['error_class']}]"
            span = f"{r['segment_start_s']:.1f}-{r['segment_end_s']:.1f}s" if r["segment_start_s"] is not None else ""
            rows.append(
                [name, span, r["task"], r["question"] or "-", answer, truth, f"{r['equivalent_tokens'] or 0:.0f}"]
            )
        _print_table(["video", "segment", "task", "question", "answer", "truth", "equiv tokens"], rows)
        print()
        print(format_summary(dataclasses.asdict(summary)))
        results = work / "results"
        if use_s3:  # the S3 server stops with the demo: keep a local copy that the commands below can read
            pafs.copy_files(base, str(results), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            print(f"\nthe S3 output ({output_uri} at {endpoint}) goes with the demo; a copy is in {results}")
        return DemoRun(summary.status == "ok", results, config.run_id)
    finally:
        ray_session.close()
        if server is not None:
            server.stop()


def query_commands(results: Path, run_id: str) -> list[str]:
    """Commands that read the demo's results with what the venv holds (pandas, pyarrow, DuckDB's Python package),
    run from the repository root; the last opens the run's report page."""
    python = _python()
    return [
        f"{python} -c \"import pandas as pd; print(pd.read_parquet('{results}')"
        "[['source_uri', 'task', 'question', 'answer']].to_string())\"",
        f'{python} -c "import duckdb; print(duckdb.sql(\\"select task, count(*) from read_parquet('
        f"'{results}/**/*.parquet') group by task\\\"))\"",
        f"xdg-open {results / '_runs' / (run_id + '.html')}   # the run's report page, in any browser",
    ]


def _python() -> str:
    """This interpreter as a user types it: ``.venv/bin/python`` from the repository root, else its full path."""
    here = Path(sys.executable)
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def _model_dir(work: Path) -> Path:
    """The bundled checkpoint, or an untrained tiny model saved for the run when none is bundled."""
    from sparsevlm.tiny import CHECKPOINT_DIR
    from sparsevlm.tiny.loading import load_tiny

    if (CHECKPOINT_DIR / "config.json").exists():
        return CHECKPOINT_DIR
    print("NOTE: no bundled checkpoint; the pipeline runs an UNTRAINED tiny model (answers are noise)")
    model, tokenizer, _ = load_tiny()
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return work / "model"


def _start_s3(inputs: Path) -> tuple[Any, str]:
    """A moto S3 server on 127.0.0.1 with the input videos uploaded."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="demo", aws_secret_access_key="demo", region_name="us-east-1"
    )
    for bucket in ("demo-videos", "demo-results"):
        client.create_bucket(Bucket=bucket)
    for path in inputs.iterdir():
        client.upload_file(str(path), "demo-videos", path.name)
    return server, endpoint


def compare_dense_sparse(samples: int, presets: list[str]) -> None:
    """The method up close: dense vs presets on synthetic videos, answers and costs side by side."""
    import torch

    from sparsevlm import SparseConfig, apply_patch, last_stats
    from sparsevlm.tiny.inputs import encode_prompts
    from sparsevlm.tiny.loading import load_tiny
    from sparsevlm.tiny.video_qa import make_sample

    torch.manual_seed(0)
    model, tokenizer, trained = load_tiny()
    patch = model.config.vision_config.patch_size
    print(f"\nmodel: {'bundled trained tiny Video-LLaVA' if trained else 'UNTRAINED random tiny Video-LLaVA'}")
    items = [make_sample("test", i) for i in range(samples)]
    qas = [s.questions[i % len(s.questions)] for i, s in enumerate(items)]
    inputs = encode_prompts(tokenizer, [q.question for q in qas], [s.frames for s in items], patch)
    answers: dict[str, list[str]] = {}
    costs = []
    for name in ["dense", *presets]:
        apply_patch(model, SparseConfig.preset(name))
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        elapsed = time.perf_counter() - began
        answers[name] = [
            tokenizer.decode(r, skip_special_tokens=True).strip() for r in out[:, inputs["input_ids"].shape[1] :]
        ]
        stats = last_stats(model)
        visual = statistics.mean(s.visual_tokens_in for s in stats)
        equiv = statistics.mean(s.equivalent_tokens for s in stats)
        ratio = statistics.mean(s.flops_ratio for s in stats)
        costs.append(
            [
                name,
                f"{visual:.0f}",
                f"{equiv:.1f}",
                f"{100 * equiv / visual:.1f}",
                f"{ratio:.3f}",
                f"{1000 * elapsed:.0f}",
            ]
        )
    rows = [[q.family, q.question, q.answer, *(answers[n][i] for n in answers)] for i, q in enumerate(qas)]
    _print_table(["family", "question", "truth", *answers], rows)
    print()
    _print_table(
        ["preset", "visual tokens", "equivalent tokens", "% kept", "prefill FLOPs ratio", "generate ms"], costs
    )
    for name in answers:
        correct = sum(a == q.answer for a, q in zip(answers[name], qas, strict=True))
        print(f"{name}: {correct}/{len(qas)} correct")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    use_local_ray_env()  # before anything imports Ray (the commands that need one start it locally)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6, help="synthetic videos for the pipeline run")
    parser.add_argument("--s3", action="store_true", help="read and write through a local S3-compatible server")
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="where the demo writes its videos and results, kept after it ends (default: a new folder under "
        f"{tempfile.gettempdir()})",
    )
    parser.add_argument("--samples", type=int, default=8, help="videos for the dense-vs-sparse comparison")
    parser.add_argument("--presets", nargs="+", default=["video-25", "video-xf-25", "video-10", "video-rank"])
    ns = parser.parse_args(argv)
    configure_logging("text")  # the jobs' quiet logs: Ray's notes an operator cannot act on are left out
    route_ray_logs()
    from sparsevlm import SparseConfig

    for name in ns.presets:
        SparseConfig.preset(name)  # fail early on a typo
    work = Path(ns.keep) if ns.keep else Path(tempfile.mkdtemp(prefix="svl-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(describe_bundled_model())
    run = run_pipeline_demo(work, ns.videos, ns.s3)
    compare_dense_sparse(ns.samples, ns.presets)
    print(f"\nthe demo's videos and results stay in {work}; read the results (from the repository root):")
    for command in query_commands(run.results, run.run_id):
        print(f"  $ {command}")
    if not run.ok:
        raise SystemExit(f"the demo's pipeline run failed; its record and report page are under {run.results}")


if __name__ == "__main__":
    main()
