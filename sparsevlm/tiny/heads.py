"""Training-only heads on the tiny model's visual tokens (never saved with the model; see train.py)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from sparsevlm.tiny.batches import IGNORE, TrainBatch
from sparsevlm.tiny.naming import naming_loss
from sparsevlm.tiny.tokenizer import answer_token_ids
from sparsevlm.tiny.video_qa import COLOURS, DIRECTIONS, SHAPES

__all__ = ["PatchHeads", "WordHead"]


class WordHead(nn.Module):
    """Per-patch classifier whose class vectors are the LLM's word embeddings; class 0 is background.

    Scoring a red patch against the embedding of " red" puts the patch and the word that names it in the same
    direction of the residual stream (the embeddings are tied to the LM head), so matching a question word
    to patches and saying the word of an attended patch are both easy for the LLM.

    Args:
        dim: the LLM hidden size.
        word_ids: token ids of the words naming classes 1..K.
    """

    def __init__(self, dim: int, word_ids: list[int]) -> None:
        super().__init__()
        self.word_ids: torch.Tensor
        self.register_buffer("word_ids", torch.tensor(word_ids), persistent=False)
        self.background = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(1 + len(word_ids)))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., 1 + K]`` for features ``x`` ``[..., D]`` given the embedding table ``[V, D]``."""
        classes = torch.cat([self.background[None], embeddings[self.word_ids]])  # [1 + K, D]
        return self.scale * x @ classes.T + self.bias


class PatchHeads(nn.Module):
    """Training-only per-patch heads on the visual tokens (never saved with the model).

    Args:
        dim: the LLM hidden size (the projector's output size).
        tokenizer: gives the ids of the colour, shape and direction words.
    """

    def __init__(self, dim: int, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        ids = answer_token_ids(tokenizer)
        self.colour = WordHead(dim, [ids[w] for w in COLOURS])
        self.shape = WordHead(dim, [ids[w] for w in SHAPES])
        self.motion = WordHead(dim, [ids[w] for w in DIRECTIONS])
        self.new = nn.Linear(dim, 2)
        self.earliest = nn.Linear(dim, 2)
        self.newest = nn.Linear(dim, 2)
        self.striped = nn.Linear(dim, 2)

    def loss(
        self, projected: torch.Tensor, hidden: torch.Tensor, embeddings: torch.Tensor, batch: TrainBatch
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy of every head, and the naming loss.

        Args:
            projected: ``[B, T, P, D]`` projector output without the CLS tokens.
            hidden: ``[B, T, P, D]`` LLM hidden states at the same patches after ``motion_layer`` layers.
            embeddings: ``[V, D]`` the LLM's (tied) word embeddings.
            batch: the targets, ``[B, T, P]`` each.
        """

        def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(logits.flatten(0, 2), target.flatten(), ignore_index=IGNORE)

        table = embeddings.float()
        return {
            "naming": naming_loss(
                projected, table, batch.patch_colour, batch.patch_shape, self.colour.word_ids, self.shape.word_ids
            ),
            "colour": ce(self.colour(projected.float(), table), batch.patch_colour),
            "shape": ce(self.shape(projected.float(), table), batch.patch_shape),
            "motion": ce(self.motion(hidden.float(), table), batch.patch_motion),
            "new": ce(self.new(hidden.float()), batch.patch_new),
            "earliest": ce(self.earliest(hidden.float()), batch.patch_earliest),
            "newest": ce(self.newest(hidden.float()), batch.patch_newest),
            "striped": ce(self.striped(projected.float()), batch.patch_striped),
        }
