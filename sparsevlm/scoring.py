"""Pure tensor functions of SparseVLM's scoring: raters, rater-row attention, keep selection.

Nothing here knows about transformers modules; shapes are in the docstrings.
"""

from __future__ import annotations

import torch


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Pick the text tokens that relate to the visual content (paper Eq. 5-6, the code's strict ``>``).

    ``r = mean over visual tokens of softmax_text(H_v H_t^T)``; raters are the text tokens with ``r`` above
    its mean. The product is the raw dot product of the LLM input embeddings (no scaling), as in the code.
    When no token is above the mean (for example a single text token), every text token is a rater.

    Args:
        visual: ``[Lv, D]`` visual embeddings at the LLM input.
        text: ``[Lt, D]`` embeddings of the candidate text tokens (those after the visual span).

    Returns:
        ``[Lt]`` bool mask of the raters.
    """
    if text.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=text.device)
    relation = visual.float() @ text.float().T  # [Lv, Lt]
    relevance = relation.softmax(dim=-1).mean(dim=0)  # [Lt]
    raters = relevance > relevance.mean()
    if not bool(raters.any()):
        raters = torch.ones_like(raters)
    return raters


def rater_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Head-averaged attention probabilities of the rater rows over all keys.

    Equal to the rater rows of ``softmax(Q K^T * scaling + mask).mean(heads)`` of the layer, but computed for
    the rater rows only (never the full ``L x L`` matrix) and without repeating the grouped KV heads.

    Args:
        queries: ``[B, H, R, hd]`` post-RoPE queries of the rater rows (padded rows are ignored later).
        keys: ``[B, Hkv, K, hd]`` post-RoPE keys of the layer; ``H`` must be a multiple of ``Hkv``.
        allowed: ``[B, R, K]`` bool, which keys each rater row may attend to (causal and not padding).
        scaling: the attention scale (``head_dim ** -0.5`` for LLaMA).

    Returns:
        ``[B, R, K]`` float32 probabilities, averaged over the ``H`` query heads.
    """
    b, h, r, hd = queries.shape
    h_kv, k_len = keys.shape[1], keys.shape[2]
    if h % h_kv:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({h_kv})")
    groups = h // h_kv
    # Query head i uses KV head i // groups (transformers' repeat_kv): fold the group into the row axis.
    # Logits in the keys' dtype, softmax in float32: what the layer's own eager attention computes (and no
    # float32 copy of the whole key cache).
    q = queries.to(keys.dtype).reshape(b, h_kv, groups * r, hd)  # [B, Hkv, G*R, hd]
    logits = torch.matmul(q, keys.transpose(-1, -2)).float() * scaling  # [B, Hkv, G*R, K]
    logits = logits.view(b, h, r, k_len).masked_fill(~allowed[:, None], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)  # [B, R, K]


def visual_scores(attention: torch.Tensor, rater_valid: torch.Tensor) -> torch.Tensor:
    """Score of every key as the mean attention it receives from the raters (paper Eq. 3).

    Args:
        attention: ``[B, R, K]`` head-averaged rater-row attention (:func:`rater_attention`).
        rater_valid: ``[B, R]`` bool, which rater rows are real (rows are padded to the longest).

    Returns:
        ``[B, K]`` float32 scores.
    """
    weights = rater_valid.float()
    return (attention * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def rank_keep_count(rater_visual: torch.Tensor, scale: float, bias: float) -> int:
    """Rank-adaptive kept count ``int(scale * rank(P) + bias)`` (paper Eq. 8 as the v1 code applies it).

    Args:
        rater_visual: ``[R, Lv]`` head-averaged attention of the raters over the visual tokens.

    Returns:
        The number of visual tokens to keep, at least 1 and at most ``Lv``.
    """
    rank = int(torch.linalg.matrix_rank(rater_visual.float()).item())
    return max(1, min(int(scale * rank + bias), rater_visual.shape[-1]))


def select_keep(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` best scores, in their original (ascending) order.

    Args:
        scores: ``[Lv]`` scores of the visual tokens.

    Returns:
        ``[keep]`` sorted LongTensor.
    """
    keep = min(keep, scores.shape[0])
    return scores.topk(keep).indices.sort().values


def select_rater_tokens(
    embeds: torch.Tensor, valid: torch.Tensor, visual: torch.Tensor, prompt_len: int | None, method: str
) -> torch.Tensor:
    """``[B, L]`` bool raters per row: candidates are the real prompt tokens after the last visual token.

    SparseVLM picks the relevant ones (:func:`select_raters`); ``sparsevlm-text`` takes every candidate;
    FastV's rule uses the last prompt token alone.
    """
    b, length, _ = embeds.shape
    at = torch.arange(length, device=embeds.device)
    raters = torch.zeros(b, length, dtype=torch.bool, device=embeds.device)
    for row in range(b):
        vis = visual[row].nonzero().squeeze(1)
        candidates = valid[row] & ~visual[row] & (at > vis.max())
        if prompt_len is not None:
            candidates &= at < prompt_len
        cand = candidates.nonzero().squeeze(1)
        if method == "fastv":
            raters[row, cand[-1:]] = True
            continue
        if method == "sparsevlm-text":
            raters[row, cand] = True
            continue
        chosen = select_raters(embeds[row, vis], embeds[row, cand])
        raters[row, cand[chosen]] = True
    return raters
