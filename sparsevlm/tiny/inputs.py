"""Model inputs for the tiny Video-LLaVA: frame normalisation and the prompt format.

The torchvision-free path of environment.md: frames arrive at model resolution, so CLIP's resize and centre
crop are the identity and preprocessing is only ``(frames / 255 - mean) / std``.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sparsevlm.preprocess import normalize_uint8
from sparsevlm.prompt_text import build_prompt  # the one prompt format, training and inference
from sparsevlm.token_counts import video_tokens_per_frame

__all__ = ["encode_prompts", "normalize_frames"]


def normalize_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """CLIP-normalise uint8 frames that are already at model resolution (the engine's exact arithmetic).

    Args:
        frames: uint8 ``[T, H, W, 3]`` or ``[B, T, H, W, 3]``.

    Returns:
        float32 ``[T, 3, H, W]`` or ``[B, T, 3, H, W]``, ready as (a row of) ``pixel_values_videos``.
    """
    return normalize_uint8(np.asarray(frames))


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    frames: list[np.ndarray],
    patch: int,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Tokenise one single-turn prompt per video and normalise the frames.

    Args:
        tokenizer: the tiny tokenizer (prepends ``<s>``).
        questions: B question strings.
        frames: B uint8 arrays ``[T, H, W, 3]`` with the same T, H and W.
        patch: the vision tower's patch size.
        padding_side: "left" for ``generate`` and for reading the next token at position -1.

    Returns:
        ``input_ids`` and ``attention_mask`` long ``[B, L]`` and ``pixel_values_videos`` float32
        ``[B, T, 3, H, W]``.
    """
    num_frames, size = frames[0].shape[0], frames[0].shape[1]
    count = num_frames * video_tokens_per_frame(size, patch)
    prompts = [build_prompt(q, count) for q in questions]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side=padding_side)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values_videos": normalize_frames(np.stack(frames)),
    }
