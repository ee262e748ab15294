"""Baselines at equal budgets through the same patched loop."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VIDEO_TOKEN, build_inputs, build_model, row_inputs

from sparsevlm import apply_patch, last_stats
from sparsevlm.baselines import (
    CROSS_FRAME_METHODS,
    PLAIN_METHODS,
    method_config,
    parse_schedule,
    schedule_config,
)
from sparsevlm.config import METHODS


@pytest.mark.parametrize("fraction", [0.25, 0.10])
def test_methods_share_the_budget_and_fill_stats(fraction: float) -> None:
    model = build_model(layers=6, image_size=64)  # 65 tokens per frame: pooling cells fine enough for the budget
    inputs = build_inputs(model, [6, 9], frames=4)
    equivalents = {}
    with torch.no_grad():
        for method in PLAIN_METHODS:
            apply_patch(model, method_config(method, fraction))
            model(**inputs)
            stats = last_stats(model)
            assert len(stats) == 2
            equivalents[method] = [s.equivalent_tokens / s.visual_tokens_in for s in stats]
            assert all(s.kept_indices or s.reduced_kept is not None for s in stats)
    for values in equivalents.values():
        assert all(abs(v - fraction) <= 0.02 for v in values)


def test_fastv_scores_are_the_last_tokens_attention() -> None:
    model = build_model("eager", layers=6)
    inputs = row_inputs(build_inputs(model, [10]), 0)
    cfg = method_config("fastv", 0.25)
    with torch.no_grad():
        dense = model(**inputs, output_attentions=True)
        apply_patch(model, cfg)
        model(**inputs)
    stats = last_stats(model)[0]
    layer = next(iter(stats.kept_indices))
    length = inputs["input_ids"].shape[1]
    assert stats.raters.tolist() == [length - 1]
    visual = (inputs["input_ids"][0] == VIDEO_TOKEN).nonzero().squeeze(1)
    expected = dense.attentions[layer][0].float().mean(0)[-1, visual]
    assert torch.allclose(stats.scores[layer], expected, atol=1e-6, rtol=1e-5)
    assert not stats.clusters  # no recycling


def test_text_raters_are_every_prompt_token_after_the_video() -> None:
    model = build_model("eager", layers=6)
    inputs = row_inputs(build_inputs(model, [10]), 0)
    with torch.no_grad():
        dense = model(**inputs, output_attentions=True)
        apply_patch(model, method_config("sparsevlm-text", 0.25))
        model(**inputs)
    stats = last_stats(model)[0]
    layer = next(iter(stats.kept_indices))
    visual = (inputs["input_ids"][0] == VIDEO_TOKEN).nonzero().squeeze(1)
    after = list(range(int(visual.max()) + 1, inputs["input_ids"].shape[1]))
    assert stats.raters.tolist() == after and len(after) == 11  # the question's 10 tokens and the closing one
    expected = dense.attentions[layer][0].float().mean(0)[after][:, visual].mean(0)
    assert torch.allclose(stats.scores[layer], expected, atol=1e-6, rtol=1e-5)
    assert stats.clusters  # recycled like sparsevlm


def test_random_is_seeded_and_independent_of_the_batch() -> None:
    model = apply_patch(build_model(), method_config("random", 0.25, seed=3))
    inputs = build_inputs(model, [5, 8])
    with torch.no_grad():
        model(**inputs)
        batch = last_stats(model)
        model(**row_inputs(inputs, 1))
        alone = last_stats(model)[0]
    layer = next(iter(alone.kept_indices))
    assert torch.equal(alone.kept_indices[layer], batch[1].kept_indices[layer])


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown method 'tome'"):
        method_config("tome", 0.1)


def test_fixed_schedules_prune_every_method_at_the_same_layers_and_counts() -> None:
    model = build_model(layers=6, image_size=64)
    inputs = build_inputs(model, [6, 9], frames=4)
    counts = {}
    with torch.no_grad():
        for method in METHODS:
            config = schedule_config(method, "1,3:60,20")
            assert (config.prune_layers, config.keep_tokens) == ((1, 3), (60, 20))
            apply_patch(model, config)
            model(**inputs)
            counts[method] = [s.visual_tokens_per_layer for s in last_stats(model)]
    # fastv and random keep exactly the counts; both sparsevlm variants add recycled clusters to the kept tokens
    assert counts["fastv"] == counts["random"]
    assert counts["sparsevlm"] == counts["sparsevlm-text"]
    assert counts["fastv"][0] == [260, 260, 60, 60, 20, 20]  # entering each of the 6 layers
    assert all(s >= f for s, f in zip(counts["sparsevlm"][0], counts["fastv"][0], strict=True))
    assert counts["sparsevlm"][0][2] > 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1", "not LAYERS:KEEPS or LAYERS@FRACTION"),
        ("1:a", "not LAYERS:KEEPS"),
        ("0,1@x", "not LAYERS:KEEPS"),
        ("0,1:52", "2 layers but 1 keep counts"),
    ],
)
def test_bad_schedules_name_the_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_pool_cannot_run_a_fixed_schedule() -> None:
    with pytest.raises(ValueError, match="'pool' cannot run schedule '1:52'"):
        schedule_config("pool", "1:52")


def test_the_cross_frame_variants_differ_only_in_their_raters() -> None:
    xf, xf_text = method_config("sparsevlm-xf", 0.1), method_config("sparsevlm-xf-text", 0.1)
    assert xf.static_threshold is not None and xf.temporal_merge is None and xf.method == "sparsevlm"
    assert xf.replace(method="sparsevlm-text", name=xf_text.name) == xf_text
    pre, pre_text = method_config("sparsevlm-premerge", 0.1), method_config("sparsevlm-premerge-text", 0.1)
    assert pre.temporal_merge == 0.9 and pre.merge_floor == 2.0 and pre.static_threshold is None
    assert pre.replace(method="sparsevlm-text", name=pre_text.name) == pre_text


def test_a_shared_target_gives_every_method_the_same_budget_over_the_same_layers() -> None:
    model = build_model(layers=6, image_size=64)
    inputs = build_inputs(model, [6, 9], frames=4)
    with torch.no_grad():
        for method in METHODS:
            apply_patch(model, schedule_config(method, "1,3@0.2"))
            model(**inputs)
            for stats in last_stats(model):
                assert sorted(stats.kept_indices) == [1, 3]
                assert abs(stats.equivalent_tokens / stats.visual_tokens_in - 0.2) <= 0.01
    assert parse_schedule("0,1@0.1") == ((0, 1), 0.1)


def test_the_cross_frame_variants_run_a_shared_target_but_not_fixed_counts() -> None:
    model = build_model(layers=6, image_size=64)
    inputs = build_inputs(model, [6, 9], frames=4)
    for method in CROSS_FRAME_METHODS:
        config = schedule_config(method, "1,3@0.2")
        assert config.prune_layers == (1, 3) and config.target_fraction == 0.2
        assert config.replace(prune_layers=(1,), name=method_config(method, 0.2).name) == method_config(method, 0.2)
        with torch.no_grad():
            apply_patch(model, config)
            model(**inputs)
        for stats in last_stats(model):
            assert set(stats.kept_indices) <= {1, 3}
            assert abs(stats.equivalent_tokens / 260 - 0.2) <= 0.02  # 4 frames x 65 tokens before merging
        with pytest.raises(ValueError, match=f"method '{method}' cannot run schedule '1:52'"):
            schedule_config(method, "1:52")
