"""The project's own small Video-LLaVA: synthetic video QA generator, trainer, committed checkpoints."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
# The 32-layer model grown from CHECKPOINT_DIR (4 -> 16 -> 32 layers) and trained with the text and naming losses
# (docs/tiny-model.md, "The deep bundled model").
DEEP_CHECKPOINT_DIR = Path(__file__).parent / "checkpoint_deep"
# Names a user can give instead of a directory (``--model tiny-deep``).
BUNDLED_MODELS: dict[str, Path] = {"tiny": CHECKPOINT_DIR, "tiny-deep": DEEP_CHECKPOINT_DIR}
