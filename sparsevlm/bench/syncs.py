"""Count the device-to-host synchronisations of a piece of code, on any device (CPU included).

A GPU prefill stalls whenever the host needs a value from the device: a Python ``int``/``bool``/``float`` of
a tensor, ``.tolist()``, ``.cpu()``/``.numpy()``, or an operator whose output shape depends on the data
(``nonzero``, boolean indexing, ``unique``, ...). :class:`SyncCounter` counts those calls while it is active,
by operator (a ``TorchDispatchMode``) and by the ``Tensor`` methods that copy to the host, so a CPU test can
assert what a GPU run would wait for. Beside them it counts the tensors built from host data
(``torch.tensor(list, ...)``): on a GPU each is a pageable host-to-device copy, which stalls the stream unless it
is staged in pinned memory (:func:`sparsevlm.transfer.to_device`). On a GPU, ``count_decode_syncs`` of
:mod:`sparsevlm.bench.gpu` counts the same events with the device runtime itself.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparsevlm.prompt import left_pad

_aten = torch.ops.aten
# Operators whose result needs a value or a shape from the device.
SYNC_OPS = {
    _aten._local_scalar_dense.default: "item",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten.equal.default: "equal",
    _aten.is_nonzero.default: "is_nonzero",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.repeat_interleave.Tensor: "repeat_interleave",
}
_HOST_METHODS = ("tolist", "cpu", "numpy")


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as syncs: ...`` then ``syncs.total`` and ``syncs.by_kind``.

    Boolean-mask indexing (``x[mask]``, ``x[mask] = v``) counts as ``bool_index``. ``.cpu()`` and friends
    count as ``host_copy`` even on a CPU tensor, where they copy nothing: the count is what a GPU would do.
    ``host_tensors`` counts the tensors built from host data apart (not in ``total``): whether one costs a sync
    on a GPU depends on how it reaches the device, which a CPU run cannot see.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_kind: Counter[str] = Counter()
        self.host_tensors = 0
        self._saved: dict[str, Any] = {}

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is _aten.lift_fresh.default:  # torch.tensor(data): a tensor made from host memory
            self.host_tensors += 1
        kind = SYNC_OPS.get(func)
        if kind is None and func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                kind = "bool_index"
        if kind is not None:
            self.by_kind[kind] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> SyncCounter:
        for name in _HOST_METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor: torch.Tensor, *args: Any, _orig: Any = original, **kwargs: Any) -> Any:
                self.by_kind["host_copy"] += 1
                return _orig(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()


def count_prefill_syncs(presets: list[str], batches: list[int], depth: int = 4) -> list[dict[str, Any]]:
    """Host synchronisations of one prefill per preset and batch size, on the Video-LLaVA-7B token layout.

    The layout is the real one (8 frames x 257 tokens, prompts of different lengths, left-padded) at small
    widths: the count depends on the code path, not on the widths. Each row is a distinct video.
    """
    from sparsevlm.bench.speed import (
        IMAGE_TOKEN,
        VIDEO_TOKEN,
        SpeedLayout,
        build_speed_model,
        full_depth_config,
        reduced_config,
        reduced_depth,
    )
    from sparsevlm.config import SparseConfig
    from sparsevlm.patch import apply_patch

    layout = SpeedLayout(hidden=64, heads=4, kv_heads=2, ffn=128, depth=depth)
    # The video presets' full-depth counts, one reduced layer per pruning step (what the speed benchmark runs).
    configs = {
        p: reduced_config(full_depth_config(p, layout)) if p.startswith("video-") else SparseConfig.preset(p)
        for p in presets
    }
    layout = dataclasses.replace(layout, depth=reduced_depth(list(configs.values()), layout))
    model = build_speed_model(layout, torch.float32)
    rows = []
    for preset, config in configs.items():
        apply_patch(model, config)
        for batch in batches:
            inputs = _batch_inputs(layout, batch, VIDEO_TOKEN, IMAGE_TOKEN)
            with torch.no_grad(), SyncCounter() as syncs:
                model(**inputs)
            rows.append({"preset": preset, "batch": batch, "syncs": syncs.total, "by_kind": dict(syncs.by_kind)})
    return rows


def _batch_inputs(layout: Any, batch: int, video_token: int, image_token: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    ids = []
    for row in range(batch):
        question = torch.randint(32, 64, (layout.text_tokens - row % 9,), generator=gen).tolist()
        ids.append([1, 40, 41] + [video_token] * layout.n_visual + question)
    input_ids, mask = left_pad(ids, 0)
    size = layout.image_size
    pixels = torch.randn(batch, layout.frames, 3, size, size, generator=gen)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values_videos": pixels}


def decode_step_syncs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int) -> list[dict[str, int]]:
    """Host synchronisations and host-built tensors of each decoding forward of one greedy ``generate``.

    Hooks on ``model`` read a :class:`SyncCounter` at the start and end of every forward; the first forward
    (the prefill) is left out, and so is ``generate``'s own loop between the forwards.

    Returns:
        One ``{"syncs", "host_tensors"}`` per decoding step (``new_tokens - 1`` of them).
    """
    marks: list[tuple[int, int]] = []
    steps: list[dict[str, int]] = []
    with torch.no_grad(), SyncCounter() as counter:

        def before(*_: Any) -> None:
            marks.append((counter.total, counter.host_tensors))

        def after(*_: Any) -> None:
            syncs, tensors = marks.pop()
            steps.append({"syncs": counter.total - syncs, "host_tensors": counter.host_tensors - tensors})

        handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
        try:
            settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
            model.generate(**inputs, **settings)  # type: ignore[operator]
        finally:
            for handle in handles:
                handle.remove()
    return steps[1:]
