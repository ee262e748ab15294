"""The project's own small Video-LLaVA: synthetic video QA generator, trainer, committed checkpoints."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
# The 16-layer model grown from CHECKPOINT_DIR and trained with the text loss (README, "The bundled tiny model").
DEEP_CHECKPOINT_DIR = Path(__file__).parent / "checkpoint_deep"
# Names a user can give instead of a directory (``--model tiny-deep``).
BUNDLED_MODELS: dict[str, Path] = {"tiny": CHECKPOINT_DIR, "tiny-deep": DEEP_CHECKPOINT_DIR}
