"""Comparison methods behind the same interface as SparseVLM, at equal equivalent-token budgets.

Every method is a :class:`SparseConfig`, so it runs through the same patched decoder loop and fills the same
``last_stats``:

* ``sparsevlm`` -- ours: rater text tokens score the visual tokens, deleted tokens are recycled.
* ``fastv``     -- FastV's rule: the last prompt token's attention at layer K scores the visual tokens; no
  recycling.
* ``random``    -- uniformly random visual tokens at the same layer; no recycling.
* ``pool``      -- uniform spatial average pooling of every frame before the LLM (text-agnostic); the
  fraction applies to each frame's tokens, so every layer sees the pooled count.
* ``sparsevlm-xf`` -- ours with cross-frame recycling: static tokens merge across frames before the LLM,
  then text-guided pruning and time-aware recycling share the rest of the same budget.

Budgets are target fractions of the visual tokens in equivalent tokens, so every method is solved for the
same count on the model it runs on (:func:`sparsevlm.config.derive_target_schedule`).
"""

from __future__ import annotations

from sparsevlm.config import SparseConfig

METHODS = ("sparsevlm", "fastv", "random", "pool")
ALL_METHODS = (*METHODS, "sparsevlm-xf")
# FastV prunes after layer K = 2 in its paper; on shallow models the target derivation moves it earlier.
FASTV_LAYER = 2


def method_config(method: str, fraction: float, seed: int = 0) -> SparseConfig:
    """The config of ``method`` at ``fraction`` of the visual tokens (equivalent-token convention).

    Raises:
        ValueError: an unknown method or a fraction outside (0, 1].
    """
    if method == "sparsevlm":
        return SparseConfig(prune_layers=(1,), target_fraction=fraction, seed=seed, name=f"sparsevlm-{fraction:g}")
    if method == "sparsevlm-xf":
        return SparseConfig.preset("video-xf-25").replace(
            target_fraction=fraction, seed=seed, name=f"sparsevlm-xf-{fraction:g}"
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
