"""The outer Video-LLaVA classes of a patched instance: one vision-tower pass per distinct video of a batch
(optionally in frame chunks), and ``generate`` remembering what the sparse prefill needs to know (the prompt
length, the tokens it may add). They override public methods only; the decoder loop is in
:mod:`sparsevlm.modeling`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import VideoLlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.video_llava.modeling_video_llava import VideoLlavaModel

from sparsevlm.modeling import SparseRuntime
from sparsevlm.rows import distinct_rows


class SparseVideoLlavaModel(VideoLlavaModel):
    """``VideoLlavaModel`` that encodes each distinct video of a batch once, optionally in frame chunks.

    Batches often ask several questions of one segment (a caption and the questions are rows with the same
    frames); the vision tower then runs once per distinct video and the features are copied to its rows.
    """

    _sparse_runtime: SparseRuntime

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, vision_feature_layer: Any = None, **kwargs: Any
    ) -> Any:
        unique, inverse = distinct_rows(pixel_values_videos)
        if unique.shape[0] == pixel_values_videos.shape[0]:
            return self._encode_videos(pixel_values_videos, vision_feature_layer, **kwargs)
        features = self._encode_videos(unique, vision_feature_layer, **kwargs).pooler_output  # [U * T, tokens, D]
        t = pixel_values_videos.shape[1]
        per_video = features.view(unique.shape[0], t, *features.shape[1:])[inverse]  # [B, T, tokens, D]
        return BaseModelOutputWithPooling(pooler_output=per_video.reshape(-1, *features.shape[1:]))

    def _encode_videos(self, pixel_values_videos: torch.Tensor, vision_feature_layer: Any, **kwargs: Any) -> Any:
        chunk = self._sparse_runtime.config.vision_chunk_frames
        b, t = pixel_values_videos.shape[:2]
        if not chunk or t <= chunk:
            return super().get_video_features(
                pixel_values_videos=pixel_values_videos, vision_feature_layer=vision_feature_layer, **kwargs
            )
        parts = []
        for start in range(0, t, chunk):  # CLIP encodes frames independently: chunking is exact
            out = super().get_video_features(
                pixel_values_videos=pixel_values_videos[:, start : start + chunk],
                vision_feature_layer=vision_feature_layer,
                **kwargs,
            )
            features = out.pooler_output  # [B * t_chunk, tokens, D]
            parts.append(features.view(b, -1, *features.shape[1:]))
        features = torch.cat(parts, dim=1)  # [B, T, tokens, D]
        return BaseModelOutputWithPooling(pooler_output=features.reshape(b * t, *features.shape[2:]))


def _max_new_tokens(kwargs: dict[str, Any], default: Any, prompt_len: int | None) -> int | None:
    """How many tokens a ``generate`` call may add: its ``max_new_tokens``, else ``max_length`` minus the prompt."""
    config = kwargs.get("generation_config") or default
    new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if new is not None:
        return int(new)
    total = kwargs.get("max_length", getattr(config, "max_length", None))
    return max(0, int(total) - prompt_len) if total is not None and prompt_len is not None else None


class SparseVideoLlavaForConditionalGeneration(VideoLlavaForConditionalGeneration):
    """Video-LLaVA whose language model is a :class:`SparseLlamaModel`; remembers the prompt length."""

    _sparse_runtime: SparseRuntime

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        prompt = ids if ids is not None else embeds
        rt = self._sparse_runtime
        rt.prompt_len = prompt.shape[1] if prompt is not None else None
        rt.max_new_tokens = _max_new_tokens(kwargs, self.generation_config, rt.prompt_len)
        rt.generating = True
        try:
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        finally:
            rt.prompt_len = None
            rt.max_new_tokens = None
            rt.generating = False

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """Saves as the original class (the checkpoint must not name the patched one)."""
        self.__class__ = VideoLlavaForConditionalGeneration  # type: ignore[assignment]
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = SparseVideoLlavaForConditionalGeneration
