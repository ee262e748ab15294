"""Tiny random Video-LLaVA models built in code (the transformers-tests template: CPU, a second each)."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

from sparsevlm.token_counts import video_tokens_per_frame

VIDEO_TOKEN = 99
IMAGE_TOKEN = 98
PAD = 0
VOCAB = 100


def build_model(
    attn: str = "sdpa",
    image_size: int = 32,
    patch: int = 8,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    init: float = 0.15,
) -> VideoLlavaForConditionalGeneration:
    """A random Video-LLaVA with peaked attention (a larger init range than the default 0.02)."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        initializer_range=init,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=init,
    )
    config = VideoLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
    )
    config._attn_implementation = attn
    model = VideoLlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn)
    return model


def tokens_per_frame(model: VideoLlavaForConditionalGeneration) -> int:
    vision = model.config.vision_config
    return video_tokens_per_frame(vision.image_size, vision.patch_size)


def build_inputs(
    model: VideoLlavaForConditionalGeneration,
    question_lens: list[int],
    frames: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A left-padded batch: ``[bos, 5, 6, <video>*n, question..., 7]`` with a question length per row."""
    gen = torch.Generator().manual_seed(seed)
    n_video = frames * tokens_per_frame(model)
    rows = []
    for q_len in question_lens:
        question = torch.randint(10, 90, (q_len,), generator=gen).tolist()
        rows.append([1, 5, 6] + [VIDEO_TOKEN] * n_video + question + [7])
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), PAD)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r) :] = torch.tensor(r)
        attention_mask[i, length - len(r) :] = 1
    size = model.config.vision_config.image_size
    pixels = torch.randn(len(rows), frames, 3, size, size, generator=gen)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values_videos": pixels}


def row_inputs(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """One row of a left-padded batch, with its padding removed."""
    keep = inputs["attention_mask"][row].bool()
    return {
        "input_ids": inputs["input_ids"][row : row + 1, keep],
        "attention_mask": inputs["attention_mask"][row : row + 1, keep],
        "pixel_values_videos": inputs["pixel_values_videos"][row : row + 1],
    }
