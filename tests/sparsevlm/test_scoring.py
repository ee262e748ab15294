"""rater_attention against the layer's attention computed in full: every head, every row, the L x L matrix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from sparsevlm.scoring import rater_attention

B, L, HD = 3, 12, 8
LENGTHS = (12, 9, 5)  # real tokens per row, left-padded as generate pads


def _allowed() -> torch.Tensor:
    """``[B, L, L]`` bool: causal, and no padding key (left padding: row ``b`` starts at ``L - LENGTHS[b]``)."""
    at = torch.arange(L)
    real = at[None, :] >= torch.tensor([L - n for n in LENGTHS])[:, None]  # [B, L]
    causal = at[None, :] <= at[:, None]  # [L, L]: key <= query
    return causal[None] & real[:, None, :]


def _full_attention(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, scaling: float) -> torch.Tensor:
    """``[B, L, L]`` head-averaged softmax(Q K^T * scaling + mask) of all rows, each query head given its KV head
    by repetition (``repeat_interleave``, as transformers' ``repeat_kv``), one row at a time."""
    k_full = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, H, L, hd]
    out = torch.zeros(B, L, L)
    for b in range(B):
        for row in range(L):
            if not allowed[b, row].any():
                continue  # a padding query: nothing to attend to
            logits = torch.einsum("hd,hkd->hk", q[b, :, row].double(), k_full[b].double()) * scaling  # [H, L]
            logits[:, ~allowed[b, row]] = float("-inf")
            out[b, row] = logits.softmax(-1).mean(0).float()
    return out


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2), (6, 1)])
def test_the_rater_rows_equal_the_full_attention_matrix(heads: int, kv_heads: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(B, heads, L, HD)
    k = torch.randn(B, kv_heads, L, HD)
    allowed = _allowed()
    scaling = HD**-0.5
    full = _full_attention(q, k, allowed, scaling)
    rows = torch.tensor([[11, 10, 7], [11, 8, 6], [11, 9, 7]])  # [B, R] rater positions, all real tokens
    picked = torch.arange(B)[:, None]
    got = rater_attention(q[picked, :, rows].transpose(1, 2), k, allowed[picked, rows], scaling)  # [B, R, L]
    assert got.shape == (B, 3, L) and got.dtype == torch.float32
    torch.testing.assert_close(got, full[picked, rows], rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(B, 3))
    assert not got.masked_select(~allowed[picked, rows]).any()  # no mass on future or padding keys


def test_it_matches_transformers_eager_attention_weights() -> None:
    """What the layer itself computes under ``attn_implementation="eager"``: its weights, mean over heads."""
    torch.manual_seed(1)
    heads, kv_heads = 8, 2
    q, k, v = torch.randn(B, heads, L, HD), torch.randn(B, kv_heads, L, HD), torch.randn(B, kv_heads, L, HD)
    allowed = _allowed()
    mask = torch.zeros(B, 1, L, L).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    layer = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    _, weights = eager_attention_forward(layer, q, k, v, mask, scaling=HD**-0.5)  # type: ignore[arg-type]
    got = rater_attention(q[:, :, -4:], k, allowed[:, -4:], HD**-0.5)  # the last 4 rows as raters
    torch.testing.assert_close(got, weights.mean(1)[:, -4:], rtol=1e-5, atol=1e-6)


def test_half_precision_keys_give_float32_probabilities_close_to_the_float32_ones() -> None:
    torch.manual_seed(2)
    q, k = torch.randn(B, 4, L, HD), torch.randn(B, 2, L, HD)
    allowed = _allowed()[:, -2:]
    exact = rater_attention(q[:, :, -2:], k, allowed, HD**-0.5)
    half = rater_attention(q[:, :, -2:].bfloat16(), k.bfloat16(), allowed, HD**-0.5)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, exact, rtol=0, atol=2e-2)  # bf16 logits: about 3 significant digits


def test_query_heads_must_be_a_multiple_of_the_kv_heads() -> None:
    q, k = torch.zeros(1, 6, 1, HD), torch.zeros(1, 4, 5, HD)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of key/value heads \(4\)"):
        rater_attention(q, k, torch.ones(1, 1, 5, dtype=torch.bool), 1.0)


def test_rater_attention_adds_the_key_bias_before_the_softmax() -> None:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, 2, 4, generator=g)  # [B, H, R, hd]
    k = torch.randn(1, 1, 5, 4, generator=g)  # one KV head for both query heads
    allowed = torch.ones(1, 2, 5, dtype=torch.bool)
    bias = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0]])
    got = rater_attention(q, k, allowed, 0.5, bias)
    logits = torch.einsum("bhrd,bkd->bhrk", q, k[:, 0]) * 0.5 + bias[:, None, None, :]
    assert torch.allclose(got, logits.softmax(-1).mean(1), atol=1e-6)
