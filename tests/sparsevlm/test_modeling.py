"""The sparsified prefill: exact scores, consistent cache and positions, batching, schedules."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IMAGE_TOKEN, VIDEO_TOKEN, build_inputs, build_model, row_inputs

from sparsevlm import SparseConfig, apply_patch, last_stats, remove_patch
from sparsevlm.token_counts import equivalent_tokens

BUDGET = SparseConfig(prune_layers=(1, 2), keep_tokens=(40, 12))
RANK = SparseConfig(prune_layers=(1,), rank_scale=2.0, rank_bias=1.0)
CONFIGS = {
    "budget": BUDGET,
    "rank": RANK,
    "budget-compact": BUDGET.replace(positions="compact"),
    "rank-compact": RANK.replace(positions="compact"),
    "no-recycling": BUDGET.replace(recycle_ratio=0.0),
    "weighted": BUDGET.replace(recycle_ratio=1.0, cluster_ratio=0.2, weigh_merged=True),
}


def _independent_raters(embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 5-6 written out for one unpadded row: positions of the raters."""
    visual = (input_ids == VIDEO_TOKEN).nonzero().squeeze(1)
    text = torch.arange(int(visual.max()) + 1, input_ids.shape[0])
    relevance = torch.softmax(embeds[visual] @ embeds[text].T, dim=1).mean(0)
    return text[relevance > relevance.mean()]


def test_raters_scores_and_kept_tokens_equal_eager_attention() -> None:
    model = build_model("eager")
    inputs = row_inputs(build_inputs(model, [12]), 0)
    with torch.no_grad():
        dense = model(**inputs, output_attentions=True, output_hidden_states=True)
        apply_patch(model, BUDGET)
        model(**inputs)
    stats = last_stats(model)[0]
    ids = inputs["input_ids"][0]
    raters = _independent_raters(dense.hidden_states[0][0].float(), ids)
    assert torch.equal(stats.raters, raters)

    layer = BUDGET.prune_layers[0]  # the first pruning layer sees the unpruned sequence
    probs = dense.attentions[layer][0].float().mean(0)  # [L, L], mean over heads
    visual = (ids == VIDEO_TOKEN).nonzero().squeeze(1)
    expected = probs[raters][:, visual].mean(0)
    assert torch.allclose(stats.scores[layer], expected, atol=1e-6, rtol=1e-5)
    kept = expected.topk(BUDGET.keep_tokens[0]).indices.sort().values  # type: ignore[index]
    assert torch.equal(stats.kept_indices[layer], kept)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generate_with_cache_equals_without_and_batch_equals_rows(attn: str, name: str) -> None:
    model = apply_patch(build_model(attn), CONFIGS[name])
    inputs = build_inputs(model, [4, 11, 7], seed=1)
    settings = {
        "max_new_tokens": 6,
        "do_sample": False,
        "min_new_tokens": 6,
        "suppress_tokens": [IMAGE_TOKEN, VIDEO_TOKEN],
    }
    with torch.no_grad():
        cached = model.generate(**inputs, **settings)[:, -6:]
        batch_stats = last_stats(model)
        uncached = model.generate(**inputs, **settings, use_cache=False)[:, -6:]
        for row in range(3):
            alone = model.generate(**row_inputs(inputs, row), **settings)[:, -6:]
            assert torch.equal(alone[0], cached[row]), f"row {row} differs from its batch result"
            alone_stats = last_stats(model)[0]
            assert alone_stats.visual_tokens_per_layer == batch_stats[row].visual_tokens_per_layer
            for layer, kept in alone_stats.kept_indices.items():
                assert torch.equal(kept, batch_stats[row].kept_indices[layer])
    assert torch.equal(cached, uncached)
    assert all(s.equivalent_tokens < s.visual_tokens_in for s in batch_stats)


def test_sequence_and_cache_lengths_follow_the_schedule() -> None:
    model = apply_patch(build_model(), BUDGET)
    inputs = row_inputs(build_inputs(model, [9]), 0)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    stats = last_stats(model)[0]
    length = inputs["input_ids"].shape[1]
    text = length - 136
    # 136 -> keep 40 (+ clusters of int(0.3*96)+1 = 29 -> 3) = 43 -> keep 12 (+ 31 deleted -> 10 -> 2) = 14
    assert stats.visual_tokens_per_layer == [136, 136, 43, 14]
    assert stats.seq_len_per_layer == [length, length, text + 43, text + 14]
    cache_lens = [layer.keys.shape[2] for layer in out.past_key_values.layers]
    assert cache_lens == stats.seq_len_per_layer
    assert stats.equivalent_tokens == equivalent_tokens([136, 43, 14, 14])
    assert stats.clusters == {1: 3, 2: 2}
    assert len(stats.kept_indices[1]) == 40 and len(stats.kept_indices[2]) <= 12
    assert set(stats.kept_indices[2].tolist()) <= set(stats.kept_indices[1].tolist())
    assert stats.prefill_flops < stats.dense_prefill_flops


def test_llava_budgets_on_a_576_token_image_reproduce_published_counts() -> None:
    model = build_model(image_size=96, patch=4, layers=32, hidden=32)
    ids = torch.tensor([[1, 5, 6] + [IMAGE_TOKEN] * 576 + list(range(20, 40)) + [7]])
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    expected = {"llava-192": 192.03, "llava-128": 128.62, "llava-64": 64.81}
    with torch.no_grad():
        for preset, value in expected.items():
            apply_patch(model, preset)
            model(input_ids=ids, pixel_values=pixels)
            stats = last_stats(model)[0]
            assert stats.visual_tokens_in == 576
            assert round(stats.equivalent_tokens, 2) == value


@pytest.mark.parametrize("preset", ["video-50", "video-25", "video-10", "video-5"])
def test_video_presets_hit_their_fraction_on_the_model(preset: str) -> None:
    model = apply_patch(build_model(layers=6), preset)
    fraction = int(preset.split("-")[1]) / 100
    with torch.no_grad():
        model(**build_inputs(model, [8, 5]))
    for stats in last_stats(model):
        assert abs(stats.equivalent_tokens / stats.visual_tokens_in - fraction) <= 0.02


def test_rank_mode_keeps_a_rank_derived_count() -> None:
    model = apply_patch(build_model(), SparseConfig(prune_layers=(1,), rank_scale=1.0, recycle_ratio=0.0))
    with torch.no_grad():
        model(**build_inputs(model, [10]))
    stats = last_stats(model)[0]
    n_raters = stats.raters.numel()
    kept = stats.kept_indices[1].numel()
    assert 1 <= kept <= n_raters  # rank(P) of an n_raters x Lv matrix
    assert stats.visual_tokens_per_layer[2] == kept


def test_real_video_llava_token_layout_runs() -> None:
    """8 frames x 257 tokens (224 px, patch 14: the Video-LLaVA-7B layout) at tiny widths."""
    model = apply_patch(build_model(image_size=224, patch=14, layers=3), "video-10")
    inputs = build_inputs(model, [30, 22])
    assert int((inputs["input_ids"][0] == VIDEO_TOKEN).sum()) == 2056
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    for stats in last_stats(model):
        assert stats.visual_tokens_in == 2056
        assert abs(stats.equivalent_tokens / 2056 - 0.10) <= 0.02
        assert stats.flops_ratio < 0.45  # layer 0 runs on all 2,100 tokens, layers 1-2 on ~250
    remove_patch(model)


@pytest.mark.parametrize("lengths", [[9], [9, 5]], ids=["unpadded", "padded"])
def test_a_callers_own_decoding_loop_equals_generate(lengths: list[int]) -> None:
    """Outside generate() the patch reads the new mask columns (a caller may pass padding there); inside it
    trusts generate's all-ones columns: both give the same logits, and a padding column changes the step."""
    model = apply_patch(build_model(layers=4), BUDGET)
    inputs = build_inputs(model, lengths, seed=2)
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with torch.no_grad():
        out = model.generate(**inputs, **settings, output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, inputs["input_ids"].shape[1] :]  # [B, 4]: fed back one by one below
        step = model(**inputs, use_cache=True)
        mask, cache = inputs["attention_mask"], step.past_key_values
        logits = [step.logits[:, -1]]
        for k in range(3):
            token = new[:, k : k + 1]  # [B, 1]
            mask = torch.cat([mask, torch.ones_like(token)], 1)
            step = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            logits.append(step.logits[:, -1])
        for got, want in zip(logits, out.logits, strict=True):
            torch.testing.assert_close(got, want)
        token = new[:, 3:4]
        seen = model(
            input_ids=token, attention_mask=torch.cat([mask, torch.ones_like(token)], 1), past_key_values=cache
        )
        cache.crop(-1)  # drop the step just taken, to take it again with the padding column
        hidden = mask.clone()
        hidden[0, -1] = 0  # row 0's last generated token is padding now: this step must not see it
        unseen = model(
            input_ids=token, attention_mask=torch.cat([hidden, torch.ones_like(token)], 1), past_key_values=cache
        )
    assert not torch.allclose(seen.logits[0], unseen.logits[0])
    torch.testing.assert_close(seen.logits[1:], unseen.logits[1:])


def test_weighing_merged_tokens_changes_the_answer_distribution_and_nothing_before_the_first_prune() -> None:
    model = build_model()
    inputs = build_inputs(model, [9, 5], seed=3)
    config = BUDGET.replace(recycle_ratio=1.0, cluster_ratio=0.2)
    with torch.no_grad():
        plain = apply_patch(model, config)(**inputs).logits[:, -1]
        plain_stats = last_stats(model)
        weighted = apply_patch(model, config.replace(weigh_merged=True))(**inputs).logits[:, -1]
        weighted_stats = last_stats(model)
    first = BUDGET.prune_layers[0]
    for a, b in zip(plain_stats, weighted_stats, strict=True):
        assert torch.equal(a.kept_indices[first], b.kept_indices[first])  # the first step sees no weights yet
        assert a.visual_tokens_per_layer == b.visual_tokens_per_layer  # the same token counts
    assert not torch.allclose(plain, weighted)  # the merged tokens' weights reach the answer
