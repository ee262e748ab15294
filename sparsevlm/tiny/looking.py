"""The looking and ranking losses: where a prompt's attention goes among the visual tokens, at chosen layers.

A real VLM's prompt looks at the visual tokens that answer it within its first layers; that is the premise of
text-guided pruning (SparseVLM's raters, FastV's last token). The tiny model, trained on answers alone, found
its own route on the easy split (any object token answers) and sat at chance on the hard split for 450 steps:
the lookup of one small object among look-alikes is the hard part.

- **The looking loss** asks for the lookup itself: at each chosen layer, the attention of the position that
  predicts an answer (the last prompt token, averaged over its heads) should put its mass on that question's
  evidence tokens. Trained at layers 1, 2, 8 and 16, ``tiny-deep`` learnt exactly that, and only there: at
  the layers between (0, 4, 6, 15) its answer position put 0.4-6 % of its attention on the evidence, and its
  question words at most 1.4 % at any layer, so a pruning step at such a layer ranked the visual tokens by
  something unrelated to the question, whichever scorer read it (docs/fidelity.md).
- **The ranking loss** asks for what text-guided pruning reads: among the visual tokens, each prompt token of
  a question (its words, through the answer position) should attend most to that question's evidence. It is
  relative (``-log`` of the evidence's share of the attention on visual tokens), so a token stays free to read
  the text; trained over a span of layers, it makes the tiny model rank visual tokens by the question at every
  layer of that span, as a real VLM's text does, for every scorer alike: FastV's rater (the last prompt token)
  is one of the positions trained.

Both read the layer's own query and key projections with RoPE, so they train the attention the model runs, not
a separate head. Questions without evidence (a "no" presence question) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel, apply_rotary_pos_emb

from sparsevlm.tiny.batches import TrainBatch

__all__ = ["evidence_attention_mass", "evidence_shares", "looking_losses", "ranking_losses"]


def evidence_attention_mass(
    hidden: torch.Tensor,
    layer: LlamaDecoderLayer,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    queries: torch.Tensor,
    evidence: torch.Tensor,
    visual_start: torch.Tensor,
    among_visual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mass (mean over heads) that each query position puts on its evidence.

    Args:
        hidden: ``[B, L, D]`` the input of ``layer`` (``hidden_states[i]`` of the model for layer ``i``).
        layer: the decoder layer whose attention is read.
        position_embeddings: RoPE ``(cos, sin)``, each ``[B or 1, L, head_dim]``.
        queries: long ``[B, Q]`` positions that predict an answer; -1 pads.
        evidence: bool ``[B, Q, V]`` which of the ``V`` visual tokens are that question's evidence.
        visual_start: long ``[B]`` position of the first visual token of each row.
        among_visual: the evidence's share of the attention on visual tokens instead of on the whole sequence.

    Returns:
        ``mass`` float ``[B, Q]`` and ``valid`` bool ``[B, Q]``, the queries that are real and have evidence.
    """
    attn = layer.self_attn
    b, length, _ = hidden.shape
    head_dim = attn.head_dim
    valid = (queries >= 0) & evidence.any(-1)  # [B, Q]
    x = layer.input_layernorm(hidden).float()  # [B, L, D]
    weight_q, weight_k = attn.q_proj.weight.float(), attn.k_proj.weight.float()
    safe = queries.clamp(min=0)  # [B, Q]
    xq = x.gather(1, safe[..., None].expand(-1, -1, x.shape[-1]))  # [B, Q, D]
    q = (xq @ weight_q.T).view(b, -1, attn.config.num_attention_heads, head_dim).transpose(1, 2)  # [B, H, Q, hd]
    k = (x @ weight_k.T).view(b, length, -1, head_dim).transpose(1, 2)  # [B, KV, L, hd]
    cos, sin = (t.float().expand(b, -1, -1) for t in position_embeddings)  # [B, L, hd]
    cos_q = cos.gather(1, safe[..., None].expand(-1, -1, head_dim))  # [B, Q, hd]
    sin_q = sin.gather(1, safe[..., None].expand(-1, -1, head_dim))
    q, _ = apply_rotary_pos_emb(q, q, cos_q, sin_q)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query: each KV head serves H / KV heads
    logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # [B, H, Q, L]
    causal = torch.arange(length, device=hidden.device)[None, None, :] > safe[..., None]  # [B, Q, L]
    logits = logits.masked_fill(causal[:, None], float("-inf"))
    probs = logits.softmax(-1).mean(1)  # [B, Q, L], mean over heads
    visual = visual_start[:, None] + torch.arange(evidence.shape[-1], device=hidden.device)[None]  # [B, V]
    on_visual = probs.gather(2, visual[:, None, :].expand(-1, probs.shape[1], -1))  # [B, Q, V]
    mass = (on_visual * evidence).sum(-1)  # [B, Q]
    if among_visual:
        mass = mass / on_visual.sum(-1).clamp_min(1e-12)
    return mass, valid


def looking_losses(
    lm: LlamaModel, hidden_states: Sequence[torch.Tensor], layers: Sequence[int], batch: TrainBatch
) -> list[torch.Tensor]:
    """The answer positions' looking loss at each of ``layers`` of one forward of ``batch``: ``-log`` of the
    attention mass each puts on its evidence (:func:`evidence_attention_mass`), averaged over the questions that
    have evidence (0 when none has).

    The rows must be unpadded or right-padded, as the trainer runs them (no attention mask): the layers then ran
    with RoPE positions ``0 .. L-1``, which is what the loss is given.

    Args:
        lm: the language model that produced ``hidden_states``.
        hidden_states: its ``output_hidden_states``, each ``[B, L, D]``; index ``i`` is the input of layer ``i``.
        layers: the decoder layers to read.
        batch: the batch of that forward (its answer positions, their evidence, where its visual tokens start).
    """
    masses = _layer_masses(lm, hidden_states, layers, batch.answer_positions, batch.answer_evidence, batch.visual_start)
    return [_minus_log_mean(mass, valid) for mass, valid in masses]


def ranking_losses(
    lm: LlamaModel, hidden_states: Sequence[torch.Tensor], layers: Sequence[int], batch: TrainBatch
) -> list[torch.Tensor]:
    """The ranking loss at each of ``layers``: among the visual tokens, each prompt token of a question attends
    to that question's evidence (as :func:`looking_losses`, with the evidence's share of the attention on visual
    tokens). Arguments as for :func:`looking_losses`."""
    masses = _layer_masses(
        lm, hidden_states, layers, batch.prompt_positions, _prompt_evidence(batch), batch.visual_start, True
    )
    return [_minus_log_mean(mass, valid) for mass, valid in masses]


def evidence_shares(
    lm: LlamaModel, hidden_states: Sequence[torch.Tensor], layers: Sequence[int], batch: TrainBatch
) -> list[dict[str, float]]:
    """Where the prompt looks, per layer: the evidence's share of the attention on visual tokens (mean over heads)
    of the answer positions (FastV's rater) and of every prompt position of a question (SparseVLM's candidates),
    each averaged over the questions that have evidence, and ``chance``, the share that attention spread evenly
    over the visual tokens would give. Arguments as for :func:`looking_losses`."""
    answer = _layer_masses(
        lm, hidden_states, layers, batch.answer_positions, batch.answer_evidence, batch.visual_start, True
    )
    prompt = _layer_masses(
        lm, hidden_states, layers, batch.prompt_positions, _prompt_evidence(batch), batch.visual_start, True
    )
    answer_valid = (batch.answer_positions >= 0) & batch.answer_evidence.any(-1)  # [B, Q]
    chance = float((batch.answer_evidence.sum(-1).float() / batch.answer_evidence.shape[2])[answer_valid].mean())
    return [
        {
            "layer": float(index),
            "chance": chance,
            "answer": float(answer_mass[answer_ok].mean()),
            "prompt": float(prompt_mass[prompt_ok].mean()),
        }
        for index, (answer_mass, answer_ok), (prompt_mass, prompt_ok) in zip(layers, answer, prompt, strict=True)
    ]


def _prompt_evidence(batch: TrainBatch) -> torch.Tensor:
    """bool ``[B, W, V]``: the evidence of the question each prompt position (``batch.prompt_positions``) asks."""
    v = batch.answer_evidence.shape[2]
    return batch.answer_evidence.gather(1, batch.prompt_question[..., None].expand(-1, -1, v))


def _layer_masses(
    lm: LlamaModel,
    hidden_states: Sequence[torch.Tensor],
    layers: Sequence[int],
    queries: torch.Tensor,
    evidence: torch.Tensor,
    visual_start: torch.Tensor,
    among_visual: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`evidence_attention_mass` of ``queries`` ``[B, Q]`` on ``evidence`` ``[B, Q, V]`` at each layer."""
    first = hidden_states[0]  # [B, L, D]
    positions = torch.arange(first.shape[1], device=first.device)[None]  # [1, L]
    rope = lm.rotary_emb(first, position_ids=positions)  # (cos, sin), each [1, L, head_dim]
    masses = []
    for index in layers:
        layer = lm.layers[index]
        assert isinstance(layer, LlamaDecoderLayer)
        masses.append(
            evidence_attention_mass(hidden_states[index], layer, rope, queries, evidence, visual_start, among_visual)
        )
    return masses


def _minus_log_mean(mass: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``-log`` of ``mass`` ``[B, Q]`` averaged over the ``valid`` entries; 0 when there is none."""
    if not valid.any():
        return mass.new_zeros(())
    return -(mass[valid] + 1e-6).log().mean()
