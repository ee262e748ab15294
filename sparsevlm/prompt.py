"""Video-LLaVA's single-turn prompt: its text, the token ids the checkpoint was trained on, and the positions
the LLM gives it.

The prompt is ``"USER: <video>\\n{question} ASSISTANT:"``. The original Video-LLaVA code
(``tokenizer_X_token`` in PKU-YuanGroup/Video-LLaVA) never tokenizes it in one pass: it splits the text at the
placeholder, tokenizes each piece on its own and puts the video token between them, dropping the second piece's
``<s>``. A LLaMA SentencePiece tokenizer starts every piece with ``▁``, so the text after the video begins
``29871 13`` (``▁``, byte 0x0A) and the text before it ends ``29901 29871`` (``:``, ``▁``). transformers 5.23's
``LlamaTokenizer`` encodes a whole prompt differently depending on the checkpoint's ``legacy`` flag: with
``legacy: false`` (or no flag) nothing follows ``<video>`` but ``13``, the id sequence the checkpoint never saw
in training. :func:`encode_text` therefore tokenizes the two pieces separately, as the original does, which gives
the trained ids whatever the flag (tested on a tokenizer built from the real LLaMA vocabulary).

The text alone (the constants and :func:`~sparsevlm.prompt_text.build_prompt`) is in
:mod:`sparsevlm.prompt_text`, torch-free; import it from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from sparsevlm.config import SparseConfig
from sparsevlm.pooling import frame_grid, pool_grid
from sparsevlm.prompt_text import PROMPT_HEAD, prompt_tail

__all__ = ["PromptText", "encode_text", "left_pad", "visual_positions"]


@dataclass(frozen=True)
class PromptText:
    """The text tokens of one prompt: ``head`` (with ``<s>``) goes before the video tokens, ``tail`` after."""

    head: tuple[int, ...]
    tail: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    def ids(self, video_token_id: int, num_video_tokens: int) -> list[int]:
        """The whole prompt: head, ``num_video_tokens`` video tokens, tail."""
        return [*self.head, *([video_token_id] * num_video_tokens), *self.tail]


def encode_text(tokenizer: PreTrainedTokenizerBase, question: str) -> PromptText:
    """Tokenize the text around the video placeholder the way the original Video-LLaVA code does.

    With the real LLaMA vocabulary, ``"Why is this video funny?"`` gives head ``1 3148 1001 29901 29871`` and
    tail ``29871 13 11008 338 445 4863 2090 1460 29973 319 1799 9047 13566 29901``.
    """
    head = tokenizer(PROMPT_HEAD)["input_ids"]  # <s> USER: ▁
    tail = tokenizer(prompt_tail(question), add_special_tokens=False)["input_ids"]  # the original's piece minus its <s>
    return PromptText(tuple(head), tuple(tail))


def visual_positions(cfg: SparseConfig, num_frames: int, tokens_per_frame: int) -> int:
    """How many positions the LLM's first layer gives one video's tokens under ``cfg``.

    Every layer before the first pruning layer holds all of them, and decoding continues after the last of
    them, so this (plus the text and the generated tokens) must fit ``max_position_embeddings``. Pooling before
    the LLM (``spatial_pool``) shrinks the count when positions are renumbered (``positions="compact"``).
    Cross-frame merging with compact positions (``video-long``) merges as much as the context demands (the
    model forces it, across shots if it must), down to one frame: that is the count that must fit. With
    original positions merging lowers no position, so every frame counts. ``budget_frames`` does not shrink
    it: it sets the pruning budget, not the tokens entering the LLM.
    """
    if cfg.temporal_merge is not None and cfg.positions == "compact":
        return min(num_frames, 1) * tokens_per_frame
    if cfg.spatial_pool is not None and cfg.positions == "compact":
        side, extra = frame_grid(tokens_per_frame)
        rows, cols = pool_grid(side, cfg.spatial_pool * tokens_per_frame - extra)
        return num_frames * (extra + rows * cols)
    return num_frames * tokens_per_frame


def left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``input_ids`` and ``attention_mask``, both ``[B, L]`` int64."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return input_ids, mask
