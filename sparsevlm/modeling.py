"""The sparsified decoder loop: the only module that touches transformers' LLaMA internals (5.23.0).

``SparseLlamaModel`` replaces ``LlamaModel.forward`` of one instance. A prefill that carries visual tokens
runs the decoder layers itself: at each pruning layer the layer runs in full (its KV cache keeps the full
length), the rater rows' attention over all keys scores the visual tokens, the best are kept, the best of the
deleted are recycled into merged tokens, and the layers after it see the shorter sequence with matching
positions, RoPE, mask and cache. Every step works on all rows of the batch at once; the token counts that
shape the next tensors are kept on the host (:class:`sparsevlm.sequence.Layout`), so a prefill waits for the
device a fixed number of times whatever the batch size (``jobs.benchmark syncs``). Later calls on the same
cache (decoding) use per-layer-group masks and positions so ``generate`` continues exactly as without the
cache. Everything else goes to the original forward unchanged. The outer classes are in
:mod:`sparsevlm.video_llava`, the pure planning functions in :mod:`sparsevlm.plan`, the scoring maths in
:mod:`sparsevlm.scoring`: this module only calls them and the layers.

Mirrored code (checked against transformers 5.23.0, ``models/llama/modeling_llama.py: LlamaModel.forward``, the
version ``pyproject.toml`` pins): ``_sparse_prefill`` and ``_continue`` run the same steps as that forward
(embeddings, DynamicCache, positions, causal mask, RoPE, each decoder layer with the same arguments, final
norm in ``forward``). What differs:

1. the mask comes from :func:`sparsevlm.sequence.build_attention_mask` of the current layout, not
   ``create_causal_mask``, and mask and RoPE are rebuilt after every pruning layer (the sequence is shorter);
2. at a pruning layer the layer's keys are read from its cache entry (or captured without a cache) to score the
   visual tokens, and the hidden states are rebuilt (kept, recycled, deleted tokens);
3. decoding on a pruned cache runs the layers in groups, each with its own mask and position shift;
4. the prefill does not return attentions or hidden states (a warning says so), and
   ``merge_with_config_defaults`` / ``capture_outputs`` do not wrap it.

A new transformers version needs this list re-checked against its ``LlamaModel.forward`` before the pin moves.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel, apply_rotary_pos_emb

from sparsevlm.config import SparseConfig
from sparsevlm.plan import (
    check_context,
    frame_reduction,
    keep_at_most_distinct,
    layer_seed,
    random_scores,
    rater_counts,
    row_schedules,
    step_keep_counts,
)
from sparsevlm.recycle import recycle_rows
from sparsevlm.repeats import (
    at_visual_index,
    by_visual_index,
    distinct_first,
    place_on_tokens,
    settled_patches,
    static_patches,
)
from sparsevlm.scoring import (
    keep_mask,
    rank_keep_counts,
    rater_attention,
    rater_candidates,
    rater_key_mask,
    rater_rows,
    select_rater_tokens,
    visual_columns,
    visual_scores,
)
from sparsevlm.sequence import (
    Inserted,
    Layout,
    build_attention_mask,
    frame_index,
    gather_tokens,
    last_positions,
    rebuild,
    reduce_frames,
    visual_indices,
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
    key_bias: torch.Tensor | None  # [B, K]: log weight of each cached prefill entry (merged tokens), or None


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
        self.static_mask: torch.Tensor | None = None  # [B, L]: visual tokens whose patch repeats the last frame
        self.prompt_len: int | None = None  # set while generate() runs: later tokens are never raters
        self.max_new_tokens: int | None = None  # set while generate() runs: positions they will take
        self.generating = False  # True while generate() runs: it appends valid (all-ones) mask columns
        self.prefill: _PrefillState | None = None
        self.stats: list[SampleStats] = []
        self.hook: Any = None
        self.tokens_per_frame: int | None = None  # video tokens per frame (CLS + patches), set by apply_patch

    def capture_inputs(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on ``VideoLlavaModel``: remember which input positions are visual tokens."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        config = module.config
        token_ids = [config.video_token_id, config.image_token_id]
        self.static_mask = None
        if input_ids is not None:
            # Compared with Python ints: no tensor of the ids is built on the host, so no pageable copy to the
            # device (and no stream sync) at every decoding step.
            kinds = torch.stack([input_ids == token for token in token_ids])  # [2, B, L]: video, image
        elif kwargs.get("inputs_embeds") is not None:
            table = module.get_input_embeddings().weight[token_ids]  # [2, D]
            kinds = (kwargs["inputs_embeds"][None] == table[:, None, None]).all(-1)  # [2, B, L]
        else:
            self.visual_mask = None
            return
        self.visual_mask = kinds.any(0)
        videos = kwargs.get("pixel_values_videos")
        threshold = self.config.static_threshold
        if threshold is not None and videos is not None and videos.shape[1] > 1:
            static = static_patches(videos, module.config.vision_config.patch_size, threshold)  # [N, T, P]
            if static.shape[-1] == self.tokens_per_frame:
                self.static_mask = place_on_tokens(settled_patches(static), kinds[0])

    def take_static_mask(self, shape: torch.Size) -> torch.Tensor | None:
        mask, self.static_mask = self.static_mask, None
        return mask if mask is not None and mask.shape == shape else None

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
        static = rt.take_static_mask(shape)
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
            hidden = self._sparse_prefill(inputs_embeds, attention_mask, position_ids, visual, static, cache, kwargs)
        out = BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=past_key_values)
        return out if return_dict else out.to_tuple()

    # -- prefill ----------------------------------------------------------------------------------------

    def _sparse_prefill(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        visual: torch.Tensor,
        static: torch.Tensor | None,
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
        visual_index = visual_indices(visual)
        raters = select_rater_tokens(embeds, candidates, visual, cfg.method, max(n_text), max(n_visual))
        layout = Layout(embeds, positions, valid, visual_index, raters, tuple(n_valid), tuple(n_visual))
        # [B, max Lv]: duplicates by visual index (patch static since the previous frame), or None
        duplicate = by_visual_index(static, visual, max(n_visual)) if static is not None else None
        original_last_pos = last_positions(valid, positions)  # [B]

        num_layers = self.config.num_hidden_layers
        record = PrefillRecorder(b, raters, n_valid)
        tpf = rt.tokens_per_frame
        reduce = frame_reduction(cfg)
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
            check_context(max(layout.lengths) if compact else max(n_valid), context, reserve)
        schedules = row_schedules(cfg, num_layers, layout.n_visual, n_visual, tpf)
        prune_at = sorted(set().union(*schedules))
        groups = [_Group(0, layout.valid, original_last_pos - layout.position_ids[:, -1], layout.padded, None)]
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
            dup = duplicate if i == prune_at[0] else None  # cross-frame redundancy at the first step only
            new_layout = self._prune(i, layer, hidden_in, keys, layout, schedules, record, dup)
            if new_layout is not None:
                layout = new_layout
                shift = original_last_pos - layout.position_ids[:, -1]
                groups.append(_Group(i + 1, layout.valid, shift, layout.padded, layout.key_bias()))
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
        duplicate: torch.Tensor | None = None,
    ) -> Layout | None:
        """Score, select and recycle at one pruning layer, all rows at once; None when no row changes.

        ``duplicate`` (``[B, max Lv]`` by visual index): tokens whose patch repeats the previous frame rank below
        every other visual token, so the keep count goes to distinct content first
        (:func:`sparsevlm.repeats.distinct_first`), and with ``repeats="never"`` the step keeps at most the
        distinct ones; deleted duplicates are recycled like any deleted token.
        """
        rt = self._sparse_runtime
        cfg = rt.config
        b = layout.hidden.shape[0]
        device = layout.hidden.device
        counts = layout.rater.sum(1)
        n_raters = max(1, max(rater_counts(layout, record)))
        order, rater_valid = rater_rows(layout.rater, n_raters)  # [B, R] positions in the (padded) sequence
        q = self._rater_queries(layer, hidden_in, order, layout.position_ids)  # [B, H, R, hd]
        allowed = rater_key_mask(layout.valid, order)  # [B, R, K]: the keys are this layer's whole sequence
        attention = rater_attention(q, keys, allowed, layer.self_attn.scaling, layout.key_bias())  # [B, R, K]
        scores = visual_scores(attention, rater_valid)  # [B, K]

        present = layout.visual  # [B, L]
        if cfg.method == "random":  # the same draw for a row alone or in a batch
            scores = random_scores(present, layout.n_visual, layer_seed(cfg.seed, layer_idx))
        repeats = None
        if duplicate is not None:
            repeats = at_visual_index(duplicate, layout.visual_index) & present  # [B, L]
            scores = distinct_first(scores, repeats)
        pruned = [layer_idx in schedule for schedule in schedules]
        keep = [schedule.get(layer_idx) for schedule in schedules]
        if any(p and k is None for p, k in zip(pruned, keep, strict=True)):
            assert cfg.rank_scale is not None
            n_visual = to_device(layout.n_visual, device)
            rater_visual = visual_columns(attention, present, n_visual, max(layout.n_visual), rater_valid)  # [B, R, V]
            ranks = rank_keep_counts(rater_visual, counts, n_visual, cfg.rank_scale, cfg.rank_bias)
            keep = [r if k is None else k for r, k in zip(ranks, keep, strict=True)]
        if repeats is not None and cfg.repeats == "never":  # a repeat costs nothing (one host read)
            keep = keep_at_most_distinct(keep, (present & ~repeats).sum(1).tolist())
        keep_n = step_keep_counts(pruned, keep, layout.n_visual)
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
                layer_seed(cfg.seed, layer_idx),
                times,
                cfg.recycle_time_weight,
            )
        members = torch.zeros_like(present)
        inserted = None
        if recycled is not None:
            members = recycled.member_mask(present)
            anchor = recycled.centres if cfg.recycle_position == "centre" else recycled.earliest(layout.position_ids)
            merged_pos = layout.position_ids.gather(1, anchor)
            weight = recycled.weights(layout.weight) if cfg.weigh_merged else None
            inserted = Inserted(recycled.tokens, merged_pos, recycled.counts, weight)
        clusters = recycled.counts if recycled is not None else [0] * b
        record.pruned(
            layer_idx, PruneRecord(layout.visual_index, present, scores, kept, members & deleted, clusters, pruned)
        )
        if not any(n_deleted):
            return None
        return rebuild(layout, deleted, n_deleted, inserted, compact=cfg.positions == "compact")

    def _rater_queries(
        self, layer: Any, hidden_in: torch.Tensor, order: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """``[B, H, R, hd]``: the queries a pruning layer's attention computes for the rater rows, as it computes
        them (input norm, ``q_proj``, RoPE at their positions), from its input ``hidden_in`` (``[B, L, D]``),
        the raters' positions in the sequence ``order`` (``[B, R]``) and the layout's ``position_ids``
        (``[B, L]``). Only the rater rows are projected: the layer itself already ran on the whole sequence."""
        attn = layer.self_attn
        rater_hidden = gather_tokens(hidden_in, order)  # [B, R, D]
        q = attn.q_proj(layer.input_layernorm(rater_hidden))
        q = q.view(*order.shape, -1, attn.head_dim).transpose(1, 2)  # [B, H, R, hd]
        cos, sin = self.rotary_emb(rater_hidden, position_ids.gather(1, order))
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        return q

    # -- decoding on a pruned cache ---------------------------------------------------------------------

    def _continue(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: DynamicCache | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        rt = self._sparse_runtime
        state = rt.prefill
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
        # Whether a new column is padding, known on the host wherever it can be, so that a step waits for nothing:
        # generate() appends one valid column per step, and a padded group builds its mask anyway. Only a
        # caller's own decoding loop on an unpadded cache reads the mask back, once per step.
        read = attention_mask is not None and not rt.generating and not all(g.padded for g in state.groups)
        new_padding = read and not bool(new_cols.all())
        for group, end in zip(state.groups, bounds[1:], strict=True):
            padded = group.padded or new_padding
            bias = group.key_bias
            if bias is not None:  # new tokens weigh one
                bias = torch.cat([bias, bias.new_zeros(b, new_cols.shape[1])], 1)
            kv_valid = torch.cat([group.kv_valid, new_cols], 1)
            mask = build_attention_mask(kv_valid, q_len, impl, hidden.dtype, padded, bias)
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
        mask = build_attention_mask(layout.valid, length, impl, layout.hidden.dtype, layout.padded, layout.key_bias())
        return mask, self.rotary_emb(layout.hidden, layout.position_ids)
