"""The GPU benchmark: the full Video-LLaVA-7B layout in bf16, dense vs the video presets at batch 1, 8 and 32.

The model has the real checkpoint's shape (LLaMA-7B: 32 layers, hidden 4096, 32 heads, FFN 11008; CLIP
ViT-L/14 at 224 px: 24 layers, hidden 1024) with random weights built directly on the device, so nothing is
downloaded and no host copy of the weights is made. Every row is ``<s> USER: `` + 8 frames x 257 video tokens +
a fixed-length question, with its own random frames (so the vision tower runs once per row). Per preset and
batch size it measures, after one untimed warm-up of the same shape:

* time to first token (from calling ``generate`` to the end of its first model forward), split into the vision
  tower (timed by hooks around it) and the rest (the sparsified LLM prefill, projector, first logits);
* generated tokens per second from the end of that forward to the end of ``generate`` (``new_tokens`` per
  row, EOS suppressed), batch total;
* peak device memory of that ``generate`` call (CUDA only) and the KV-cache bytes right after the prefill.

Random frames differ everywhere, so cross-frame reduction (``video-xf-25``) finds no repeats here: it runs
as the plain method plus the per-patch pixel comparison. With ``tiny=True`` (or without CUDA) the same loop
runs at a tiny width on CPU in float32, to prove the command; those numbers measure nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import VideoLlavaForConditionalGeneration

from sparsevlm.bench.layout import FRAMES, IMAGE_TOKEN, PAD_TOKEN, VIDEO_TOKEN, Widths, video_llava_7b_config
from sparsevlm.bench.speed import kv_cache_bytes
from sparsevlm.config import SparseConfig
from sparsevlm.patch import apply_patch, last_stats

__all__ = ["GPU_PRESETS", "GpuBenchSetup", "run_gpu_benchmark"]

GPU_PRESETS = ("dense", "video-50", "video-25", "video-10", "video-5", "video-xf-25")
_HEAD = [1, 3148, 1001, 29901, 29871]  # <s> USER: ▁ (the real LLaMA ids)
_TINY = Widths(hidden=64, layers=4, heads=2, ffn=128, vision_hidden=32, vision_layers=2, vision_heads=2, vision_ffn=64)


@dataclass(frozen=True)
class GpuBenchSetup:
    """What one benchmark run covers.

    Attributes:
        widths: model sizes (default: the real 7B layout).
        batches: batch sizes.
        presets: SparseConfig presets, ``dense`` first (the reference of the ratios).
        new_tokens: tokens generated per row.
        text_tokens: question tokens after the video (``ASSISTANT:`` included).
        device: torch device.
        dtype: weight and activation dtype.
    """

    widths: Widths = field(default_factory=Widths)
    batches: tuple[int, ...] = (1, 8, 32)
    presets: tuple[str, ...] = GPU_PRESETS
    new_tokens: int = 32
    text_tokens: int = 40
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16

    @classmethod
    def tiny(cls) -> GpuBenchSetup:
        """CI size: 4 layers of width 64 on CPU in float32, batches 1 and 2, 4 new tokens."""
        return cls(widths=_TINY, batches=(1, 2), new_tokens=4, device="cpu", dtype=torch.float32)


def build_model(setup: GpuBenchSetup) -> VideoLlavaForConditionalGeneration:
    """The layout with random weights, allocated and initialised on ``setup.device`` in ``setup.dtype``."""
    torch.manual_seed(0)
    config = video_llava_7b_config(setup.widths)
    default = torch.get_default_dtype()
    torch.set_default_dtype(setup.dtype)  # parameters are created in the target dtype: no fp32 copy
    try:
        with torch.device(setup.device):
            model = VideoLlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.set_attn_implementation("sdpa")
    return model.eval()


def make_inputs(setup: GpuBenchSetup, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` rows of the prompt layout, each with its own random frames, on the device."""
    gen = torch.Generator().manual_seed(seed)
    visual = FRAMES * (1 + (224 // 14) ** 2)
    rows = []
    for _ in range(batch):
        question = torch.randint(100, 29000, (setup.text_tokens,), generator=gen).tolist()
        rows.append([*_HEAD, *([VIDEO_TOKEN] * visual), *question])
    input_ids = torch.tensor(rows, device=setup.device)  # [B, L], all rows the same length
    pixels = torch.randn(batch, FRAMES, 3, 224, 224, generator=gen)  # [B, T, 3, S, S]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": pixels.to(setup.device, setup.dtype),
    }


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class _Clock:
    """Device-synchronised wall times inside a ``generate`` call: the end of its first model forward (the
    prefill) and the vision tower's forwards (transformers 5.23 encodes the video before that forward).

    Hooks on the model and on its video tower; the first model forward's output also gives the KV-cache size
    right after the prefill.
    """

    def __init__(self, model: torch.nn.Module, tower: torch.nn.Module, device: str) -> None:
        self.device = device
        self.calls = 0
        self.prefill_end = self.vision = 0.0
        self.cache_bytes = 0
        self._tower_began = 0.0
        self._handles = [
            model.register_forward_hook(self._model_after),
            tower.register_forward_pre_hook(self._tower_before),
            tower.register_forward_hook(self._tower_after),
        ]

    def now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def _model_after(self, _module: Any, _args: Any, output: Any) -> None:
        if self.calls == 0:
            self.prefill_end = self.now()
            self.cache_bytes = kv_cache_bytes(output.past_key_values)
        self.calls += 1

    def _tower_before(self, *_: Any) -> None:
        self._tower_began = self.now()

    def _tower_after(self, *_: Any) -> None:
        self.vision += self.now() - self._tower_began

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _measure(model: Any, setup: GpuBenchSetup, preset: str, batch: int) -> dict[str, Any]:
    apply_patch(model, SparseConfig.preset(preset))
    inputs = make_inputs(setup, batch)
    settings = {
        "do_sample": False,
        "suppress_tokens": [IMAGE_TOKEN, VIDEO_TOKEN],
        "pad_token_id": PAD_TOKEN,
    }
    generate = model.generate  # the model is Any: transformers types generate() for its mixin only
    cuda = torch.device(setup.device).type == "cuda"
    with torch.no_grad():
        generate(**inputs, **settings, max_new_tokens=2, min_new_tokens=2)  # warm-up of this shape
        stats = last_stats(model)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = _Clock(model, model.model.video_tower, setup.device)
        try:
            started = clock.now()
            out = generate(**inputs, **settings, max_new_tokens=setup.new_tokens, min_new_tokens=setup.new_tokens)
            ended = clock.now()
        finally:
            clock.close()
    generated = int(out.shape[1] - inputs["input_ids"].shape[1])
    ttft = clock.prefill_end - started
    return {
        "preset": preset,
        "batch": batch,
        "ttft_s": ttft,
        "vision_tower_s": clock.vision,
        "llm_prefill_s": ttft - clock.vision,
        "decode_tokens_per_s": batch * (generated - 1) / (ended - clock.prefill_end),
        "new_tokens": generated,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "kv_cache_bytes": clock.cache_bytes,
        "visual_tokens_in": stats[0].visual_tokens_in,
        "equivalent_tokens": sum(s.equivalent_tokens for s in stats) / len(stats),
        "removed_by_merge": sum(s.removed_by_merge for s in stats) / len(stats),
    }


def run_gpu_benchmark(setup: GpuBenchSetup) -> dict[str, Any]:
    """Every (batch, preset) pair of ``setup``; ratios against ``dense`` at the same batch size.

    Returns:
        ``{"setup": ..., "device_name": ..., "results": [row, ...]}``, rows as described in the module docstring
        plus ``ttft_ratio`` and ``kv_ratio``.
    """
    if setup.presets[0] != "dense":
        raise ValueError(f"presets must start with 'dense' (the reference), got {setup.presets}")
    model = build_model(setup)
    rows = []
    for batch in setup.batches:
        reference: dict[str, Any] = {}
        for preset in setup.presets:
            row = _measure(model, setup, preset, batch)
            reference = reference or row
            row["ttft_ratio"] = row["ttft_s"] / reference["ttft_s"]
            row["kv_ratio"] = row["kv_cache_bytes"] / reference["kv_cache_bytes"]
            rows.append(row)
    cuda = torch.device(setup.device).type == "cuda"
    described = {**asdict(setup), "dtype": str(setup.dtype).removeprefix("torch.")}
    return {
        "setup": described,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "results": rows,
    }
