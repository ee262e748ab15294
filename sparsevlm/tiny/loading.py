"""Load the bundled tiny Video-LLaVA, or build an untrained one when no checkpoint is there."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.tiny import CHECKPOINT_DIR
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)


def load_tiny(
    path: str | Path | None = None, allow_random: bool = True
) -> tuple[VideoLlavaForConditionalGeneration, PreTrainedTokenizerBase, bool]:
    """The tiny model and its tokenizer.

    Args:
        path: a checkpoint directory; None means the bundled one.
        allow_random: build an untrained model when the directory has no checkpoint.

    Returns:
        ``(model, tokenizer, trained)``; ``trained`` is False for a random model.
    """
    directory = Path(path) if path is not None else CHECKPOINT_DIR
    if (directory / "config.json").exists():
        model = VideoLlavaForConditionalGeneration.from_pretrained(str(directory), trust_remote_code=False).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        return model, tokenizer, True
    if not allow_random:
        raise FileNotFoundError(f"no Video-LLaVA checkpoint (config.json) in {directory}")
    logger.warning("no checkpoint in %s: using an untrained tiny model", directory)
    tokenizer = build_tokenizer()
    return build_model(TinyModelConfig(), tokenizer).eval(), tokenizer, False
