"""The layout of ``LanguageBind/Video-LLaVA-7B-hf``: the one table of its sizes, and its configuration at full
size or with a narrower LLM / vision tower.

One source for the production layout's ``config.json`` values (see the project's reference notes on the
production layout), used by the preset cost table (:mod:`sparsevlm.bench.presets`), the CPU speed benchmark
(:mod:`sparsevlm.bench.speed`), the GPU benchmark (:mod:`sparsevlm.bench.gpu`, full size) and the stand-in
checkpoint of the tests (32 text layers at a small width). Only widths and depths can be changed; the token
ids, the vocabulary, the patch geometry, the feature layer and the context stay those of the real checkpoint.
Torch-free (transformers is imported where the configuration is built): the run plan of the pipeline's
driver costs presets on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparsevlm.token_counts import video_tokens_per_frame

if TYPE_CHECKING:
    from transformers import VideoLlavaConfig

__all__ = [
    "FRAMES",
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "MAX_POSITIONS",
    "PAD_TOKEN",
    "PATCH_SIZE",
    "VIDEO_TOKEN",
    "VIDEO_TOKENS",
    "VOCAB_SIZE",
    "Widths",
    "video_llava_7b_config",
]

IMAGE_TOKEN = 32000
VIDEO_TOKEN = 32001
PAD_TOKEN = 32002
VOCAB_SIZE = 32064  # 32,000 LLaMA tokens + <image>, <video>, <pad>, rounded up to a multiple of 64
MAX_POSITIONS = 4096
IMAGE_SIZE = 224  # CLIP ViT-L/14's input side in pixels
PATCH_SIZE = 14
FRAMES = 8  # what the checkpoint was trained with
VIDEO_TOKENS = FRAMES * video_tokens_per_frame(IMAGE_SIZE, PATCH_SIZE)  # 8 frames x 257 = 2,056


@dataclass(frozen=True)
class Widths:
    """The sizes that may differ from the real checkpoint (the defaults are the real ones).

    Attributes:
        hidden, layers, heads, ffn: the LLaMA-7B text model (no grouped-query attention).
        vision_hidden, vision_layers, vision_heads, vision_ffn: CLIP ViT-L/14 (224 px, patch 14).
    """

    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    ffn: int = 11008
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_ffn: int = 4096


def video_llava_7b_config(widths: Widths = Widths()) -> VideoLlavaConfig:
    """``VideoLlavaConfig`` with the real checkpoint's values and the given widths.

    Returns:
        A config whose vision tower sees 224 px frames in 14 px patches (257 tokens per frame on the video
        path, CLS kept), feature layer -2, select strategy ``"default"``, image / video / pad tokens 32000 /
        32001 / 32002, vocabulary 32,064 and ``max_position_embeddings`` 4096.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=widths.vision_hidden,
        intermediate_size=widths.vision_ffn,
        num_hidden_layers=widths.vision_layers,
        num_attention_heads=widths.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=widths.hidden,
        intermediate_size=widths.ffn,
        num_hidden_layers=widths.layers,
        num_attention_heads=widths.heads,
        num_key_value_heads=widths.heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD_TOKEN,
    )
    return VideoLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
