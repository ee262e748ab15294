"""Per-family answer accuracy of a Video-LLaVA on the synthetic video QA task.

The greedy answer is the argmax of the first answer token after the exact single-turn prompt
``"USER: <video>\\n{question} ASSISTANT:"``; every answer word is one token, so this is the answer
``generate`` would start with.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from transformers import CLIPVisionConfig, PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.tiny.hard_qa import QuestionSplit, families, make_task_sample
from sparsevlm.tiny.inputs import encode_prompts


@torch.no_grad()
def predict_first_tokens(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    frames: list[np.ndarray],
    patch: int,
    bf16: bool = True,
) -> list[int]:
    """Greedy first answer token for each (question, video) pair.

    Args:
        model: the Video-LLaVA.
        tokenizer: its tokenizer.
        questions: B question strings.
        frames: B uint8 arrays ``[T, H, W, 3]``.
        patch: the vision tower's patch size.
        bf16: run under bfloat16 autocast (about 3x faster on CPU).

    Returns:
        B token ids.
    """
    enc = encode_prompts(tokenizer, questions, frames, patch, padding_side="left")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(**enc, logits_to_keep=1).logits  # [B, 1, V]
    return logits[:, -1].argmax(dim=-1).tolist()


def family_accuracy(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    num_videos: int,
    num_frames: int = 8,
    batch_size: int = 32,
    bf16: bool = True,
    question_split: QuestionSplit = "easy",
) -> dict[str, float]:
    """Dense accuracy per question family over the first ``num_videos`` videos of ``split``.

    Args:
        model: the Video-LLaVA (put in eval mode by the caller).
        tokenizer: its tokenizer.
        split: "train", "val" or "test".
        num_videos: videos to ask every question of.
        num_frames: frames per video.
        batch_size: prompts per forward pass.
        bf16: run under bfloat16 autocast.
        question_split: "easy" (:mod:`sparsevlm.tiny.video_qa`) or "hard" (:mod:`sparsevlm.tiny.hard_qa`).

    Returns:
        family -> accuracy in [0, 1], for every family that occurred, plus "all" over every question.
    """
    vision = model.config.vision_config
    size = vision.image_size if isinstance(vision, CLIPVisionConfig) else None
    patch = vision.patch_size if isinstance(vision, CLIPVisionConfig) else None
    if not isinstance(size, int) or not isinstance(patch, int):
        raise TypeError(f"expected a CLIP vision tower with square images, got {vision!r}")
    samples = [
        make_task_sample(question_split, split, i, num_frames=num_frames, size=size, patch=patch)
        for i in range(num_videos)
    ]
    pairs = [(s, qa) for s in samples for qa in s.questions]
    correct: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        predicted = predict_first_tokens(
            model, tokenizer, [qa.question for _, qa in chunk], [s.frames for s, _ in chunk], patch, bf16
        )
        for (_, qa), token in zip(chunk, predicted, strict=True):
            expected = tokenizer.encode(f" {qa.answer}", add_special_tokens=False)[0]
            correct[qa.family].append(token == expected)
    result = {f: sum(correct[f]) / len(correct[f]) for f in families(question_split) if correct[f]}
    result["all"] = sum(sum(v) for v in correct.values()) / max(1, len(pairs))
    return result
