"""Long videos stay inside the model's context: every position at every layer is below max_position_embeddings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import build_inputs, build_model

from sparsevlm import apply_patch, last_stats

CONTEXT = 4096  # LanguageBind/Video-LLaVA-7B-hf's max_position_embeddings
NEW_TOKENS = 4


def seven_b_layout(frames: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The 7B checkpoint's token layout (224 px, patch 14: 257 tokens a frame; context 4096) at tiny widths."""
    model = build_model(image_size=224, patch=14, layers=4)
    model.config.text_config.max_position_embeddings = CONTEXT
    return model, build_inputs(model, [20, 12], frames=frames)


def test_video_long_keeps_32_frames_inside_the_context_at_every_layer() -> None:
    model, inputs = seven_b_layout(frames=32)
    assert inputs["input_ids"].shape[1] > 8000  # 32 x 257 video tokens: twice the context before merging
    apply_patch(model, "video-long")
    highest: list[int] = []

    def watch(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        highest.append(int(kwargs["position_ids"].max()))

    hooks = [layer.register_forward_pre_hook(watch, with_kwargs=True) for layer in model.model.language_model.layers]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    for hook in hooks:
        hook.remove()
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert max(highest) < CONTEXT
    for stats in last_stats(model):
        assert stats.seq_len_per_layer[0] + NEW_TOKENS <= CONTEXT
        assert stats.removed_by_merge >= 32 * 257 - CONTEXT  # merged at least what the context demanded


def test_original_positions_past_the_context_are_refused_with_the_fix() -> None:
    model, inputs = seven_b_layout(frames=32)
    apply_patch(model, "video-xf-25")  # original positions: merging does not lower them
    with torch.no_grad(), pytest.raises(ValueError, match=r"max_position_embeddings.*video-long"):
        model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
