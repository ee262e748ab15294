"""The picture a user looks at to trust the method: which visual tokens each method keeps.

Frames are laid out in a row per method; kept patches are shown as they are, pruned ones dimmed, and the
pruned patches that were recycled into merged tokens are outlined in orange. The ``pool`` baseline keeps no
patch as it is: its row shows the frames averaged over its pooling cells, what its tokens can still see. An
optional first row outlines the question's evidence in green.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sparsevlm.pooling import cell_index

RECYCLED = (255, 150, 0)
EVIDENCE = (0, 220, 0)
LABEL_HEIGHT = 14


def token_mask(indices: list[int] | np.ndarray, num_frames: int, grid: int) -> np.ndarray:
    """Visual-token indices (Video-LLaVA layout: per frame a CLS token, then the patches) to a patch mask.

    Args:
        indices: original visual-token indices.
        num_frames: T.
        grid: patches per side.

    Returns:
        bool ``[T, grid, grid]``; CLS tokens are not drawn.
    """
    per_frame = 1 + grid * grid
    mask = np.zeros((num_frames, grid * grid), dtype=bool)
    for index in np.asarray(indices, dtype=np.int64).tolist():
        frame, offset = divmod(index, per_frame)
        if offset > 0 and frame < num_frames:
            mask[frame, offset - 1] = True
    return mask.reshape(num_frames, grid, grid)


@dataclass(frozen=True)
class ShowRow:
    """One method's row: ``kept`` and ``recycled`` are bool ``[T, g, g]`` patch masks; ``frames`` replaces the
    input frames in this row when given (the pooled view)."""

    label: str
    kept: np.ndarray
    recycled: np.ndarray
    frames: np.ndarray | None = None


def pool_pixels(frames: np.ndarray, grid: int, rows: int, cols: int) -> np.ndarray:
    """uint8 ``[T, S, S, 3]`` frames with every pooling cell (of a ``grid x grid`` patch grid cut into
    ``rows x cols`` cells, the partition of :func:`sparsevlm.pooling.spatial_pool`) replaced by its mean colour."""
    t, size = frames.shape[0], frames.shape[1]
    patch = size // grid
    cells = cell_index(grid, rows, cols).numpy().reshape(grid, grid)
    per_pixel = np.repeat(np.repeat(cells, patch, axis=0), patch, axis=1).reshape(-1)  # [S*S]
    flat = frames.reshape(t, size * size, 3).astype(np.float64)
    out = np.empty_like(flat)
    for c in range(rows * cols):
        where = per_pixel == c
        out[:, where] = flat[:, where].mean(axis=1, keepdims=True)
    return out.round().astype(np.uint8).reshape(frames.shape)


def render_keep_grid(
    frames: np.ndarray,
    rows: list[ShowRow],
    evidence: np.ndarray | None = None,
    scale: int = 3,
) -> Image.Image:
    """Compose the picture.

    Args:
        frames: uint8 ``[T, S, S, 3]`` at model resolution.
        rows: one per method.
        evidence: bool ``[T, g, g]`` patches that show what the question asks about, or None.
        scale: pixel upscaling for visibility.

    Returns:
        An RGB image: one labelled row per method (plus the evidence row first when given).
    """
    t, size = frames.shape[0], frames.shape[1]
    grid = rows[0].kept.shape[1]
    cell = size * scale
    patch = cell // grid
    all_rows: list[tuple[str, np.ndarray | None, np.ndarray | None, np.ndarray]] = []
    if evidence is not None:
        all_rows.append(("frames + evidence", None, None, frames))
    all_rows.extend((r.label, r.kept, r.recycled, frames if r.frames is None else r.frames) for r in rows)
    image = Image.new("RGB", (t * cell, len(all_rows) * (cell + LABEL_HEIGHT)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for r, (label, kept, recycled, row_frames) in enumerate(all_rows):
        big = np.repeat(np.repeat(row_frames, scale, axis=1), scale, axis=2)  # [T, cell, cell, 3]
        top = r * (cell + LABEL_HEIGHT)
        draw.text((2, top + 1), label, fill=(0, 0, 0))
        for f in range(t):
            tile = big[f].astype(np.float32)
            if kept is not None:
                shade = np.repeat(np.repeat(kept[f], patch, axis=0), patch, axis=1)  # [cell, cell]
                tile = np.where(shade[..., None], tile, tile * 0.2 + 30)
            image.paste(Image.fromarray(tile.clip(0, 255).astype(np.uint8)), (f * cell, top + LABEL_HEIGHT))
            outline = evidence if kept is None else recycled
            colour = EVIDENCE if kept is None else RECYCLED
            if outline is None:
                continue
            for i, j in zip(*np.nonzero(outline[f]), strict=True):
                x0, y0 = f * cell + j * patch, top + LABEL_HEIGHT + i * patch
                draw.rectangle((x0, y0, x0 + patch - 1, y0 + patch - 1), outline=colour)
    return image
