"""Beam search on a pruned KV cache: it runs, and it equals beam search without the cache.

``generate(num_beams=k)`` expands each row k times before the prefill, so the sparse prefill prunes the k
copies alike, and reordering the cache between beams only swaps copies of one row whose pruning (kept tokens,
per-layer lengths, positions) is identical. Sampling with beams (``do_sample=True``) takes the same path.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import IMAGE_TOKEN, VIDEO_TOKEN, build_inputs, build_model, row_inputs

from sparsevlm import SparseConfig, apply_patch, last_stats

CONFIGS = {
    "budget": SparseConfig(prune_layers=(1, 2), keep_tokens=(40, 12)),
    "rank-compact": SparseConfig(prune_layers=(1,), rank_scale=2.0, rank_bias=1.0, positions="compact"),
}
SETTINGS = {
    "max_new_tokens": 5,
    "min_new_tokens": 5,
    "num_beams": 2,
    "do_sample": False,
    "suppress_tokens": [IMAGE_TOKEN, VIDEO_TOKEN],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_beam_search_with_a_pruned_cache_equals_without_and_rows_alone(name: str) -> None:
    model = apply_patch(build_model(), CONFIGS[name])
    inputs = build_inputs(model, [4, 9], seed=2)
    with torch.no_grad():
        cached = model.generate(**inputs, **SETTINGS)[:, -5:]
        stats = last_stats(model)
        uncached = model.generate(**inputs, **SETTINGS, use_cache=False)[:, -5:]
        alone = [model.generate(**row_inputs(inputs, r), **SETTINGS)[0, -5:] for r in range(2)]
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, torch.stack(alone))
    assert len(stats) == 2 * SETTINGS["num_beams"]  # the prefill ran on the expanded batch
    assert stats[0].visual_tokens_per_layer == stats[1].visual_tokens_per_layer  # the beams of one row pruned alike
    assert stats[0].visual_tokens_per_layer[-1] < stats[0].visual_tokens_in  # and pruning did happen
