"""What each preset costs on a given model layout, from the token arithmetic and the FLOPs formula.

No model runs here: budget and target schedules are deterministic given the layout, so their equivalent
tokens and prefill FLOPs follow from :mod:`sparsevlm.token_counts`. Rank mode depends on the attention at run
time; its row assumes a rank (the paper's video setting has rank(P) close to the number of raters, about 10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sparsevlm.bench.layout import VIDEO_TOKENS, Widths
from sparsevlm.config import PRESETS, SparseConfig
from sparsevlm.token_counts import equivalent_tokens, prefill_flops, simulate_visual_counts

_7B = Widths()


@dataclass(frozen=True)
class CostLayout:
    """What a prompt's prefill cost depends on: the language model's sizes and the prompt's token counts
    (defaults: Video-LLaVA-7B, 8 frames x 257 tokens, a 40-token question)."""

    num_layers: int = _7B.layers
    hidden: int = _7B.hidden
    ffn: int = _7B.ffn
    n_visual: int = VIDEO_TOKENS
    n_text: int = 40


@dataclass(frozen=True)
class PresetCost:
    preset: str
    prune_layers: list[int]
    keep: list[int | None]
    visual_after: int
    equivalent_tokens: float
    fraction: float
    flops_ratio: float
    note: str
    prefill_flops: float = 0.0  # one prompt's prefill under the config (token_counts.prefill_flops)
    dense_prefill_flops: float = 0.0  # the same prompt without pruning


def preset_cost(name: str, layout: CostLayout, assumed_rank: int = 10) -> PresetCost:
    """Equivalent tokens and prefill FLOPs ratio of one preset on ``layout``."""
    return config_cost(SparseConfig.preset(name), layout, assumed_rank)


def config_cost(cfg: SparseConfig, layout: CostLayout, assumed_rank: int = 10) -> PresetCost:
    """Equivalent tokens and prefill FLOPs ratio of any SparseConfig on ``layout`` (named ``cfg.name``).

    Raises:
        ValueError: a prune layer of ``cfg`` that the layout does not have.
    """
    schedule = cfg.schedule(layout.num_layers, layout.n_visual)
    note = ""
    if cfg.mode == "rank":
        assert cfg.rank_scale is not None
        keep_at = {layer: int(cfg.rank_scale * assumed_rank + cfg.rank_bias) for layer in schedule}
        note = f"assumes rank(P) = {assumed_rank}"
    else:
        keep_at = {layer: k for layer, k in schedule.items() if k is not None}
    counts = simulate_visual_counts(layout.n_visual, layout.num_layers, keep_at, cfg.recycle_ratio, cfg.cluster_ratio)
    seq = [c + layout.n_text for c in counts[:-1]]  # tokens entering each layer
    dense = [layout.n_visual + layout.n_text] * layout.num_layers
    equiv = equivalent_tokens(counts[1:])
    sparse_flops = prefill_flops(seq, layout.hidden, layout.ffn)
    dense_flops = prefill_flops(dense, layout.hidden, layout.ffn)
    return PresetCost(
        preset=cfg.name,
        prune_layers=sorted(keep_at),
        keep=[keep_at[layer] for layer in sorted(keep_at)],
        visual_after=counts[-1],
        equivalent_tokens=round(equiv, 2),
        fraction=round(equiv / layout.n_visual, 4),
        flops_ratio=round(sparse_flops / dense_flops, 4),
        note=note,
        prefill_flops=sparse_flops,
        dense_prefill_flops=dense_flops,
    )


def preset_table(layout: CostLayout | None = None) -> list[dict[str, object]]:
    """One row per preset (see :data:`sparsevlm.config.PRESETS`) that fits the layout."""
    layout = layout or CostLayout()
    rows = []
    for name in PRESETS:
        try:
            rows.append(asdict(preset_cost(name, layout)))
        except ValueError:  # a preset whose prune layers the layout does not have
            continue
    return rows
