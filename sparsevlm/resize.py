"""Frame resizing at model resolution in numpy and PIL only: the decode stage's half of CLIP's preprocessing.

The decode workers ship model-resolution uint8 frames (:func:`resize_and_crop_uint8`) and the model worker
normalises them (:func:`sparsevlm.preprocess.normalize_uint8`). This half lives apart from the torch half so that
a decode worker, which runs it on every frame, never imports torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["resize_and_crop_uint8", "resized_shape"]


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Return the (height, width) after resizing the short edge to `size`.

    Mirrors `transformers.image_transforms.get_resize_output_image_size(image, size,
    default_to_square=False)`: the long edge is `int(size * long / short)` (floor), so the result never
    needs padding before the centre crop.

    Args:
        height: Source height in pixels.
        width: Source width in pixels.
        size: Target length of the short edge.

    Returns:
        The resized `(height, width)`.
    """
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"height, width and size must be positive, got {height=}, {width=}, {size=}")
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def resize_and_crop_uint8(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize the short edge to `size` (PIL bicubic) and centre-crop a square, staying in uint8.

    Args:
        frame: One RGB frame, uint8 `[H, W, 3]`.
        size: Model resolution (e.g. 224).

    Returns:
        A C-contiguous uint8 array `[size, size, 3]`.
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected one uint8 RGB frame [H, W, 3], got dtype={frame.dtype} shape={tuple(frame.shape)}")
    height, width = frame.shape[:2]
    new_h, new_w = resized_shape(height, width, size)
    # PIL needs a contiguous buffer; rotated views from np.rot90 are not.
    image = Image.fromarray(np.ascontiguousarray(frame))
    resized = np.asarray(image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])
