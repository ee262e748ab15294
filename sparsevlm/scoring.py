"""Pure tensor functions of SparseVLM's scoring: raters, rater-row attention, keep selection.

Nothing here knows about transformers modules; shapes are in the docstrings.
"""

from __future__ import annotations

import torch

from sparsevlm.sequence import gather_tokens


def rater_rows(rater: torch.Tensor, n_raters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's rater positions in sequence order, right-padded to ``n_raters`` slots.

    Args:
        rater: ``[B, L]`` bool, the rater tokens.
        n_raters: slots per row, at least the largest rater count of any row.

    Returns:
        ``order`` long ``[B, R]``, the raters' positions (a padding slot holds some non-rater position), and
        ``valid`` bool ``[B, R]``, which slots hold a rater.
    """
    order = torch.sort(rater.long(), dim=1, descending=True, stable=True).indices[:, :n_raters]  # [B, R]
    valid = torch.arange(n_raters, device=rater.device)[None] < rater.sum(1)[:, None]  # [B, R]
    return order, valid


def rater_key_mask(valid: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Which keys each rater row attends to in a causal layer: the real keys up to its own position.

    Args:
        valid: ``[B, K]`` bool, the keys that are real tokens (not padding).
        order: ``[B, R]`` the rater rows' positions (:func:`rater_rows`).

    Returns:
        ``[B, R, K]`` bool. A row always sees its own position, so a padding slot's row is never fully masked
        (its softmax stays finite; :func:`visual_scores` ignores it).
    """
    key_at = torch.arange(valid.shape[1], device=valid.device)
    allowed = valid[:, None, :] & (key_at[None, None, :] <= order[:, :, None])  # [B, R, K]
    return allowed | (key_at[None, None, :] == order[:, :, None])


def visual_columns(
    attention: torch.Tensor, present: torch.Tensor, n_visual: torch.Tensor, width: int, rater_valid: torch.Tensor
) -> torch.Tensor:
    """Each rater row's attention on its row's visual tokens, in sequence order, for the rank count.

    Args:
        attention: ``[B, R, K]`` rater-row attention (:func:`rater_attention`), ``K`` the sequence length.
        present: ``[B, K]`` bool, the visual tokens.
        n_visual: ``[B]`` visual tokens per row (``present.sum(1)``), on the attention's device.
        width: ``max(n_visual)``, known on the host (it shapes the result).
        rater_valid: ``[B, R]`` bool, the rater slots that hold a rater.

    Returns:
        ``[B, R, width]``: column ``j`` is the row's ``j``-th visual token; 0 on a row's columns past its own
        count and on padding rater slots.
    """
    visual_at = (~present).to(torch.int8).argsort(dim=1, stable=True)[:, :width]  # [B, V], visual positions first
    columns = attention.gather(2, visual_at[:, None, :].expand(-1, attention.shape[1], -1))  # [B, R, V]
    slot_ok = torch.arange(width, device=attention.device)[None, :] < n_visual[:, None]  # [B, V]
    return columns * (rater_valid[:, :, None] & slot_ok[:, None, :])


def rater_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-averaged attention probabilities of the rater rows over all keys.

    Equal to the rater rows of ``softmax(Q K^T * scaling + mask).mean(heads)`` of the layer, but computed for
    the rater rows only (never the full ``L x L`` matrix) and without repeating the grouped KV heads.

    Args:
        queries: ``[B, H, R, hd]`` post-RoPE queries of the rater rows (padded rows are ignored later).
        keys: ``[B, Hkv, K, hd]`` post-RoPE keys of the layer; ``H`` must be a multiple of ``Hkv``.
        allowed: ``[B, R, K]`` bool, which keys each rater row may attend to (causal and not padding).
        scaling: the attention scale (``head_dim ** -0.5`` for LLaMA).
        key_bias: ``[B, K]`` offsets the layer adds to every logit on a key (``log`` of a merged token's weight,
            :meth:`sparsevlm.sequence.Layout.key_bias`), or None.

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
    logits = logits.view(b, h, r, k_len)
    if key_bias is not None:
        logits = logits + key_bias.float()[:, None, None, :]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
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


def rank_keep_counts(
    rater_visual: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, scale: float, bias: float
) -> list[int]:
    """Rank-adaptive kept counts ``int(scale * rank(P) + bias)`` of a padded batch (paper Eq. 8 as the v1 code
    applies it), with one device-to-host transfer.

    Args:
        rater_visual: ``[B, R, V]`` head-averaged attention of the raters over the visual tokens, zero-padded.
        rows: ``[B]`` real raters per row; cols: ``[B]`` real visual tokens per row.

    Returns:
        Per row the number of visual tokens to keep, at least 1 and at most the row's visual count. Zero
        padding does not change a rank; the tolerance is the one ``matrix_rank`` uses for the unpadded matrix.
    """
    eps = torch.finfo(torch.float32).eps
    rtol = torch.maximum(rows, cols).float() * eps  # [B]
    ranks = torch.linalg.matrix_rank(rater_visual.float(), rtol=rtol)  # [B]
    return [max(1, min(int(scale * r + bias), n)) for r, n in zip(ranks.tolist(), cols.tolist(), strict=True)]


def keep_mask(scores: torch.Tensor, present: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: each row's ``keep[b]`` best-scored tokens among ``present`` (ties: the earlier token).

    Args:
        scores: ``[B, L]``; present: ``[B, L]`` bool candidates; keep: ``[B]`` long counts.
    """
    order = scores.masked_fill(~present, float("-inf")).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return present & (rank < keep[:, None])


def rater_candidates(valid: torch.Tensor, visual: torch.Tensor, prompt_len: int | None) -> torch.Tensor:
    """``[B, L]`` bool: the real prompt tokens after each row's last visual token (none in a text-only row)."""
    at = torch.arange(valid.shape[1], device=valid.device)[None, :]
    last_visual = torch.where(visual, at, -1).amax(1, keepdim=True)  # [B, 1], -1 without visual tokens
    candidates = valid & ~visual & (at > last_visual) & (last_visual >= 0)
    if prompt_len is not None:
        candidates &= at < prompt_len
    return candidates


def select_rater_tokens(
    embeds: torch.Tensor,
    candidates: torch.Tensor,
    visual: torch.Tensor,
    method: str,
    text_width: int,
    visual_width: int,
) -> torch.Tensor:
    """``[B, L]`` bool raters per row, chosen among the candidates (:func:`rater_candidates`).

    SparseVLM picks the relevant ones (paper Eq. 5-6, the code's strict ``>``): ``r = mean over visual tokens
    of softmax_text(H_v H_t^T)`` on the raw dot products of the LLM input embeddings, and the raters are the
    candidates with ``r`` above its mean (every candidate when none is);
    ``sparsevlm-text`` takes every candidate; FastV's rule uses the last prompt token alone. All rows at once:
    candidates and visual tokens are gathered to the front of padded ``[B, T, D]`` and ``[B, V, D]`` tensors.

    Args:
        embeds: ``[B, L, D]`` the LLM input embeddings.
        candidates, visual: ``[B, L]`` bool.
        text_width, visual_width: the largest candidate and visual counts of a row (host ints).
    """
    if method == "fastv":
        at = torch.arange(candidates.shape[1], device=candidates.device)[None, :]
        last = torch.where(candidates, at, -1).amax(1, keepdim=True)
        return candidates & (at == last)
    if method == "sparsevlm-text" or text_width == 0 or visual_width == 0:
        return candidates
    n_text, n_visual = candidates.sum(1), visual.sum(1)  # [B]
    text_at = (~candidates).to(torch.int8).argsort(dim=1, stable=True)[:, :text_width]  # candidates first
    visual_at = (~visual).to(torch.int8).argsort(dim=1, stable=True)[:, :visual_width]
    text_ok = torch.arange(text_width, device=embeds.device)[None, :] < n_text[:, None]  # [B, T]
    visual_ok = torch.arange(visual_width, device=embeds.device)[None, :] < n_visual[:, None]  # [B, V]
    text = gather_tokens(embeds, text_at).float()  # [B, T, D]
    vis = gather_tokens(embeds, visual_at).float()  # [B, V, D]
    relation = torch.bmm(vis, text.transpose(1, 2)).masked_fill(~text_ok[:, None, :], float("-inf"))  # [B, V, T]
    probs = relation.softmax(dim=-1).nan_to_num(0.0) * visual_ok[..., None]
    relevance = probs.sum(1) / n_visual.clamp_min(1)[:, None]  # [B, T]
    mean = (relevance * text_ok).sum(1, keepdim=True) / n_text.clamp_min(1)[:, None]
    chosen = (relevance > mean) & text_ok
    chosen = torch.where(chosen.any(1, keepdim=True), chosen, text_ok)
    raters = torch.zeros_like(candidates)
    raters.scatter_(1, text_at, chosen)
    return raters & candidates
