"""The token arithmetic of a sparsified prefill, in plain Python: no torch, so that configs and plans use it anywhere.

The conventions are the paper code's (see ``shared/reference/sparsevlm-method.md`` section 4 and 7):

* equivalent tokens = mean over the decoder layers of the visual token count *after* each layer, recycled
  cluster tokens counted;
* prefill FLOPs = ``sum over layers of 4 n d^2 + 2 n^2 d + 3 n d m`` with ``n`` the sequence length entering
  the layer, ``d`` the hidden size and ``m`` the FFN width.

:class:`~sparsevlm.config.SparseConfig` derives its target schedules with it, and every Ray worker imports the
config (it travels with :class:`~pipeline.config.PipelineConfig`), decoders included; :mod:`sparsevlm.stats`
records the tensors of a prefill by it.
"""

from __future__ import annotations

__all__ = [
    "equivalent_tokens",
    "prefill_flops",
    "recycle_counts",
    "simulate_visual_counts",
    "video_tokens_per_frame",
    "visual_after_pruning",
]


def video_tokens_per_frame(image_size: int, patch_size: int) -> int:
    """Visual tokens per frame on Video-LLaVA's video path: ``(image_size // patch_size) ** 2`` patches plus the
    CLS token, which the video path keeps (257 for the 7B's 224 px frames in 14 px patches)."""
    return (image_size // patch_size) ** 2 + 1


def recycle_counts(n_deleted: int, recycle_ratio: float, cluster_ratio: float) -> tuple[int, int]:
    """How many deleted tokens are recycled and into how many clusters (paper code, Sec. 3.3).

    ``n_r = int(tau * n_deleted) + 1`` and ``C = int(theta * n_r) + 1``, both capped by what exists.

    Returns:
        ``(n_recycled, n_clusters)``; ``(0, 0)`` when nothing is deleted or recycling is off.
    """
    if n_deleted <= 0 or recycle_ratio <= 0:
        return 0, 0
    n_recycled = min(int(recycle_ratio * n_deleted) + 1, n_deleted)
    n_clusters = min(int(cluster_ratio * n_recycled) + 1, n_recycled)
    return n_recycled, n_clusters


def visual_after_pruning(n_visual: int, keep: int, recycle_ratio: float, cluster_ratio: float) -> int:
    """Visual tokens after a pruning step that keeps ``keep`` of ``n_visual`` (clusters included)."""
    keep = min(keep, n_visual)
    _, n_clusters = recycle_counts(n_visual - keep, recycle_ratio, cluster_ratio)
    return keep + n_clusters


def simulate_visual_counts(
    n_visual: int,
    num_layers: int,
    keep_at: dict[int, int],
    recycle_ratio: float,
    cluster_ratio: float,
) -> list[int]:
    """Visual token counts through the decoder for a fixed budget schedule.

    Returns:
        ``num_layers + 1`` counts: entry 0 is the count entering layer 0, entry ``i + 1`` the count after
        layer ``i`` (= entering layer ``i + 1``).
    """
    counts = [n_visual]
    current = n_visual
    for layer in range(num_layers):
        if layer in keep_at:
            current = visual_after_pruning(current, keep_at[layer], recycle_ratio, cluster_ratio)
        counts.append(current)
    return counts


def equivalent_tokens(after_layer_counts: list[int]) -> float:
    """Mean over layers of the visual count after each layer (the paper's convention)."""
    return sum(after_layer_counts) / len(after_layer_counts)


def prefill_flops(seq_lens: list[int], hidden: int, ffn: int) -> float:
    """``sum over layers of 4 n d^2 + 2 n^2 d + 3 n d m`` for the given per-layer input lengths."""
    d, m = float(hidden), float(ffn)
    return sum(4 * n * d * d + 2 * n * n * d + 3 * n * d * m for n in map(float, seq_lens))
