"""The project's own small Video-LLaVA: the real transformers classes with a tiny configuration.

A CLIP vision tower (64 px, 8 px patches) and a LLaMA decoder with grouped-query attention, sized after the
measured recipe in reference/tiny-model-training.md so that it trains on two CPU cores in about an hour.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerBase,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from sparsevlm.tiny.tokenizer import token_id
from sparsevlm.token_counts import video_tokens_per_frame


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the tiny Video-LLaVA.

    Attributes:
        image_size: frame side in pixels (frames are square and already at this size).
        patch_size: vision patch size; ``image_size // patch_size`` patches per side.
        num_frames: frames per video; sets ``video_seq_length`` (the model accepts any count).
        vision_hidden: CLIP hidden size.
        vision_layers: CLIP encoder layers; the last one feeds the projector.
        vision_heads: CLIP attention heads.
        text_hidden: LLaMA hidden size.
        text_intermediate: LLaMA MLP size.
        text_layers: LLaMA decoder layers.
        text_heads: LLaMA query heads.
        text_kv_heads: LLaMA key/value heads (fewer than query heads: grouped-query attention).
        max_positions: LLaMA context length; 32 frames of 65 tokens plus text fit.
        tie_embeddings: share the LLaMA input embeddings and the LM head (the trainer's per-patch heads
            score patches against these word vectors).
    """

    image_size: int = 64
    patch_size: int = 8
    num_frames: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_intermediate: int = 384
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    max_positions: int = 4096
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads {self.text_heads} is not a multiple of text_kv_heads {self.text_kv_heads}")


def build_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> VideoLlavaConfig:
    """A ``VideoLlavaConfig`` for ``cfg`` whose special-token ids come from ``tokenizer``."""
    vision = CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.vision_hidden,
        intermediate_size=2 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    per_frame = video_tokens_per_frame(cfg.image_size, cfg.patch_size)
    return VideoLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token_id(tokenizer, "<image>"),
        video_token_index=token_id(tokenizer, "<video>"),
        # Two vision layers only: read the last one, not the default penultimate (-2).
        vision_feature_layer=-1,
        image_seq_length=per_frame - 1,
        video_seq_length=cfg.num_frames * per_frame,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def build_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> VideoLlavaForConditionalGeneration:
    """A randomly initialised tiny ``VideoLlavaForConditionalGeneration`` (sdpa attention, eval mode)."""
    config = build_config(cfg, tokenizer)
    model = VideoLlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()
