"""SparseConfig validation, presets and the token arithmetic of the schedules."""

from __future__ import annotations

import pytest

from sparsevlm import PRESETS, SparseConfig
from sparsevlm.config import _closest_keep
from sparsevlm.token_counts import equivalent_tokens, prefill_flops, simulate_visual_counts


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prune_layers": (2, 1), "keep_tokens": (5, 4)}, "strictly increasing"),
        ({"prune_layers": (-1,), "keep_tokens": (5,)}, "non-negative"),
        ({"prune_layers": (1, 2), "keep_tokens": (5,)}, "one entry per prune layer"),
        ({"prune_layers": (1,), "keep_tokens": (0,)}, "keep_tokens must be ints >= 1"),
        ({"prune_layers": (1,)}, "set exactly one of"),
        ({"prune_layers": (1,), "keep_tokens": (5,), "rank_scale": 1.0}, "set exactly one of"),
        ({"keep_tokens": (5,)}, r"one entry per prune layer \(0\)"),
        ({"rank_scale": 1.0}, "prune_layers is empty"),
        ({"prune_layers": (1,), "rank_scale": 0.0}, "rank_scale must be > 0"),
        ({"prune_layers": (1,), "target_fraction": 1.5}, r"target_fraction must be in \(0, 1\]"),
        ({"recycle_ratio": -0.1}, r"recycle_ratio must be in \[0, 1\]"),
        ({"cluster_ratio": 0.0}, r"cluster_ratio must be in \(0, 1\]"),
        ({"positions": "absolute"}, "positions must be 'original' or 'compact'"),
        ({"seed": -3}, "seed must be an int >= 0"),
    ],
)
def test_bad_values_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseConfig(**fields)  # type: ignore[arg-type]


def test_presets_exist_and_are_frozen() -> None:
    for name in (
        "dense",
        "llava-192",
        "llava-128",
        "llava-64",
        "video-rank",
        "video-50",
        "video-25",
        "video-10",
    ):
        assert name in PRESETS
        assert SparseConfig.preset(name).name == name
    cfg = SparseConfig.preset("video-rank")
    assert cfg.mode == "rank" and cfg.prune_layers == (1,) and cfg.rank_scale == 1.0
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
    assert SparseConfig.preset("dense").is_dense
    assert cfg.replace(seed=4).seed == 4


@pytest.mark.parametrize(("preset", "expected"), [("llava-192", 192.03), ("llava-128", 128.62), ("llava-64", 64.81)])
def test_llava_budgets_reproduce_published_equivalent_tokens(preset: str, expected: float) -> None:
    cfg = SparseConfig.preset(preset)
    counts = simulate_visual_counts(576, 32, cfg.schedule(32, 576), cfg.recycle_ratio, cfg.cluster_ratio)  # type: ignore[arg-type]
    assert round(equivalent_tokens(counts[1:]), 2) == expected


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.10, 0.05])
@pytest.mark.parametrize(("layers", "n_visual"), [(32, 2056), (4, 136), (4, 520), (2, 520)])
def test_video_targets_hit_their_fraction(fraction: float, layers: int, n_visual: int) -> None:
    cfg = SparseConfig.preset(f"video-{round(fraction * 100)}")
    schedule = cfg.schedule(layers, n_visual)
    counts = simulate_visual_counts(n_visual, layers, schedule, cfg.recycle_ratio, cfg.cluster_ratio)  # type: ignore[arg-type]
    assert abs(equivalent_tokens(counts[1:]) / n_visual - fraction) <= 0.02


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.10, 0.05])
@pytest.mark.parametrize(("layers", "n_visual"), [(32, 2056), (4, 136), (4, 520)])
def test_one_step_video_targets_hit_their_fraction(fraction: float, layers: int, n_visual: int) -> None:
    cfg = SparseConfig.preset(f"video-onestep-{round(fraction * 100)}")
    schedule = cfg.schedule(layers, n_visual)
    assert len(schedule) == 1
    counts = simulate_visual_counts(n_visual, layers, schedule, cfg.recycle_ratio, cfg.cluster_ratio)  # type: ignore[arg-type]
    assert abs(equivalent_tokens(counts[1:]) / n_visual - fraction) <= 0.02


def test_one_step_video_target_prefers_layer_one_on_deep_models() -> None:
    assert list(SparseConfig.preset("video-onestep-10").schedule(32, 2056)) == [1]
    assert list(SparseConfig.preset("video-onestep-10").schedule(4, 136)) == [0]  # layer 1 alone costs 25 %


def test_the_default_video_presets_prune_progressively_at_depths_scaled_to_the_model() -> None:
    cfg = SparseConfig.preset("video-10")
    assert list(cfg.schedule(32, 2056)) == [0, 2, 6, 15]  # the 7B's own depth: the layers as written
    assert list(cfg.schedule(4, 520)) == [0, 1, 2]  # round(layer * 4 / 32), repeats dropped
    assert cfg.scaled_layers(64) == (0, 4, 12, 30)
    keeps = list(cfg.schedule(32, 2056).values())
    assert keeps == sorted(keeps, reverse=True)  # each step keeps a share of what enters it


def test_layers_of_must_exceed_every_prune_layer() -> None:
    with pytest.raises(ValueError, match="layers_of must be an int above every prune layer"):
        SparseConfig(prune_layers=(2, 6), target_fraction=0.1, layers_of=6)
    fixed = SparseConfig(prune_layers=(2, 3), keep_tokens=(100, 50), layers_of=32)
    with pytest.raises(ValueError, match="fewer than the 2 keep counts"):
        fixed.schedule(4, 520)  # both layers become 0 on 4 layers


@pytest.mark.parametrize("fraction", [0.25, 0.10, 0.05])
@pytest.mark.parametrize(("layers", "n_visual", "prune_layers"), [(4, 520, (0, 1)), (32, 2056, (1, 6, 15))])
@pytest.mark.parametrize("recycle_ratio", [0.3, 0.0])
def test_progressive_targets_hit_their_fraction_with_one_share_per_step(
    fraction: float, layers: int, n_visual: int, prune_layers: tuple[int, ...], recycle_ratio: float
) -> None:
    cfg = SparseConfig(prune_layers=prune_layers, target_fraction=fraction, recycle_ratio=recycle_ratio)
    schedule = cfg.schedule(layers, n_visual)
    assert list(schedule) == list(prune_layers)  # every given layer prunes; none moves
    counts = simulate_visual_counts(n_visual, layers, schedule, cfg.recycle_ratio, cfg.cluster_ratio)  # type: ignore[arg-type]
    assert abs(equivalent_tokens(counts[1:]) / n_visual - fraction) <= 0.005
    shares = [keep / counts[layer] for layer, keep in schedule.items() if keep is not None]  # kept / entering
    assert max(shares) - min(shares) < 0.05 and all(0 < x < 1 for x in shares)


def test_schedule_rejects_missing_layers() -> None:
    with pytest.raises(ValueError, match="prune layer 6 does not exist"):
        SparseConfig.preset("llava-64").schedule(4, 576)


def test_prefill_flops_formula() -> None:
    assert prefill_flops([10, 5], hidden=4, ffn=8) == (4 * 10 * 16 + 2 * 100 * 4 + 3 * 10 * 4 * 8) + (
        4 * 5 * 16 + 2 * 25 * 4 + 3 * 5 * 4 * 8
    )


def _closest_keep_by_simulation(
    fraction: float, num_layers: int, n_visual: int, layer: int, recycle: float, cluster: float
) -> tuple[float, int]:
    """The search the schedule used before it was vectorised: every keep count simulated layer by layer."""
    target = fraction * n_visual
    return min(
        (
            abs(
                sum(simulate_visual_counts(n_visual, num_layers, {layer: k}, recycle, cluster)[1:]) / num_layers
                - target
            ),
            k,
        )
        for k in range(1, n_visual + 1)
    )


@pytest.mark.parametrize("n_visual", [1, 2, 57, 576, 1703, 2056])
@pytest.mark.parametrize(("fraction", "recycle", "cluster"), [(0.25, 0.3, 0.1), (0.05, 0.0, 0.1), (0.5, 1.0, 1.0)])
def test_the_vectorised_keep_search_equals_the_simulation(
    n_visual: int, fraction: float, recycle: float, cluster: float
) -> None:
    for num_layers, layer in [(32, 1), (32, 0), (4, 3)]:
        want = _closest_keep_by_simulation(fraction, num_layers, n_visual, layer, recycle, cluster)
        assert _closest_keep(layer, num_layers, n_visual, fraction * n_visual, recycle, cluster) == want


def test_weighing_merged_tokens_needs_recycling() -> None:
    with pytest.raises(ValueError, match="recycle_ratio is 0"):
        SparseConfig(prune_layers=(1,), target_fraction=0.25, recycle_ratio=0.0, weigh_merged=True)
    assert SparseConfig(prune_layers=(1,), target_fraction=0.25, recycle_ratio=1.0, weigh_merged=True).weigh_merged


def test_a_later_option_at_its_old_behaviour_leaves_the_json_and_so_the_config_key_as_before() -> None:
    plain = SparseConfig.preset("video-onestep-25")
    assert "weigh_merged" not in plain.to_json()  # the key outputs were written under before the option existed
    weighted = SparseConfig.preset("video-xf-25")
    assert weighted.weigh_merged and '"weigh_merged": true' in weighted.to_json()
