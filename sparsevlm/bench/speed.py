"""Prefill speed, memory and KV-cache of sparse vs dense on the Video-LLaVA-7B layout (random weights).

The language model has the 7B widths (hidden 4096, 32 heads, FFN 11008) at a reduced depth; the vision tower
is tiny (its cost is not what is measured) but emits the real token layout, 8 frames x 257 tokens. Each
preset runs the keep counts it has on the full 32-layer model, compressed to one reduced layer per run of
full-depth layers of equal length (:func:`reduced_config`): reduced layer ``i`` runs at the length of block
``i``. Every decoder layer is timed on its own (CPU: synchronous), and the full-depth time is each block's
layer count times its reduced layer's time, plus the pruning overhead. Presets and dense alternate within one
process (interleaved repetitions) so machine noise hits all alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

from sparsevlm.bench.layout import FRAMES, IMAGE_SIZE, MAX_POSITIONS, PATCH_SIZE, Widths
from sparsevlm.config import SparseConfig
from sparsevlm.patch import apply_patch, last_stats
from sparsevlm.token_counts import equivalent_tokens, prefill_flops, simulate_visual_counts, video_tokens_per_frame

VIDEO_TOKEN, IMAGE_TOKEN = 31, 30
_7B = Widths()


@dataclass(frozen=True)
class SpeedLayout:
    """Model and input sizes; the defaults are Video-LLaVA-7B's language model and token layout."""

    hidden: int = _7B.hidden
    heads: int = _7B.heads
    kv_heads: int = _7B.heads  # LLaMA-7B has no grouped-query attention
    ffn: int = _7B.ffn
    depth: int = 3
    full_depth: int = _7B.layers
    image_size: int = IMAGE_SIZE
    patch: int = PATCH_SIZE
    frames: int = FRAMES
    text_tokens: int = 40

    @property
    def n_visual(self) -> int:
        return self.frames * video_tokens_per_frame(self.image_size, self.patch)


def build_speed_model(layout: SpeedLayout, dtype: torch.dtype) -> VideoLlavaForConditionalGeneration:
    """A random Video-LLaVA with the layout's language model and a tiny vision tower."""
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=layout.image_size,
        patch_size=layout.patch,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=layout.hidden,
        intermediate_size=layout.ffn,
        num_hidden_layers=layout.depth,
        num_attention_heads=layout.heads,
        num_key_value_heads=layout.kv_heads,
        max_position_embeddings=MAX_POSITIONS,
    )
    config = VideoLlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN
    )
    model = VideoLlavaForConditionalGeneration(config).eval()
    return model.to(dtype)


def speed_inputs(layout: SpeedLayout, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One prompt: a short pre-prompt, the video tokens, then a question-length text."""
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(32, 64, (layout.text_tokens,), generator=gen).tolist()
    ids = [1, 40, 41] + [VIDEO_TOKEN] * layout.n_visual + text
    pixels = torch.randn(1, layout.frames, 3, layout.image_size, layout.image_size, generator=gen)
    return {"input_ids": torch.tensor([ids]), "pixel_values_videos": pixels.to(dtype)}


def full_depth_config(preset: str, layout: SpeedLayout) -> SparseConfig:
    """The preset's schedule on the full-depth model, as a fixed budget that runs at any depth."""
    cfg = SparseConfig.preset(preset)
    if cfg.is_dense or cfg.mode == "budget":
        return cfg
    schedule = cfg.schedule(layout.full_depth, layout.n_visual)
    if any(k is None for k in schedule.values()):
        raise ValueError(f"preset {preset!r} is rank-based; its budget is only known at run time")
    layers = tuple(sorted(schedule))
    keeps = tuple(int(schedule[layer]) for layer in layers)  # type: ignore[arg-type]
    return cfg.replace(prune_layers=layers, keep_tokens=keeps, target_fraction=None, layers_of=None, name=preset)


def reduced_config(full: SparseConfig) -> SparseConfig:
    """A full-depth budget config (:func:`full_depth_config`) compressed for the reduced model: step ``j`` prunes
    after reduced layer ``j`` with the same count, so reduced layer ``i`` runs at the length that full-depth
    layers ``prune_layers[i-1] + 1 .. prune_layers[i]`` run at (:func:`block_sizes`)."""
    if full.is_dense:
        return full
    return full.replace(prune_layers=tuple(range(len(full.prune_layers))))


def block_sizes(full: SparseConfig, full_depth: int) -> list[int]:
    """How many full-depth layers each reduced layer of :func:`reduced_config` stands for."""
    bounds = [-1, *full.prune_layers, full_depth - 1] if not full.is_dense else [-1, full_depth - 1]
    return [b - a for a, b in itertools.pairwise(bounds)]


def reduced_depth(configs: list[SparseConfig], layout: SpeedLayout) -> int:
    """Decoder layers of the reduced model: enough for every preset's steps plus one layer after the last."""
    return max([layout.depth, *(len(c.prune_layers) + 1 for c in configs)])


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by a DynamicCache after prefill."""
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


def measure(
    layout: SpeedLayout, presets: list[str], dtype: torch.dtype, repeats: int, threads: int
) -> list[dict[str, Any]]:
    """Median prefill time, KV bytes, FLOPs and pruning overhead of dense and each preset, interleaved."""
    torch.set_num_threads(threads)
    configs = {"dense": SparseConfig.preset("dense"), **{p: full_depth_config(p, layout) for p in presets}}
    layout = dataclasses.replace(layout, depth=reduced_depth(list(configs.values()), layout))
    model = build_speed_model(layout, dtype)
    inputs = speed_inputs(layout, dtype)
    lm = model.model.language_model
    times: dict[str, list[float]] = {name: [] for name in configs}
    overhead: dict[str, list[float]] = {name: [] for name in configs}
    layer_times: dict[str, list[list[float]]] = {name: [] for name in configs}
    clock = _LayerClock(lm.layers)
    info: dict[str, dict[str, Any]] = {}
    for rep in range(repeats + 1):  # the first round warms up
        for name, cfg in configs.items():
            apply_patch(model, reduced_config(cfg))
            clock.reset()
            spent = [0.0]
            original = getattr(lm, "_prune", None)
            if original is not None:

                def timed(*args: Any, _orig: Any = original, _spent: list[float] = spent, **kwargs: Any) -> Any:
                    began = time.perf_counter()
                    try:
                        return _orig(*args, **kwargs)
                    finally:
                        _spent[0] += time.perf_counter() - began

                lm._prune = timed
            began = time.perf_counter()
            with torch.no_grad():
                out = model(**inputs, use_cache=True, logits_to_keep=1)
            elapsed = time.perf_counter() - began
            if original is not None:
                del lm._prune
            if rep == 0:
                stats = last_stats(model)[0]
                info[name] = {
                    "kv_cache_bytes": kv_cache_bytes(out.past_key_values),
                    "seq_len_per_layer": stats.seq_len_per_layer,
                    "equivalent_tokens_full_depth": _full_depth_equivalent(cfg, layout),
                }
                continue
            times[name].append(elapsed)
            overhead[name].append(spent[0])
            layer_times[name].append(list(clock.spent))
    clock.remove()
    return _rows(layout, configs, times, overhead, layer_times, info, dtype)


class _LayerClock:
    """Forward hooks that time each decoder layer of one prefill (CPU work is synchronous, so wall time is the
    layer's own)."""

    def __init__(self, layers: Any) -> None:
        self.spent = [0.0] * len(layers)
        self._began = [0.0] * len(layers)
        self._handles = []
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_pre_hook(self._start(i)))
            self._handles.append(layer.register_forward_hook(self._stop(i)))

    def _start(self, i: int) -> Any:
        def hook(*_: Any) -> None:
            self._began[i] = time.perf_counter()

        return hook

    def _stop(self, i: int) -> Any:
        def hook(*_: Any) -> None:
            self.spent[i] += time.perf_counter() - self._began[i]

        return hook

    def reset(self) -> None:
        self.spent = [0.0] * len(self.spent)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _full_depth_equivalent(cfg: SparseConfig, layout: SpeedLayout) -> float:
    schedule = {} if cfg.is_dense else dict(zip(cfg.prune_layers, cfg.keep_tokens or (), strict=True))
    counts = simulate_visual_counts(layout.n_visual, layout.full_depth, schedule, cfg.recycle_ratio, cfg.cluster_ratio)
    return equivalent_tokens(counts[1:])


def _rows(
    layout: SpeedLayout,
    configs: dict[str, SparseConfig],
    times: dict[str, list[float]],
    overhead: dict[str, list[float]],
    layer_times: dict[str, list[list[float]]],
    info: dict[str, dict[str, Any]],
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    dense_s = statistics.median(times["dense"])
    # The same per-layer estimate as the presets' blocks below (each layer's median over the repeats, then
    # their mean), so dense projects to exactly 1.
    dense_layer_s = statistics.mean(
        statistics.median(rep[i] for rep in layer_times["dense"]) for i in range(layout.depth)
    )
    dense_seq = info["dense"]["seq_len_per_layer"]
    text = dense_seq[0] - layout.n_visual
    dense_full_seq = [dense_seq[0]] * layout.full_depth
    rows = []
    for name, cfg in configs.items():
        seq = info[name]["seq_len_per_layer"]
        median_s = statistics.median(times[name])
        prune_s = statistics.median(overhead[name])
        per_layer = [statistics.median(rep[i] for rep in layer_times[name]) for i in range(layout.depth)]
        # Full depth: reduced layer i stands for block i of the full-depth layers (one-step presets: the reduced
        # layers after the step all run at the final length; their mean is the block's layer time).
        sizes = block_sizes(cfg, layout.full_depth)
        last_block = per_layer[len(sizes) - 1 :]
        block_s = [*per_layer[: len(sizes) - 1], statistics.mean(last_block)]
        projected = sum(n * t for n, t in zip(sizes, block_s, strict=True)) + prune_s
        schedule = {} if cfg.is_dense else dict(zip(cfg.prune_layers, cfg.keep_tokens or (), strict=True))
        visual = simulate_visual_counts(
            layout.n_visual, layout.full_depth, schedule, cfg.recycle_ratio, cfg.cluster_ratio
        )
        full_seq = [text + n for n in visual[:-1]]  # entering each full-depth layer
        flops = prefill_flops(seq, layout.hidden, layout.ffn)
        dense_flops = prefill_flops(dense_seq, layout.hidden, layout.ffn)
        full_flops = prefill_flops(full_seq, layout.hidden, layout.ffn)
        rows.append(
            {
                "preset": name,
                "dtype": str(dtype).replace("torch.", ""),
                "depth": layout.depth,
                "prefill_s": round(median_s, 4),
                "time_ratio": round(median_s / dense_s, 4),
                "flops_ratio": round(flops / dense_flops, 4),
                "prune_overhead_s": round(prune_s, 5),
                "prune_overhead_of_dense_layer": round(prune_s / dense_layer_s, 5),
                "kv_cache_bytes": info[name]["kv_cache_bytes"],
                "kv_ratio": round(info[name]["kv_cache_bytes"] / info["dense"]["kv_cache_bytes"], 4),
                "seq_len_per_layer": seq,
                "full_depth_prune_layers": list(cfg.prune_layers),
                "full_depth_equivalent_tokens": round(info[name]["equivalent_tokens_full_depth"], 2),
                "full_depth_time_ratio": round(projected / (layout.full_depth * dense_layer_s), 4),
                "full_depth_flops_ratio": round(
                    full_flops / prefill_flops(dense_full_seq, layout.hidden, layout.ffn), 4
                ),
                # A pruning layer caches its full input (see sparsevlm.modeling), so the cache holds what
                # enters each layer.
                "full_depth_kv_ratio": round(sum(full_seq) / sum(dense_full_seq), 4),
                "repeats": len(times[name]),
            }
        )
    return rows


def layout_dict(layout: SpeedLayout) -> dict[str, Any]:
    return {**asdict(layout), "n_visual": layout.n_visual}


def peak_rss_probe(layout: SpeedLayout, preset: str, dtype: torch.dtype, threads: int) -> dict[str, Any]:
    """One prefill in this (fresh) process: its peak RSS above the RSS before it.

    Linux's peak counter (VmHWM) is reset after the model is built (``/proc/self/clear_refs``), so building the
    model, which briefly holds fp32 and converted weights, does not hide the prefill's own peak.
    """
    import gc

    torch.set_num_threads(threads)
    config = full_depth_config(preset, layout)
    layout = dataclasses.replace(layout, depth=reduced_depth([config], layout))
    model = build_speed_model(layout, dtype)
    inputs = speed_inputs(layout, dtype)
    apply_patch(model, reduced_config(config))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _proc_status_kib("VmRSS")
    with torch.no_grad():
        model(**inputs, use_cache=True, logits_to_keep=1)
    peak = _proc_status_kib("VmHWM")
    return {
        "preset": preset,
        "dtype": str(dtype).replace("torch.", ""),
        "peak_rss_mib": round(peak / 1024, 1),
        "prefill_rss_growth_mib": round((peak - before) / 1024, 1),
    }


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
