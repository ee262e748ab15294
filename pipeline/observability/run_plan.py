"""What a run would do, without doing it (``--dry-run``): each listed video's state, and the cost estimate.

A video's state follows the ledger exactly as a run decides it (:meth:`~pipeline.commit.ledger.Ledger.pending`):

* ``done``: its ledger key (this version of the video, this config, these questions) is committed; skipped.
* ``retry``: committed with error rows, and ``retry_errors`` is set; processed again.
* ``changed``: not committed, but rows of the same URI are (another version of the video: its size, ETag
  or mtime changed; or another model, SparseConfig, segmenting or question list); processed.
* ``new``: nothing of this URI is committed; processed.

The estimate is token arithmetic, no model runs (:func:`sparsevlm.bench.presets.config_cost`, the same
formulas as the rows' ``equivalent_tokens`` and ``prefill_flops``): per prompt, the visual tokens of one
segment (frames x tokens per frame), the equivalent tokens the SparseConfig keeps, and the prefill FLOPs with
and without pruning on the checkpoint's layer count and widths; per segment, the sum over the prompts (the
caption and each question). The number of segments is known only once a video is decoded (``duration /
segment_seconds``, or its shots), so run totals are given only when each video is one segment. Pooling or temporal
merging before the language model is not modelled, and rank mode assumes rank(P) = 10.

Planning reads the model's config and tokenizer files, lists the input and reads the ledger; it starts no Ray,
loads no weights and writes nothing (no lease either: a running job may commit more meanwhile). It imports
neither torch nor transformers (seconds of start-up): the config is read as JSON
(:func:`sparsevlm.checkpoint.read_checkpoint`) and the prompts are counted with the ``tokenizers`` library on the
checkpoint's ``tokenizer.json``, in the two pieces :func:`sparsevlm.prompt.encode_text` sends (the same ids,
tested on the bundled and a LLaMA tokenizer).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.commit.ledger import Ledger
from pipeline.config import PipelineConfig
from pipeline.stages.decode import source_row
from pipeline.stages.schema import LEDGER_KEY
from pipeline.stages.sources import list_sources
from pipeline.stages.summary import summary_work
from sparsevlm.bench.presets import CostLayout, config_cost
from sparsevlm.checkpoint import CheckpointInfo, read_checkpoint
from sparsevlm.prompt_text import PROMPT_HEAD, prompt_tail

__all__ = ["PlannedVideo", "VideoState", "plan_run"]

VideoState = Literal["new", "changed", "retry", "done"]
PROCESSED_STATES: tuple[VideoState, ...] = ("new", "changed", "retry")


@dataclass(frozen=True)
class PlannedVideo:
    """One listed video and what a run would do with it."""

    source_uri: str
    video_id: str
    size: int | None
    questions: int  # questions asked of each of its segments (the run's and its manifest row's)
    state: VideoState


def plan_run(config: PipelineConfig) -> dict[str, Any]:
    """The dry run of ``config``: counts per state, bytes to read, the estimate, and every listed video.

    Raises:
        CheckpointError: ``config.model`` is not a readable Video-LLaVA checkpoint.
        SourceError: the input names no videos (or a manifest entry outside its folder).
    """
    checkpoint = read_checkpoint(config.model)
    config = config.resolved()  # the checkpoint's revision: the keys the run would compute
    sources = list_sources(
        config.input_uri, config.storage.fsspec(config.input_uri), allow_prefixes=config.allow_prefixes
    )
    key = config.config_key()
    items = [source_row(s, key, config.questions) for s in sources]
    ledger = Ledger(*config.output.filesystem(), partition=config.partition)
    done = ledger.committed()  # one listing for the states and the summaries
    videos = _states(config, items, ledger, done)
    counts = Counter(v.state for v in videos)
    to_process = [v for v in videos if v.state in PROCESSED_STATES]
    summaries: dict[str, Any] = {}
    if config.summarize:  # of the videos already committed; new ones' segments are known once decoded
        work, _ = summary_work(config.summary_prompt, config.retry_errors, [i[LEDGER_KEY] for i in items], ledger, done)
        summaries = {"of_committed_videos": len(work)}
    return {
        "dry_run": True,
        "input": config.input_uri,
        "output": config.output_uri,
        "config_key": key,
        "seen": len(videos),
        **{state: counts.get(state, 0) for state in ("new", "changed", "retry", "done")},
        "to_process": len(to_process),
        "bytes_to_read": sum(v.size or 0 for v in to_process),
        "estimate": _estimate(config, checkpoint, to_process),
        "videos": [asdict(v) for v in videos],
        "summaries": summaries,
    }


def _states(
    config: PipelineConfig, items: list[dict[str, Any]], ledger: Ledger, done: dict[str, str]
) -> list[PlannedVideo]:
    pending = set(ledger.pending([i[LEDGER_KEY] for i in items], config.retry_errors, done))
    seen_uris = {entry.source_uri for entry in ledger.entries(done).values()}
    videos = []
    for item in items:
        key = item[LEDGER_KEY]
        if key not in pending:
            state: VideoState = "done"
        elif key in done:
            state = "retry"
        else:
            state = "changed" if item["source_uri"] in seen_uris else "new"
        size = item["source_size"]
        videos.append(PlannedVideo(item["source_uri"], item["video_id"], size, len(item["questions"]), state))
    return videos


def _segments_per_video(config: PipelineConfig) -> int | str:
    """How many segments a video gives, as far as the plan can tell before decoding."""
    if config.shots is not None:
        shots = config.shots
        return f"one per shot, {shots.min_segment_seconds:g} to {shots.max_segment_seconds:g} s (known once decoded)"
    if config.segment_seconds is None:
        return 1
    return f"duration / {config.segment_seconds:g} s (known once decoded)"


def text_tokens(tokenizer_file: Path, question: str) -> int:
    """How many text tokens the engine sends around the video for ``question``: the head with ``<s>``, then the
    tail without special tokens, as :func:`sparsevlm.prompt.encode_text` tokenizes them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    head = tokenizer.encode(PROMPT_HEAD).ids
    tail = tokenizer.encode(prompt_tail(question), add_special_tokens=False).ids
    return len(head) + len(tail)


def _estimate(config: PipelineConfig, checkpoint: CheckpointInfo, to_process: list[PlannedVideo]) -> dict[str, Any]:
    """Tokens and FLOPs per prompt and per segment of the run's prompts; totals when a video is one segment."""
    sparse = config.sparse
    n_visual = config.frames_per_segment * checkpoint.spec.tokens_per_frame
    tokenizer = checkpoint.tokenizer_file
    prompts = [config.caption_prompt, *config.questions]
    costs = []
    for prompt in prompts:
        layout = CostLayout(
            num_layers=checkpoint.num_layers,
            hidden=checkpoint.hidden_size,
            ffn=checkpoint.intermediate_size,
            n_visual=n_visual,
            n_text=text_tokens(tokenizer, prompt) if tokenizer is not None else 0,
        )
        costs.append(config_cost(sparse, layout))
    segment_flops = sum(c.prefill_flops for c in costs)
    dense_flops = sum(c.dense_prefill_flops for c in costs)
    whole_videos = config.segment_seconds is None and config.shots is None
    # Each prompt of a segment keeps the same tokens; a manifest's extra questions cost what the caption does.
    prompts_to_run = sum(1 + v.questions for v in to_process)
    per_prompt = segment_flops / len(costs)
    return {
        "sparse_config": sparse.name if sparse.name != "custom" else sparse.to_json(),
        "language_layers": checkpoint.num_layers,
        "visual_tokens_per_segment": n_visual,
        "equivalent_tokens_per_prompt": costs[0].equivalent_tokens,
        "kept_fraction": costs[0].fraction,
        "prompts_per_segment": len(prompts),
        "prefill_flops_per_segment": segment_flops,
        "dense_prefill_flops_per_segment": dense_flops,
        "flops_ratio": round(segment_flops / dense_flops, 4) if dense_flops else 1.0,
        "segments_per_video": _segments_per_video(config),
        "prompts_to_run": prompts_to_run if whole_videos else None,
        "prefill_flops_to_run": prompts_to_run * per_prompt if whole_videos else None,
        "note": "; ".join(
            filter(
                None,
                [
                    costs[0].note,
                    "pooling and temporal merging before the LLM not modelled",
                    None if tokenizer is not None else "no tokenizer.json: text tokens not counted",
                ],
            )
        ),
    }
