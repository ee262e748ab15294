"""The project's own small Video-LLaVA: synthetic video QA generator, trainer, committed checkpoint."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
