"""The picture a user looks at to trust the method: which visual tokens each method keeps.

Frames are laid out in a row per method; kept patches are shown as they are, pruned ones dimmed, and the
pruned patches that were recycled into merged tokens are outlined in orange. An optional first row outlines
the question's evidence in green.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

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


def render_keep_grid(
    frames: np.ndarray,
    rows: list[tuple[str, np.ndarray, np.ndarray]],
    evidence: np.ndarray | None = None,
    scale: int = 3,
) -> Image.Image:
    """Compose the picture.

    Args:
        frames: uint8 ``[T, S, S, 3]`` at model resolution.
        rows: ``(label, kept [T, g, g], recycled [T, g, g])`` per method.
        evidence: bool ``[T, g, g]`` patches that show what the question asks about, or None.
        scale: pixel upscaling for visibility.

    Returns:
        An RGB image: one labelled row per method (plus the evidence row first when given).
    """
    t, size = frames.shape[0], frames.shape[1]
    grid = rows[0][1].shape[1]
    cell = size * scale
    patch = cell // grid
    all_rows: list[tuple[str, np.ndarray | None, np.ndarray | None]] = []
    if evidence is not None:
        all_rows.append(("frames + evidence", None, None))
    all_rows.extend(rows)
    image = Image.new("RGB", (t * cell, len(all_rows) * (cell + LABEL_HEIGHT)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    big = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)  # [T, cell, cell, 3]
    for r, (label, kept, recycled) in enumerate(all_rows):
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
