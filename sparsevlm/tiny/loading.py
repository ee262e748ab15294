"""Load a bundled tiny Video-LLaVA (by name or directory), or build an untrained one when no checkpoint is there."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.tiny import BUNDLED_MODELS
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)


def load_tiny(
    path: str | Path | None = None, allow_random: bool = True
) -> tuple[VideoLlavaForConditionalGeneration, PreTrainedTokenizerBase, bool]:
    """The tiny model and its tokenizer.

    Args:
        path: a checkpoint directory, or the name of a bundled model (a key of ``BUNDLED_MODELS``: "tiny",
            "tiny-deep"); None means "tiny".
        allow_random: build an untrained model when the directory has no checkpoint (never for "tiny-deep":
            a random 4-layer stand-in would not be the model asked for).

    Returns:
        ``(model, tokenizer, trained)``; ``trained`` is False for a random model.

    Raises:
        FileNotFoundError: when there is no checkpoint and a random model is not allowed.
    """
    name = str(path) if path is not None else "tiny"
    directory = BUNDLED_MODELS[name] if name in BUNDLED_MODELS else Path(name)
    if name in BUNDLED_MODELS and name != "tiny":
        allow_random = False
    if (directory / "config.json").exists():
        model = VideoLlavaForConditionalGeneration.from_pretrained(str(directory), trust_remote_code=False).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        return model, tokenizer, True
    if not allow_random:
        raise FileNotFoundError(
            f"no Video-LLaVA checkpoint (config.json) in {directory} for model {name!r}; give a checkpoint directory "
            f"or one of {sorted(BUNDLED_MODELS)} whose checkpoint is in this checkout"
        )
    logger.warning("no checkpoint in %s: using an untrained tiny model", directory)
    tokenizer = build_tokenizer()
    return build_model(TinyModelConfig(), tokenizer).eval(), tokenizer, False
