"""The naming loss: a visual token names what it shows in the LLM's own word-embedding space.

A real VLM's projector is trained (LLaVA's stage 1) until a visual token behaves like the words that describe
its patch, which is what SparseVLM's rater choice relies on: it picks the prompt words that the visual tokens
relate to by raw dot products of the LLM input embeddings (``sparsevlm.scoring.select_rater_tokens``). The
tiny model's per-patch heads (``heads.WordHead``) make colour and shape readable with a learned scale and a
free background vector, which is not the same thing: measured on ``tiny-deep``, every background patch related
most to the template word ``ASSISTANT``, and that word was the only rater of most questions.

This loss asks the raw dot products ``x @ E.T`` over the whole vocabulary for what a real VLM's tokens show:
an object patch relates to its colour word and its shape word (half each), and a background patch to no word
at all (uniform). Both are KL divergences, so 0 is reachable and means exactly that.
"""

from __future__ import annotations

import math

import torch

__all__ = ["naming_loss"]


def naming_loss(
    projected: torch.Tensor,
    embeddings: torch.Tensor,
    colour: torch.Tensor,
    shape: torch.Tensor,
    colour_ids: torch.Tensor,
    shape_ids: torch.Tensor,
) -> torch.Tensor:
    """Mean KL divergence from each patch's naming target to ``softmax(x @ E.T)`` over the vocabulary.

    Args:
        projected: ``[..., D]`` the projector's output at each patch (what the LLM reads).
        embeddings: ``[V, D]`` the LLM input embeddings.
        colour, shape: long ``[...]`` per-patch classes, 0 background, ``k >= 1`` the k-th colour / shape word;
            any other value (the trainer's ignore index) leaves the patch out.
        colour_ids, shape_ids: long ``[K]`` token ids of the colour and shape words, class ``k`` at ``k - 1``.

    Returns:
        A scalar; 0 when every patch names exactly its target (and nothing when no patch counts).
    """
    log_p = (projected.float() @ embeddings.float().T).log_softmax(-1)  # [..., V]
    vocab = log_p.shape[-1]
    background = colour == 0
    named = (colour >= 1) & (colour <= len(colour_ids)) & (shape >= 1) & (shape <= len(shape_ids))
    # KL(uniform || p) = -log V - mean(log p); KL(half/half || p) = -log 2 - (log p_c + log p_s) / 2
    silent = -math.log(vocab) - log_p.mean(-1)
    c_word = colour_ids[(colour - 1).clamp(0, len(colour_ids) - 1)]
    s_word = shape_ids[(shape - 1).clamp(0, len(shape_ids) - 1)]
    pair = log_p.gather(-1, c_word[..., None]).squeeze(-1) + log_p.gather(-1, s_word[..., None]).squeeze(-1)
    naming = -math.log(2) - pair / 2
    loss = torch.where(background, silent, torch.where(named, naming, torch.zeros_like(silent)))
    count = (background | named).sum()
    return loss.sum() / count.clamp_min(1)
