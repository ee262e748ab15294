"""The sparsified decoder loop: the only module that touches transformers internals (5.23.0).

``SparseLlamaModel`` replaces ``LlamaModel.forward`` of one instance. A prefill that carries visual tokens
runs the decoder layers itself: at each pruning layer the layer runs in full (its KV cache keeps the full
length), the rater rows' attention over all keys scores the visual tokens, the best are kept, the best of the
deleted are recycled into merged tokens, and the layers after it see the shorter sequence with matching
positions, RoPE, mask and cache. Later calls on the same cache (decoding) use per-layer-group masks and
positions so ``generate`` continues exactly as without the cache. Everything else goes to the original
forward unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers import VideoLlavaForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.models.llama.modeling_llama import LlamaModel, apply_rotary_pos_emb
from transformers.models.video_llava.modeling_video_llava import VideoLlavaModel

from sparsevlm.config import SparseConfig
from sparsevlm.pooling import spatial_pool
from sparsevlm.recycle import recycle_rows, temporal_merge_batch
from sparsevlm.scoring import (
    keep_mask,
    rank_keep_counts,
    rater_attention,
    rater_candidates,
    select_rater_tokens,
    visual_scores,
)
from sparsevlm.sequence import (
    TEXT,
    FrameReduction,
    Inserted,
    Layout,
    build_attention_mask,
    frame_index,
    rebuild,
    reduce_frames,
)
from sparsevlm.stats import PrefillRecorder, PruneRecord, SampleStats, dense_stats
from sparsevlm.transfer import to_device

logger = logging.getLogger(__name__)


@dataclass
class _Group:
    """Consecutive layers that cache the same token layout."""

    first_layer: int
    kv_valid: torch.Tensor  # [B, K] bool: which cached prefill entries are real tokens
    shift: torch.Tensor  # [B]: original position minus this group's position of the same token
    padded: bool  # some cached prefill entry is padding (known on the host)


@dataclass
class _PrefillState:
    """What decoding steps on a pruned cache need to know."""

    cache: weakref.ReferenceType[DynamicCache]
    prefill_len: int
    batch: int
    groups: list[_Group]


class SparseRuntime:
    """Per-instance state shared by the patched outer model and its language model."""

    def __init__(self, config: SparseConfig) -> None:
        self.config = config
        self.visual_mask: torch.Tensor | None = None  # [B, L] of the current call, set by the input hook
        self.prompt_len: int | None = None  # set while generate() runs: later tokens are never raters
        self.max_new_tokens: int | None = None  # set while generate() runs: positions they will take
        self.prefill: _PrefillState | None = None
        self.stats: list[SampleStats] = []
        self.hook: Any = None
        self.tokens_per_frame: int | None = None  # video tokens per frame (CLS + patches), set by apply_patch

    def capture_inputs(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on ``VideoLlavaModel``: remember which input positions are visual tokens."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        config = module.config
        token_ids = [config.video_token_id, config.image_token_id]
        if input_ids is not None:
            self.visual_mask = torch.isin(input_ids, torch.tensor(token_ids, device=input_ids.device))
            return
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            self.visual_mask = None
            return
        table = module.get_input_embeddings().weight[token_ids]  # [2, D]
        self.visual_mask = (embeds[:, :, None, :] == table[None, None]).all(-1).any(-1)

    def take_visual_mask(self, shape: torch.Size) -> torch.Tensor | None:
        mask, self.visual_mask = self.visual_mask, None
        return mask if mask is not None and mask.shape == shape else None


class _KeyCapture:
    """Stands in for a cache at a pruning layer when ``use_cache=False``: keeps the post-RoPE keys."""

    keys: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = key_states
        return key_states, value_states


def _frame_reduction(cfg: SparseConfig) -> FrameReduction | None:
    """What happens to the video frames before the first decoder layer: temporal merging, pooling or nothing.

    Each takes ``[G, T, P, D]`` frames of ``G`` videos and returns new features and the ``[G, T, P]`` survivors.
    """
    if cfg.temporal_merge is not None:
        threshold = cfg.temporal_merge

        def merge(frames: torch.Tensor, least: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cap = _max_merged(cfg, frames.shape[1:])
            tokens, keep, _ = temporal_merge_batch(frames, cfg.segment_threshold, threshold, cap, least)
            return tokens, keep

        return merge
    if cfg.spatial_pool is not None:
        fraction = cfg.spatial_pool

        def pool(frames: torch.Tensor, least: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            g, t = frames.shape[:2]
            result = spatial_pool(frames.flatten(0, 1), fraction)  # frames pool independently
            return result.tokens.view(frames.shape), result.keep.view(g, t, -1)

        return pool
    return None


def _max_merged(cfg: SparseConfig, shape: torch.Size) -> int | None:
    """How many of a ``[T, P, D]`` video's tokens temporal merging may remove under ``cfg.merge_floor``."""
    if cfg.merge_floor is None or cfg.target_fraction is None:
        return None
    frames, per_frame = int(shape[0]), int(shape[1])
    reference = (cfg.budget_frames or frames) * per_frame
    return max(0, frames * per_frame - math.ceil(cfg.merge_floor * cfg.target_fraction * reference))


class SparseLlamaModel(LlamaModel):
    """``LlamaModel`` whose prefill prunes and recycles visual tokens (SparseVLM)."""

    _sparse_runtime: SparseRuntime

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DynamicCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        rt = self._sparse_runtime
        shape = (input_ids if input_ids is not None else inputs_embeds).shape[:2]  # type: ignore[union-attr]
        visual = rt.take_visual_mask(shape)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        use_cache = self.config.use_cache if use_cache is None else use_cache
        sparse_call = past_len == 0 and visual is not None and bool(visual.any()) and shape[1] > 1
        continuing = past_len > 0 and rt.prefill is not None and rt.prefill.cache() is past_key_values
        if not (sparse_call and not rt.config.is_dense) and not continuing:
            if past_len == 0:
                rt.prefill = None
                if sparse_call:
                    assert visual is not None
                    rt.stats = dense_stats(self.config, visual, attention_mask)
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            logger.warning("SparseVLM prefill does not return attentions or hidden states; ignoring the request")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("output_attentions", "output_hidden_states")}
        return_dict = kwargs.pop("return_dict", True)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"SparseVLM needs a 2-D padding mask [B, L], got shape {tuple(attention_mask.shape)}")
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if use_cache and not isinstance(past_key_values, DynamicCache):
            raise TypeError(
                f"SparseVLM needs a DynamicCache (layers cache different lengths), got "
                f"{type(past_key_values).__name__}; do not pass cache_implementation to generate()"
            )
        cache = past_key_values if use_cache else None
        if continuing:
            hidden = self._continue(inputs_embeds, attention_mask, position_ids, cache, kwargs)
        else:
            assert visual is not None
            hidden = self._sparse_prefill(inputs_embeds, attention_mask, position_ids, visual, cache, kwargs)
        out = BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=past_key_values)
        return out if return_dict else out.to_tuple()

    # -- prefill ----------------------------------------------------------------------------------------

    def _sparse_prefill(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        visual: torch.Tensor,
        cache: DynamicCache | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The prefill, batched: every step works on all rows at once and reads from the device only what
        shapes the next tensors (one transfer of the row counts here, one after a frame reduction, one per
        rank-mode pruning layer), whatever the batch size."""
        rt, cfg = self._sparse_runtime, self._sparse_runtime.config
        b, length, _ = embeds.shape
        device = embeds.device
        valid = torch.ones(b, length, dtype=torch.bool, device=device)
        if attention_mask is not None:
            valid = attention_mask.bool()
        if position_ids is None:
            position_ids = torch.arange(length, device=device)[None]
        positions = position_ids.expand(b, length)
        visual = visual & valid
        candidates = rater_candidates(valid, visual, rt.prompt_len)
        n_valid, n_visual, n_text = torch.stack([valid.sum(1), visual.sum(1), candidates.sum(1)]).tolist()
        visual_index = torch.where(visual, visual.long().cumsum(1) - 1, TEXT)
        raters = select_rater_tokens(embeds, candidates, visual, cfg.method, max(n_text), max(n_visual))
        layout = Layout(embeds, positions, valid, visual_index, raters, tuple(n_valid), tuple(n_visual))
        last_valid = valid.long().cumsum(1).argmax(1)  # [B]: index of each row's last real token
        original_last_pos = positions.gather(1, last_valid[:, None]).squeeze(1)

        num_layers = self.config.num_hidden_layers
        record = PrefillRecorder(b, raters, n_valid)
        tpf = rt.tokens_per_frame
        reduce = _frame_reduction(cfg)
        compact = cfg.positions == "compact"
        context = getattr(self.config, "max_position_embeddings", None)
        reserve = rt.max_new_tokens or 0
        if reduce is not None and tpf:
            room = None
            if compact and context:  # compact positions: fewer tokens means smaller positions
                room = [context - reserve - (n - v) for n, v in zip(n_valid, n_visual, strict=True)]
            layout = reduce_frames(layout, tpf, reduce, compact=compact, room=room)
            record.reduced(layout, n_visual)
        if context:  # positions only fall after this point (compact) or stay (original)
            _check_context(max(layout.lengths) if compact else max(n_valid), context, reserve)
        schedules = _schedules(cfg, num_layers, layout.n_visual, n_visual, tpf)
        prune_at = sorted(set().union(*schedules))
        groups = [_Group(0, layout.valid, original_last_pos - layout.position_ids[:, -1], layout.padded)]
        mask, rope = self._mask_and_rope(layout)
        for i, layer in enumerate(self.layers[:num_layers]):
            record.enter(layout)
            layer_cache: Any = cache if cache is not None else (_KeyCapture() if i in prune_at else None)
            hidden_in = layout.hidden
            hidden = layer(
                hidden_in,
                attention_mask=mask,
                position_embeddings=rope,
                position_ids=layout.position_ids,
                past_key_values=layer_cache,
                use_cache=cache is not None,
                **kwargs,
            )
            layout = layout.with_hidden(hidden)
            if i not in prune_at:
                continue
            keys = layer_cache.layers[i].keys if cache is not None else layer_cache.keys
            new_layout = self._prune(i, layer, hidden_in, keys, layout, schedules, record)
            if new_layout is not None:
                layout = new_layout
                shift = original_last_pos - layout.position_ids[:, -1]
                groups.append(_Group(i + 1, layout.valid, shift, layout.padded))
                mask, rope = self._mask_and_rope(layout)
        rt.stats = record.finish(layout, n_visual, self.config)
        rt.prefill = None
        if cache is not None:
            rt.prefill = _PrefillState(weakref.ref(cache), length, b, groups)
        return layout.hidden

    def _prune(
        self,
        layer_idx: int,
        layer: Any,
        hidden_in: torch.Tensor,
        keys: torch.Tensor,
        layout: Layout,
        schedules: list[dict[int, int | None]],
        record: PrefillRecorder,
    ) -> Layout | None:
        """Score, select and recycle at one pruning layer, all rows at once; None when no row changes."""
        rt = self._sparse_runtime
        cfg = rt.config
        b = layout.hidden.shape[0]
        device = layout.hidden.device
        counts = layout.rater.sum(1)
        n_raters = max(1, max(_rater_counts(layout, record)))
        # Rater rows, right-padded to the longest: their positions in the (padded) sequence.
        order = torch.sort(layout.rater.long(), dim=1, descending=True, stable=True).indices[:, :n_raters]
        rater_valid = torch.arange(n_raters, device=device)[None] < counts[:, None]  # [B, R]
        rater_hidden = hidden_in.gather(1, order[..., None].expand(-1, -1, hidden_in.shape[-1]))  # [B, R, D]
        attn_module = layer.self_attn
        q = attn_module.q_proj(layer.input_layernorm(rater_hidden))
        q = q.view(b, n_raters, -1, attn_module.head_dim).transpose(1, 2)  # [B, H, R, hd]
        cos, sin = self.rotary_emb(rater_hidden, layout.position_ids.gather(1, order))
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        key_at = torch.arange(keys.shape[2], device=device)
        allowed = layout.valid[:, None, :] & (key_at[None, None, :] <= order[:, :, None])  # [B, R, K]
        allowed |= key_at[None, None, :] == order[:, :, None]  # padded rater rows are never fully masked
        attention = rater_attention(q, keys, allowed, attn_module.scaling)  # [B, R, K]
        scores = visual_scores(attention, rater_valid)  # [B, K]

        present = layout.visual  # [B, L]
        if cfg.method == "random":  # the same draw for a row alone or in a batch
            scores = _random_scores(present, layout.n_visual, cfg.seed * 1_000_003 + layer_idx)
        pruned = [layer_idx in schedule for schedule in schedules]
        keep = [schedule.get(layer_idx) for schedule in schedules]
        if any(p and k is None for p, k in zip(pruned, keep, strict=True)):
            assert cfg.rank_scale is not None
            width = max(layout.n_visual)
            visual_at = (~present).to(torch.int8).argsort(dim=1, stable=True)[:, :width]  # [B, V]
            rater_visual = attention.gather(2, visual_at[:, None, :].expand(-1, n_raters, -1))  # [B, R, V]
            slot_ok = torch.arange(width, device=device)[None, :] < to_device(layout.n_visual, device)[:, None]
            rater_visual = rater_visual * (rater_valid[:, :, None] & slot_ok[:, None, :])
            ranks = rank_keep_counts(
                rater_visual, counts, to_device(layout.n_visual, device), cfg.rank_scale, cfg.rank_bias
            )
            keep = [r if k is None else k for r, k in zip(ranks, keep, strict=True)]
        keep_n = [
            min(k, n) if p and k is not None else n for p, k, n in zip(pruned, keep, layout.n_visual, strict=True)
        ]
        kept = keep_mask(scores, present, to_device(keep_n, device))
        deleted = present & ~kept
        n_deleted = [n - k for n, k in zip(layout.n_visual, keep_n, strict=True)]
        recycled = None
        if any(n_deleted):
            times = frame_index(layout.visual_index, rt.tokens_per_frame)
            recycled = recycle_rows(
                layout.hidden,
                scores,
                deleted,
                n_deleted,
                cfg.recycle_ratio,
                cfg.cluster_ratio,
                cfg.seed * 1_000_003 + layer_idx,
                times,
                cfg.recycle_time_weight,
            )
        members = torch.zeros_like(present)
        inserted = None
        if recycled is not None:
            members.scatter_(1, recycled.members, recycled.member_valid)
            anchor = recycled.centres if cfg.recycle_position == "centre" else recycled.earliest(layout.position_ids)
            merged_pos = layout.position_ids.gather(1, anchor)
            inserted = Inserted(recycled.tokens, merged_pos, recycled.counts)
        clusters = recycled.counts if recycled is not None else [0] * b
        record.pruned(
            layer_idx, PruneRecord(layout.visual_index, present, scores, kept, members & deleted, clusters, pruned)
        )
        if not any(n_deleted):
            return None
        return rebuild(layout, deleted, n_deleted, inserted, compact=cfg.positions == "compact")

    # -- decoding on a pruned cache ---------------------------------------------------------------------

    def _continue(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: DynamicCache | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        state = self._sparse_runtime.prefill
        assert state is not None and cache is not None
        b, q_len, _ = embeds.shape
        if b != state.batch:
            raise RuntimeError(
                f"batch size changed from {state.batch} to {b} on a pruned cache; greedy, sampling and beam "
                "search decoding keep the prefill's batch (beams expand before it), a cache cut or expanded "
                "after the prefill is not supported: run a new prefill for the new batch"
            )
        # Tokens after the prefill (earlier decoding steps and this call), counted on layer 0's cache, which
        # holds the prefill as group 0 laid it out (shorter than the input when temporal merging ran).
        n_new = cache.get_seq_length() - state.groups[0].kv_valid.shape[1] + q_len
        total = state.prefill_len + n_new  # in the caller's (unpruned) token count
        if attention_mask is None:
            new_cols = torch.ones(b, n_new, dtype=torch.bool, device=embeds.device)
        elif attention_mask.shape[1] != total:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens, expected {total}")
        else:
            new_cols = attention_mask[:, state.prefill_len :].bool()
        if position_ids is None:
            position_ids = (torch.arange(q_len, device=embeds.device) + total - q_len)[None]
        positions = position_ids.expand(b, q_len)
        hidden = embeds
        bounds = [g.first_layer for g in state.groups] + [self.config.num_hidden_layers]
        impl = self.config._attn_implementation
        for group, end in zip(state.groups, bounds[1:], strict=True):
            padded = group.padded or not bool(new_cols.all())  # decoding: one read per step is the step's own
            mask = build_attention_mask(torch.cat([group.kv_valid, new_cols], 1), q_len, impl, hidden.dtype, padded)
            group_pos = positions - group.shift[:, None]
            rope = self.rotary_emb(hidden, group_pos)
            for layer in self.layers[group.first_layer : end]:
                hidden = layer(
                    hidden,
                    attention_mask=mask,
                    position_embeddings=rope,
                    position_ids=group_pos,
                    past_key_values=cache,
                    use_cache=True,
                    **kwargs,
                )
        return hidden

    def _mask_and_rope(self, layout: Layout) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        impl = self.config._attn_implementation
        length = layout.hidden.shape[1]
        mask = build_attention_mask(layout.valid, length, impl, layout.hidden.dtype, layout.padded)
        return mask, self.rotary_emb(layout.hidden, layout.position_ids)


def _schedules(
    cfg: SparseConfig, num_layers: int, n_visual: tuple[int, ...], n_input: list[int], tokens_per_frame: int | None
) -> list[dict[int, int | None]]:
    """Each row's ``{layer: keep}`` schedule (rows without visual tokens: none), computed once per distinct
    (visual count, reference) pair."""
    cache: dict[tuple[int, int], dict[int, int | None]] = {}
    out = []
    for m, n in zip(n_visual, n_input, strict=True):
        ref = cfg.budget_frames * tokens_per_frame if cfg.budget_frames and tokens_per_frame else n
        if (m, ref) not in cache:
            cache[m, ref] = cfg.schedule(num_layers, m, ref) if m > 0 else {}
        out.append(cache[m, ref])
    return out


def _check_context(widest: int, context: int, reserve: int) -> None:
    """Refuse a prefill whose ``widest`` row (plus ``reserve`` new tokens) would pass ``max_position_embeddings``.

    Pruning only lowers positions (compact) or keeps them (original), so checking the sequence entering the
    first layer checks every layer.
    """
    if widest + reserve > context:
        raise ValueError(
            f"the prompt reaches position {widest + reserve - 1} with {reserve} new tokens, beyond the model's "
            f"context of {context} tokens (max_position_embeddings); use fewer frames, a preset with "
            "compact positions and a frame budget (video-long), or fewer new tokens"
        )


def _rater_counts(layout: Layout, record: PrefillRecorder) -> list[int]:
    """Raters per row (host ints): fixed for the whole prefill, so counted once and kept by the recorder."""
    if record.rater_counts is None:
        record.rater_counts = layout.rater.sum(1).tolist()
    return record.rater_counts


def _random_scores(present: torch.Tensor, n_visual: tuple[int, ...], seed: int) -> torch.Tensor:
    """``[B, L]`` random scores of the visual tokens: row ``b`` gets the first ``n_visual[b]`` draws of a
    generator seeded with ``seed`` (drawn on the host per distinct count, copied in one transfer)."""
    draws = {n: torch.rand(n, generator=torch.Generator().manual_seed(seed)) for n in set(n_visual)}
    table = torch.zeros(len(n_visual), max(max(n_visual), 1))
    for row, n in enumerate(n_visual):
        table[row, :n] = draws[n]
    table = to_device(table, present.device)
    slot = (present.long().cumsum(1) - 1).clamp(0, table.shape[1] - 1)
    return torch.where(present, table.gather(1, slot), float("-inf"))


class SparseVideoLlavaModel(VideoLlavaModel):
    """``VideoLlavaModel`` that encodes each distinct video of a batch once, optionally in frame chunks.

    Batches often ask several questions of one segment (a caption and the questions are rows with the same
    frames); the vision tower then runs once per distinct video and the features are copied to its rows.
    """

    _sparse_runtime: SparseRuntime

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, vision_feature_layer: Any = None, **kwargs: Any
    ) -> Any:
        unique, inverse = distinct_rows(pixel_values_videos)
        if unique.shape[0] == pixel_values_videos.shape[0]:
            return self._encode_videos(pixel_values_videos, vision_feature_layer, **kwargs)
        features = self._encode_videos(unique, vision_feature_layer, **kwargs).pooler_output  # [U * T, tokens, D]
        t = pixel_values_videos.shape[1]
        per_video = features.view(unique.shape[0], t, *features.shape[1:])[inverse]  # [B, T, tokens, D]
        return BaseModelOutputWithPooling(pooler_output=per_video.reshape(-1, *features.shape[1:]))

    def _encode_videos(self, pixel_values_videos: torch.Tensor, vision_feature_layer: Any, **kwargs: Any) -> Any:
        chunk = self._sparse_runtime.config.vision_chunk_frames
        b, t = pixel_values_videos.shape[:2]
        if not chunk or t <= chunk:
            return super().get_video_features(
                pixel_values_videos=pixel_values_videos, vision_feature_layer=vision_feature_layer, **kwargs
            )
        parts = []
        for start in range(0, t, chunk):  # CLIP encodes frames independently: chunking is exact
            out = super().get_video_features(
                pixel_values_videos=pixel_values_videos[:, start : start + chunk],
                vision_feature_layer=vision_feature_layer,
                **kwargs,
            )
            features = out.pooler_output  # [B * t_chunk, tokens, D]
            parts.append(features.view(b, -1, *features.shape[1:]))
        features = torch.cat(parts, dim=1)  # [B, T, tokens, D]
        return BaseModelOutputWithPooling(pooler_output=features.reshape(b * t, *features.shape[2:]))


def distinct_rows(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``batch`` (exact equality, first occurrence order) and, per row, its index among them.

    O(B) work and two device-to-host transfers: each row gets a fingerprint (a fixed random projection),
    rows with equal fingerprints are grouped on the host, and one batched comparison confirms each row equals
    its group's first row (a row that does not is its own group).

    Returns:
        ``(unique [U, ...], inverse [B])`` with ``unique[inverse]`` equal to ``batch``.
    """
    b = batch.shape[0]
    flat = batch.reshape(b, -1)
    prints = _fingerprints(flat).tolist()
    first: dict[float, int] = {}
    candidate = [first.setdefault(p, row) for row, p in enumerate(prints)]
    same = (flat == flat[to_device(candidate, flat.device)]).all(1).tolist()
    firsts: list[int] = []
    position: dict[int, int] = {}
    inverse = []
    for row in range(b):
        source = candidate[row] if same[row] else row
        if source not in position:
            position[source] = len(firsts)
            firsts.append(source)
        inverse.append(position[source])
    index = to_device(inverse, batch.device)
    return (batch if len(firsts) == b else batch[to_device(firsts, batch.device)]), index


_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _fingerprints(flat: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``[B]`` int64 fingerprint of each row of ``[B, N]``: its bits as integers, times fixed random weights,
    summed with wrap-around. Integer sums do not depend on the order of addition, so equal rows always get
    equal fingerprints (a float projection does not: its rounding depends on how the kernel splits rows)."""
    bits = flat.contiguous().view(_INT_VIEW[flat.element_size()])
    weights = _fingerprint_weights(flat.shape[1], str(flat.device))
    parts = [(bits[i : i + chunk].long() * weights).sum(1) for i in range(0, flat.shape[0], chunk)]
    return torch.cat(parts)


@functools.lru_cache(maxsize=4)
def _fingerprint_weights(n: int, device: str) -> torch.Tensor:
    return torch.randint(1, 2**62, (n,), generator=torch.Generator().manual_seed(0)).to(device)


def _max_new_tokens(kwargs: dict[str, Any], default: Any, prompt_len: int | None) -> int | None:
    """How many tokens a ``generate`` call may add: its ``max_new_tokens``, else ``max_length`` minus the prompt."""
    config = kwargs.get("generation_config") or default
    new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if new is not None:
        return int(new)
    total = kwargs.get("max_length", getattr(config, "max_length", None))
    return max(0, int(total) - prompt_len) if total is not None and prompt_len is not None else None


class SparseVideoLlavaForConditionalGeneration(VideoLlavaForConditionalGeneration):
    """Video-LLaVA whose language model is a :class:`SparseLlamaModel`; remembers the prompt length."""

    _sparse_runtime: SparseRuntime

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        prompt = ids if ids is not None else embeds
        rt = self._sparse_runtime
        rt.prompt_len = prompt.shape[1] if prompt is not None else None
        rt.max_new_tokens = _max_new_tokens(kwargs, self.generation_config, rt.prompt_len)
        try:
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        finally:
            rt.prompt_len = None
            rt.max_new_tokens = None

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """Saves as the original class (the checkpoint must not name the patched one)."""
        self.__class__ = VideoLlavaForConditionalGeneration  # type: ignore[assignment]
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = SparseVideoLlavaForConditionalGeneration
