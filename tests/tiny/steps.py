"""A few plain AdamW steps of the tiny trainer's ``train_step`` on one batch, for tests that watch a loss fall."""

from __future__ import annotations

import torch
from transformers import VideoLlavaForConditionalGeneration

from sparsevlm.tiny.batches import TrainBatch
from sparsevlm.tiny.heads import PatchHeads
from sparsevlm.tiny.train import TrainConfig, train_step


def train_steps(
    model: VideoLlavaForConditionalGeneration, heads: PatchHeads, batch: TrainBatch, cfg: TrainConfig, steps: int = 8
) -> list[dict[str, float]]:
    """Every loss term of each step (at lr 3e-3, no schedule or clipping: a few steps must show the trend)."""
    optimizer = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=3e-3)
    history = []
    for _ in range(steps):
        losses = train_step(model, heads, batch, cfg)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    return history
