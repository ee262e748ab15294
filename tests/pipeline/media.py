"""Test videos encoded in code with PyAV: the shared helper of the decode and bad-input tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fps: int = 15,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode uint8 RGB frames `[T, H, W, 3]` with PyAV (one encoder thread, so the bytes are reproducible)."""
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"threads": "1", **(options or {})} if codec == "libx264" else (options or {})
        if pts_ms is not None:  # variable frame rate: explicit presentation times in milliseconds
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


SHOT_COLOURS = ((200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (40, 200, 200))


def shot_frames(cuts: list[int], count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """`[count, H, W, 3]` uint8 frames whose picture changes completely at each frame index in ``cuts``: shot k
    is a checkerboard of :data:`SHOT_COLOURS` ``[k % 5]`` and its shade at a third, squares of ``4 + 4 * (k % 5)``
    pixels, with a grey bar moving one pixel a frame (motion inside a shot scores far below a cut)."""
    shot = np.searchsorted(np.asarray(cuts), np.arange(count), side="right")  # [T], the shot of each frame
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    pictures = []
    for k, colour in enumerate(SHOT_COLOURS):
        square = 4 + 4 * k
        light = ((rows // square + cols // square) % 2 == 0)[:, :, None]  # [H, W, 1]
        full = np.asarray(colour, dtype=np.float64)
        pictures.append(np.where(light, full, full / 3).astype(np.uint8))  # [H, W, 3]
    frames = np.stack([pictures[k % len(SHOT_COLOURS)] for k in shot])  # [T, H, W, 3]
    for t in range(count):
        frames[t, :, (t % (width - 4)) : (t % (width - 4)) + 4] = 128
    return frames
