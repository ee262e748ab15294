"""The project's own small Video-LLaVA: synthetic video QA generator, trainer, committed checkpoints.

This module is torch-free: the jobs' command lines name the bundled checkpoints without loading anything.
"""

from pathlib import Path

__all__ = [
    "BUNDLED_LABELS",
    "BUNDLED_MODELS",
    "BUNDLED_NOTE",
    "BUNDLED_REPEAT_STOP",
    "CHECKPOINT_DIR",
    "DEEP_CHECKPOINT_DIR",
    "bundled_label",
    "resolve_model",
]

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
# The 32-layer model grown from CHECKPOINT_DIR (4 -> 16 -> 32 layers) and trained with the text and naming losses
# (docs/tiny-model.md, "The deep bundled model").
DEEP_CHECKPOINT_DIR = Path(__file__).parent / "checkpoint_deep"
# Names a user can give instead of a directory (``--model tiny-deep``) to the benchmarks and the trainer.
BUNDLED_MODELS: dict[str, Path] = {"tiny": CHECKPOINT_DIR, "tiny-deep": DEEP_CHECKPOINT_DIR}
# What results call the bundled checkpoints (rows' model_id, the run summary, the report page) and what the
# jobs' --model accepts for them: a name that says what the model is, never a path inside this checkout.
BUNDLED_LABELS: dict[str, Path] = {"bundled:tiny-synthetic": CHECKPOINT_DIR, "bundled:tiny-deep": DEEP_CHECKPOINT_DIR}
# The bundled models know only their synthetic shapes; on real video greedy decoding loops ("square square
# ..."), so the jobs stop an answer once it ends with the same 1-3 tokens twice (sparsevlm/repetition.py).
BUNDLED_REPEAT_STOP = 3
# One line for every place that shows the bundled models' output (the run's log, the report page).
BUNDLED_NOTE = (
    "a bundled toy model trained only on synthetic clips of coloured shapes: its answers name a colour, a shape, "
    "a count or a direction, never what a real video shows; for real answers use --model "
    "LanguageBind/Video-LLaVA-7B-hf on a GPU"
)


def resolve_model(model: str) -> str:
    """The checkpoint directory or hub id that ``model`` names: a ``bundled:`` label becomes its directory.

    Raises:
        ValueError: ``model`` starts with ``bundled:`` but names no bundled checkpoint.
    """
    if not model.startswith("bundled:"):
        return model
    if model not in BUNDLED_LABELS:
        raise ValueError(f"model {model!r} is not a bundled checkpoint; bundled ones: {', '.join(BUNDLED_LABELS)}")
    return str(BUNDLED_LABELS[model])


def bundled_label(model: str) -> str | None:
    """The ``bundled:`` label of a checkpoint directory (or label) of this checkout, None for any other model."""
    if model in BUNDLED_LABELS:
        return model
    if model.startswith(("s3://", "http://", "https://")):
        return None
    path = Path(model).expanduser().resolve()
    return next((label for label, directory in BUNDLED_LABELS.items() if directory.resolve() == path), None)
