"""CLIP-exact frame preprocessing for Video-LLaVA, without transformers' processor classes.

`VideoLlavaVideoProcessor` needs torchvision, which the CPU install does not have, so the engine prepares
`pixel_values_videos` itself. The recipe is the one of `VideoLlavaImageProcessor` (CLIP's):

1. resize the short edge to `size` with PIL bicubic; the long edge becomes `int(size * long / short)`
   (transformers' `get_resize_output_image_size(..., default_to_square=False)`, floor rounding);
2. centre crop `size` x `size` (top/left offsets `(edge - size) // 2`);
3. rescale by 1/255 (computed in float64, stored as float32) and normalise with CLIP's mean and std in
   float32 (the values of a 256-entry table per channel: the same numbers, one lookup per element).

The work is split in two so that the decode stage can ship model-resolution uint8 frames
(`resize_and_crop_uint8`, 1 byte per value) and the model worker only normalises (`normalize_uint8`). The
resize half is in `sparsevlm/resize.py` (numpy and PIL only, so the decode workers never import torch); import
it from there. Because PIL resizes uint8 images to uint8 in both transformers and here, the split is
lossless: `normalize_uint8(resize_and_crop_uint8(x))` is bit-identical to `preprocess_frames(x)`, and both match
transformers' `VideoLlavaImageProcessor` exactly (max abs difference 0.0 in the tests).
"""

from __future__ import annotations

import numpy as np
import torch

from sparsevlm.resize import resize_and_crop_uint8

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["CLIP_MEAN", "CLIP_STD", "normalize_uint8", "preprocess_frames"]


def _normalize_table() -> np.ndarray:
    """float32 ``[3, 256]``: channel c's normalised value of every uint8 value, computed as transformers does
    (``v.astype(float64) * (1/255)`` cast to float32, then ``(x - mean) / std`` in float32)."""
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # [256]
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)[:, None]  # [3, 1]
    std = np.asarray(CLIP_STD, dtype=np.float32)[:, None]
    return (scaled[None, :] - mean) / std  # [3, 256] float32


_TABLE = _normalize_table()


def normalize_uint8(frames: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rescale and normalise model-resolution uint8 frames, channels last -> channels first.

    The values are transformers' exactly (``x.astype(float64) * (1/255)`` cast to float32, then
    ``(x - mean) / std`` in float32), read from a table of the 256 values per channel: one float32 lookup per
    element, written channels first, instead of two full-size float passes and a transpose.

    Args:
        frames: uint8 `[..., S, S, 3]` (e.g. `[B, T, S, S, 3]` or `[T, S, S, 3]`); read-only memory (a view of
            an Arrow buffer) is fine, it is only read.
        out: a contiguous float32 CPU tensor `[..., 3, S, S]` to write into (e.g. a row of a pinned batch).

    Returns:
        float32 tensor `[..., 3, S, S]` (``out`` when given).
    """
    array = frames.numpy(force=True) if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim < 3 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [..., H, W, 3], got dtype={array.dtype} shape={tuple(array.shape)}")
    shape = (*array.shape[:-3], 3, *array.shape[-3:-1])  # [..., 3, S, S]
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 CPU tensor {shape}, got {out.dtype} {tuple(out.shape)}")
    target = out.numpy()  # shares out's memory
    for channel in range(3):  # mode="clip" never clips a uint8 index into 256 entries; it only skips buffering out
        np.take(_TABLE[channel], array[..., channel], out=target[..., channel, :, :], mode="clip")
    return out


def preprocess_frames(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Turn raw RGB video frames into Video-LLaVA `pixel_values_videos` (CLIP preprocessing).

    Args:
        frames: uint8 `[B, T, H, W, 3]` or `[T, H, W, 3]` (any H, W; numpy or torch).
        size: Model resolution (the vision tower's `image_size`).

    Returns:
        float32 tensor `[B, T, 3, size, size]` (B = 1 for 4-D input).
    """
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim == 4:
        array = array[None]
    if array.ndim != 5 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 frames [B, T, H, W, 3] or [T, H, W, 3], got dtype={array.dtype} shape={tuple(array.shape)}"
        )
    batch, num_frames = array.shape[:2]
    cropped = np.empty((batch, num_frames, size, size, 3), dtype=np.uint8)  # [B, T, S, S, 3]
    for b in range(batch):
        for t in range(num_frames):
            cropped[b, t] = resize_and_crop_uint8(array[b, t], size)
    return normalize_uint8(cropped)  # [B, T, 3, S, S]
