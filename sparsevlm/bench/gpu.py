"""The GPU benchmark: the full Video-LLaVA-7B layout in bf16, dense vs the video presets at batch 1, 8 and 32.

The model has the real checkpoint's shape (LLaMA-7B: 32 layers, hidden 4096, 32 heads, FFN 11008; CLIP
ViT-L/14 at 224 px: 24 layers, hidden 1024) with random weights built directly on the device, so nothing is
downloaded and no host copy of the weights is made. Every row is ``<s> USER: `` + 8 frames x 257 video tokens +
a question of its own length (:data:`TEXT_LENGTHS`: a caption request and questions of 8 to 40 tokens), left-
padded into one batch as the pipeline sends it (so attention runs with a padding mask, never the unmasked
kernel), with its own random frames (so the vision tower runs once per row). Per preset and batch size, after
one untimed warm-up of the same shape, ``repeats`` timed ``generate`` calls measure:

* time to first token (from calling ``generate`` to the end of its first model forward), split into the vision
  tower (timed by hooks around it) and the rest (the sparsified LLM prefill, projector, first logits);
* generated tokens per second from the end of that forward to the end of ``generate`` (``new_tokens`` per
  row, EOS suppressed), batch total;
* peak device memory of that ``generate`` call (CUDA only) and the KV-cache bytes right after the prefill.

Each time is the median of the repeats, with ``*_spread`` = (max - min) / median beside it. On CUDA, one more
``generate`` per preset at the largest batch counts the synchronising CUDA calls
(``torch.cuda.set_sync_debug_mode("warn")``): inside the prefill forward, inside each decode step's forward
(the model and the patch), and in ``generate``'s own loop. The report names the torch, CUDA, cuDNN, driver and
transformers versions.

Random frames differ everywhere, so cross-frame reduction (``video-xf-25``) finds no repeats here: it runs
as the plain method plus the per-patch pixel comparison. With ``tiny=True`` (or without CUDA) the same loop
runs at a tiny width on CPU in float32, to prove the command; those numbers measure nothing.
"""

from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import transformers
from transformers import VideoLlavaForConditionalGeneration

from sparsevlm.bench.layout import (
    FRAMES,
    IMAGE_SIZE,
    IMAGE_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    VIDEO_TOKENS,
    Widths,
    video_llava_7b_config,
)
from sparsevlm.bench.speed import kv_cache_bytes
from sparsevlm.config import SparseConfig
from sparsevlm.patch import apply_patch, last_stats
from sparsevlm.prompt import left_pad

__all__ = ["GPU_PRESETS", "TEXT_LENGTHS", "GpuBenchSetup", "count_decode_syncs", "run_gpu_benchmark", "versions"]

GPU_PRESETS = ("dense", "video-50", "video-25", "video-10", "video-5", "video-xf-25")
# Tokens after the video, "ASSISTANT:" included, row by row (cycled): a caption request and questions of the
# lengths users ask, so every batch above 1 is left-padded as in production.
TEXT_LENGTHS = (14, 9, 22, 12, 31, 17, 8, 40)
_HEAD = [1, 3148, 1001, 29901, 29871]  # <s> USER: ▁ (the real LLaMA ids)
_TINY = Widths(hidden=64, layers=4, heads=2, ffn=128, vision_hidden=32, vision_layers=2, vision_heads=2, vision_ffn=64)
_SYNC_WARNING = "synchronizing CUDA operation"  # the text of torch's sync-debug warning


@dataclass(frozen=True)
class GpuBenchSetup:
    """What one benchmark run covers.

    Attributes:
        widths: model sizes (default: the real 7B layout).
        batches: batch sizes.
        presets: SparseConfig presets, ``dense`` first (the reference of the ratios).
        new_tokens: tokens generated per row.
        repeats: timed ``generate`` calls per (preset, batch), after one untimed warm-up.
        device: torch device.
        dtype: weight and activation dtype.
    """

    widths: Widths = field(default_factory=Widths)
    batches: tuple[int, ...] = (1, 8, 32)
    presets: tuple[str, ...] = GPU_PRESETS
    new_tokens: int = 32
    repeats: int = 3
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        if self.presets[:1] != ("dense",):
            raise ValueError(f"presets must start with 'dense' (the reference), got {self.presets}")
        if self.repeats < 1 or self.new_tokens < 2:
            raise ValueError(f"need repeats >= 1 and new_tokens >= 2, got {self.repeats} and {self.new_tokens}")

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
    """``batch`` left-padded rows of the prompt layout (question lengths from :data:`TEXT_LENGTHS`), each with
    its own random frames, on the device."""
    gen = torch.Generator().manual_seed(seed)
    visual = VIDEO_TOKENS
    rows = []
    for row in range(batch):
        question = torch.randint(100, 29000, (TEXT_LENGTHS[row % len(TEXT_LENGTHS)],), generator=gen).tolist()
        rows.append([*_HEAD, *([VIDEO_TOKEN] * visual), *question])
    input_ids, mask = left_pad(rows, PAD_TOKEN)  # [B, L] each
    pixels = torch.randn(batch, FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)  # [B, T, 3, S, S]
    return {
        "input_ids": input_ids.to(setup.device),
        "attention_mask": mask.to(setup.device),
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


_SETTINGS = {"do_sample": False, "suppress_tokens": [IMAGE_TOKEN, VIDEO_TOKEN], "pad_token_id": PAD_TOKEN}


def _timed_generate(model: Any, setup: GpuBenchSetup, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """One timed ``generate`` of ``setup.new_tokens`` per row: its times and KV-cache bytes."""
    batch = int(inputs["input_ids"].shape[0])
    clock = _Clock(model, model.model.video_tower, setup.device)
    try:
        started = clock.now()
        out = model.generate(**inputs, **_SETTINGS, max_new_tokens=setup.new_tokens, min_new_tokens=setup.new_tokens)
        ended = clock.now()
    finally:
        clock.close()
    generated = int(out.shape[1] - inputs["input_ids"].shape[1])
    ttft = clock.prefill_end - started
    return {
        "ttft_s": ttft,
        "vision_tower_s": clock.vision,
        "llm_prefill_s": ttft - clock.vision,
        "decode_tokens_per_s": batch * (generated - 1) / (ended - clock.prefill_end),
        "new_tokens": generated,
        "kv_cache_bytes": clock.cache_bytes,
    }


# A median per timed figure, and the name of its spread.
_SPREADS = {
    "ttft_s": "ttft_spread",
    "vision_tower_s": "vision_tower_spread",
    "llm_prefill_s": "llm_prefill_spread",
    "decode_tokens_per_s": "decode_spread",
}


def _spread(values: list[float]) -> float:
    """(max - min) / median: how far apart the repeats are, relative to the figure reported."""
    return (max(values) - min(values)) / statistics.median(values)


def _measure(model: Any, setup: GpuBenchSetup, preset: str, batch: int) -> dict[str, Any]:
    apply_patch(model, SparseConfig.preset(preset))
    inputs = make_inputs(setup, batch)
    cuda = torch.device(setup.device).type == "cuda"
    with torch.no_grad():
        model.generate(**inputs, **_SETTINGS, max_new_tokens=2, min_new_tokens=2)  # warm-up of this shape
        stats = last_stats(model)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        runs = [_timed_generate(model, setup, inputs) for _ in range(setup.repeats)]
    row: dict[str, Any] = {"preset": preset, "batch": batch, "tokens_per_row": inputs["attention_mask"].sum(1).tolist()}
    for key, spread in _SPREADS.items():
        values = [run[key] for run in runs]
        row[key] = statistics.median(values)
        row[spread] = _spread(values)
        row[f"{key}_runs"] = values
    return {
        **row,
        "new_tokens": runs[0]["new_tokens"],
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "kv_cache_bytes": runs[0]["kv_cache_bytes"],
        "visual_tokens_in": stats[0].visual_tokens_in,
        "equivalent_tokens": sum(s.equivalent_tokens for s in stats) / len(stats),
        "removed_by_merge": sum(s.removed_by_merge for s in stats) / len(stats),
    }


class _ForwardMarks:
    """How many warnings ``seen`` held when each model forward began and ended (hooks on ``model``)."""

    def __init__(self, model: torch.nn.Module, seen: list[warnings.WarningMessage]) -> None:
        self.seen = seen
        self.spans: list[tuple[int, int]] = []
        self._began = 0
        self._handles = [model.register_forward_pre_hook(self._before), model.register_forward_hook(self._after)]

    def _before(self, *_: Any) -> None:
        self._began = self.count()

    def _after(self, *_: Any) -> None:
        self.spans.append((self._began, self.count()))

    def count(self) -> int:
        return sum(_SYNC_WARNING in str(w.message) for w in self.seen)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def count_decode_syncs(model: Any, setup: GpuBenchSetup, preset: str, batch: int) -> dict[str, Any]:
    """Synchronising CUDA calls of one ``generate`` under ``preset``, counted by the device runtime
    (``torch.cuda.set_sync_debug_mode("warn")``: every blocking copy, ``.item()``, ``nonzero``, pageable
    host-to-device copy, ...), split into the prefill forward, each decode step's forward (the model with the
    patch) and ``generate``'s own loop (stopping checks and the like, the same for every preset).

    Returns:
        ``{"preset", "batch", "prefill_forward", "per_decode_forward" (list, one per decode step),
        "per_decode_forward_max", "generate_loop_per_step"}``.

    Raises:
        ValueError: ``setup.device`` is not a CUDA device (the counter is CUDA's own).
    """
    if torch.device(setup.device).type != "cuda":
        raise ValueError(f"the device-side sync count needs a CUDA device, got {setup.device!r}")
    apply_patch(model, SparseConfig.preset(preset))
    inputs = make_inputs(setup, batch)
    with torch.no_grad(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        marks = _ForwardMarks(model, seen)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model.generate(**inputs, **_SETTINGS, max_new_tokens=setup.new_tokens, min_new_tokens=setup.new_tokens)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            marks.close()
    inside = [end - begin for begin, end in marks.spans]  # one per model forward
    total = marks.count()
    decode = inside[1:]
    return {
        "preset": preset,
        "batch": batch,
        "prefill_forward": inside[0],
        "per_decode_forward": decode,
        "per_decode_forward_max": max(decode, default=0),
        "generate_loop_per_step": (total - sum(inside)) / max(len(decode), 1),
    }


def _driver_version() -> str | None:
    """The NVIDIA driver's version from ``nvidia-smi``, or None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def versions() -> dict[str, Any]:
    """The software the numbers were taken with: Python, torch, its CUDA and cuDNN, the driver, transformers."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "driver": _driver_version(),
        "transformers": transformers.__version__,
    }


def run_gpu_benchmark(setup: GpuBenchSetup, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every (batch, preset) pair of ``setup``; ratios against ``dense`` at the same batch size; on CUDA, the
    sync counts of every preset at the largest batch.

    Args:
        setup: what to run.
        progress: called with the report so far after every row (a caller under a time limit saves it).

    Returns:
        ``{"setup", "device_name", "versions", "results": [row, ...], "decode_syncs": [row, ...]}``, result
        rows as described in the module docstring plus ``ttft_ratio`` and ``kv_ratio``; ``decode_syncs`` rows
        from :func:`count_decode_syncs` (empty without CUDA).
    """
    cuda = torch.device(setup.device).type == "cuda"
    described = {**asdict(setup), "dtype": str(setup.dtype).removeprefix("torch."), "text_lengths": TEXT_LENGTHS}
    rows: list[dict[str, Any]] = []
    syncs: list[dict[str, Any]] = []
    report = {
        "setup": described,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "versions": versions(),
        "results": rows,
        "decode_syncs": syncs,
    }
    model = build_model(setup)
    for batch in setup.batches:
        reference: dict[str, Any] = {}
        for preset in setup.presets:
            row = _measure(model, setup, preset, batch)
            reference = reference or row
            row["ttft_ratio"] = row["ttft_s"] / reference["ttft_s"]
            row["kv_ratio"] = row["kv_cache_bytes"] / reference["kv_cache_bytes"]
            rows.append(row)
            if progress is not None:
                progress(report)
    for preset in setup.presets if cuda else ():
        syncs.append(count_decode_syncs(model, setup, preset, max(setup.batches)))
        if progress is not None:
            progress(report)
    return report
