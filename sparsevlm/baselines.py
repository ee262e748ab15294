"""Comparison methods behind the same interface as SparseVLM, at equal equivalent-token budgets.

Every method is a :class:`SparseConfig`, so it runs through the same patched decoder loop and fills the same
``last_stats``:

* ``sparsevlm`` -- ours: rater text tokens score the visual tokens, deleted tokens are recycled.
* ``sparsevlm-text`` -- the same with every prompt token after the video as a rater instead of the ones whose
  embeddings relate to the visual tokens (the paper's "all text tokens" ablation).
* ``fastv``     -- FastV's rule: the last prompt token's attention at layer K scores the visual tokens; no
  recycling.
* ``random``    -- uniformly random visual tokens at the same layer; no recycling.
* ``pool``      -- uniform spatial average pooling of every frame before the LLM (text-agnostic); the
  fraction applies to each frame's tokens, so every layer sees the pooled count.
* ``sparsevlm-xf`` -- ours with cross-frame redundancy removed inside the LLM: at the first pruning layer,
  patches static since the previous frame rank below distinct ones, so the same budget goes where frames
  differ (:mod:`sparsevlm.repeats`); time-aware recycling.
* ``sparsevlm-xf-text`` -- ``sparsevlm-xf`` with the raters of ``sparsevlm-text``.
* ``sparsevlm-premerge`` / ``sparsevlm-premerge-text`` -- the earlier cross-frame variant: same-position
  tokens merge before the LLM, blind to the question (folds moving objects; kept for comparison).

Budgets are target fractions of the visual tokens in equivalent tokens, so every method is solved for the
same count on the model it runs on (:func:`sparsevlm.config.derive_target_schedule`).
"""

from __future__ import annotations

from typing import Literal, get_args

from sparsevlm.config import METHODS, PREMERGE, Method, SparseConfig

# SparseConfig's scoring methods (which prune inside the LLM) and pooling before it: no cross-frame reduction.
PlainMethod = Literal[Method, "pool"]
CrossFrameMethod = Literal["sparsevlm-xf", "sparsevlm-xf-text", "sparsevlm-premerge", "sparsevlm-premerge-text"]
ComparedMethod = Literal[PlainMethod, CrossFrameMethod]
PLAIN_METHODS: tuple[PlainMethod, ...] = get_args(PlainMethod)
CROSS_FRAME_METHODS: tuple[CrossFrameMethod, ...] = get_args(CrossFrameMethod)
ALL_METHODS: tuple[ComparedMethod, ...] = get_args(ComparedMethod)
# FastV prunes after layer K = 2 in its paper; on shallow models the target derivation moves it earlier.
FASTV_LAYER = 2


def method_config(method: str, fraction: float, seed: int = 0) -> SparseConfig:
    """The config of ``method`` at ``fraction`` of the visual tokens (equivalent-token convention).

    Raises:
        ValueError: an unknown method or a fraction outside (0, 1].
    """
    if method == "sparsevlm":
        return SparseConfig(prune_layers=(1,), target_fraction=fraction, seed=seed, name=f"sparsevlm-{fraction:g}")
    if method == "sparsevlm-text":
        return SparseConfig(
            prune_layers=(1,),
            target_fraction=fraction,
            method="sparsevlm-text",
            seed=seed,
            name=f"{method}-{fraction:g}",
        )
    if method in CROSS_FRAME_METHODS:
        # One step after layer 1, as ``sparsevlm`` above: the method as the paper's video setting runs it (the
        # product presets prune progressively; ``--presets`` and ``LAYERS@FRACTION`` schedules compare those).
        base = SparseConfig.preset("video-xf-25").replace(prune_layers=(1,), layers_of=None)
        if method.startswith("sparsevlm-premerge"):  # the floor of twice the target, as its presets had
            base = SparseConfig(prune_layers=(1,), target_fraction=0.25, merge_floor=2.0, **PREMERGE)
        return base.replace(
            target_fraction=fraction,
            method="sparsevlm-text" if method.endswith("-text") else "sparsevlm",
            seed=seed,
            name=f"{method}-{fraction:g}",
        )
    if method == "fastv":
        return SparseConfig(
            prune_layers=(FASTV_LAYER,),
            target_fraction=fraction,
            recycle_ratio=0.0,
            method="fastv",
            seed=seed,
            name=f"fastv-{fraction:g}",
        )
    if method == "random":
        return SparseConfig(
            prune_layers=(1,),
            target_fraction=fraction,
            recycle_ratio=0.0,
            method="random",
            seed=seed,
            name=f"random-{fraction:g}",
        )
    if method == "pool":
        return SparseConfig(spatial_pool=fraction, recycle_ratio=0.0, seed=seed, name=f"pool-{fraction:g}")
    raise ValueError(f"unknown method {method!r}; known methods: {', '.join(ALL_METHODS)}")


# A fixed schedule suits SparseConfig's scoring methods (:data:`sparsevlm.config.METHODS`): they prune inside
# the LLM (``pool`` acts before it). A shared target (``LAYERS@FRACTION``) also suits the cross-frame variants:
# their temporal merging spends part of the same budget before the LLM, and the target is solved for what is left.
TARGET_SCHEDULE_METHODS: tuple[ComparedMethod, ...] = (*METHODS[:2], *CROSS_FRAME_METHODS, *METHODS[2:])


def schedule_methods(schedule: str) -> tuple[ComparedMethod, ...]:
    """The methods that can run ``schedule``: all that prune inside the LLM for a shared target, the four
    without temporal merging (:data:`sparsevlm.config.METHODS`) for fixed counts."""
    return TARGET_SCHEDULE_METHODS if "@" in schedule else METHODS


def parse_schedule(text: str) -> tuple[tuple[int, ...], tuple[int, ...] | float]:
    """A fixed schedule ``"LAYERS:KEEPS"`` (``"1:52"``, ``"0,1:130,26"``: keep counts per layer) or a progressive
    target ``"LAYERS@FRACTION"`` (``"0,1@0.1"``: a budget shared by the layers, each step keeping the same share
    of its tokens) as ``(prune_layers, keep_tokens)`` or ``(prune_layers, target_fraction)``.

    Raises:
        ValueError: neither form with comma-separated integers (and one keep count per layer), naming the text.
    """
    usage = "is not LAYERS:KEEPS or LAYERS@FRACTION, e.g. '1:52', '0,1:130,26' or '0,1@0.1'"
    separator = "@" if "@" in text else ":"
    try:
        layers_text, rest = text.split(separator)
        layers = tuple(int(v) for v in layers_text.split(","))
        if separator == "@":
            return layers, float(rest)
        keeps = tuple(int(v) for v in rest.split(","))
    except ValueError:
        raise ValueError(f"schedule {text!r} {usage}") from None
    if len(layers) != len(keeps):
        raise ValueError(f"schedule {text!r} has {len(layers)} layers but {len(keeps)} keep counts")
    return layers, keeps


def schedule_config(method: str, schedule: str, seed: int = 0) -> SparseConfig:
    """The config of ``method`` at a schedule of :func:`parse_schedule`: fixed counts, or a target shared by
    several layers (each method's counts then solved for its own recycling, so the budgets are equal).

    Comparing methods at the same layers and counts separates how well each one chooses tokens from where a
    budget forces it to prune. ``sparsevlm`` and ``sparsevlm-text`` recycle as usual; ``fastv`` and ``random``
    do not; the cross-frame variants (shared targets only) merge across frames first, as in their presets.

    Raises:
        ValueError: a method that :func:`schedule_methods` does not admit for it, or a bad schedule (see
            :func:`parse_schedule` and :class:`SparseConfig`).
    """
    allowed = schedule_methods(schedule)
    if method not in allowed:
        raise ValueError(f"method {method!r} cannot run schedule {schedule!r}; use one of {', '.join(allowed)}")
    layers, budget = parse_schedule(schedule)
    name = f"{method}-{schedule}"
    if method in CROSS_FRAME_METHODS:
        assert isinstance(budget, float)  # schedule_methods admits them only for a shared target
        return method_config(method, budget, seed).replace(prune_layers=layers, layers_of=None, name=name)
    if isinstance(budget, float):
        config = SparseConfig(prune_layers=layers, target_fraction=budget, seed=seed, name=name)
    else:
        config = SparseConfig(prune_layers=layers, keep_tokens=budget, seed=seed, name=name)
    if method == "fastv":
        return config.replace(method="fastv", recycle_ratio=0.0)
    if method == "random":
        return config.replace(method="random", recycle_ratio=0.0)
    if method == "sparsevlm-text":
        return config.replace(method="sparsevlm-text")
    return config
