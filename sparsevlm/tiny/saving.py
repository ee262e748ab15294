"""Write a training checkpoint so that it can be read, copied or continued at any moment.

The trainer saves at every evaluation, not only at the end, so a run that is stopped (or outlives a session)
leaves its newest weights, metrics.json and learning curve in its ``--out`` directory. Files are written into a
sibling staging directory first and then moved in one by one with ``os.replace``, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

PROVENANCE_KEYS: tuple[str, ...] = ("command", "steps", "train_videos_seen", "wall_time_s", "cpu_time_s")


def init_provenance(init: str | Path) -> list[dict[str, object]]:
    """The runs a checkpoint continued from, oldest first (from their metrics.json), so that its
    metrics.json says every command that made it; empty for a run from random weights."""
    if not init or not (Path(init) / "metrics.json").is_file():
        return []
    previous = json.loads((Path(init) / "metrics.json").read_text())
    run = {k: previous.get(k) for k in PROVENANCE_KEYS if k in previous}
    return [*previous.get("init_from", []), run]


def save_checkpoint(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    metrics: dict[str, object],
    curve: Path | None = None,
) -> None:
    """Save the model, its tokenizer, ``metrics`` as metrics.json and a copy of the learning curve.

    Args:
        model: the Video-LLaVA (saved as a plain checkpoint; training-only heads are not part of it).
        tokenizer: its tokenizer.
        out_dir: the checkpoint directory; created if missing, its files replaced.
        metrics: written as ``out_dir/metrics.json``.
        curve: a JSON-lines learning curve to copy as ``out_dir/curve.jsonl`` (skipped when it is that file).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(out_dir.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    target_curve = out_dir / "curve.jsonl"
    if curve is not None and curve.is_file() and curve.resolve() != target_curve.resolve():
        shutil.copyfile(curve, staging / "curve.jsonl")
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()
