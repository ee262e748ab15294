"""The ``pool`` baseline: uniform spatial average pooling of each frame's patch grid before the LLM.

The text-agnostic way to spend fewer visual tokens: every frame's ``side x side`` patch grid is cut into a
coarser ``rows x cols`` grid of cells and each cell becomes the mean of its patches. A leading CLS token (the
257-th token of a Video-LLaVA frame) passes through unchanged. Pure tensor code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def frame_grid(tokens_per_frame: int) -> tuple[int, int]:
    """``(side, extra)``: a frame is ``extra`` leading tokens (0 or 1, the CLS) and a ``side x side`` grid.

    Raises:
        ValueError: the count is not a square grid with at most one leading token.
    """
    side = math.isqrt(tokens_per_frame)
    extra = tokens_per_frame - side * side
    if side < 1 or extra > 1:
        raise ValueError(
            f"{tokens_per_frame} tokens per frame is not a square patch grid (+ an optional CLS token); "
            "spatial pooling needs side*side or side*side + 1 tokens per frame"
        )
    return side, extra


def pool_grid(side: int, cells: float) -> tuple[int, int]:
    """The near-square grid (rows and columns differ by at most one, each at most ``side``) whose cell count is
    closest to ``cells``; ties prefer fewer cells. At least one cell.
    """
    candidates = [(n, n) for n in range(1, side + 1)] + [(n + 1, n) for n in range(1, side)]
    return min(candidates, key=lambda grid: (abs(grid[0] * grid[1] - cells), grid[0] * grid[1]))


def cell_index(side: int, rows: int, cols: int) -> torch.Tensor:
    """``[side*side]`` the cell of each patch (raster order): patch row ``r`` is in cell row ``r * rows // side``."""
    at = torch.arange(side)
    return ((at * rows // side)[:, None] * cols + (at * cols // side)[None, :]).reshape(-1)


@dataclass(frozen=True)
class SpatialPool:
    """One video's frames after pooling.

    Attributes:
        tokens: ``[T, P, D]`` features; each cell's first patch holds the mean of the cell.
        keep: ``[T, P]`` bool: the CLS token (if any) and the first patch of each cell.
        grid: the ``(rows, cols)`` cell grid.
    """

    tokens: torch.Tensor
    keep: torch.Tensor
    grid: tuple[int, int]


def spatial_pool(frames: torch.Tensor, fraction: float) -> SpatialPool:
    """Average-pool each frame's patch grid so the frame keeps about ``fraction`` of its tokens.

    The CLS token counts towards the budget: a 257-token frame at 0.10 keeps the CLS and a 5 x 5 grid (26).
    Cells partition the grid (row ``r`` goes to cell row ``r * rows // side``); each cell's top-left patch
    survives, holding the cell mean, so kept tokens keep raster order and their original positions.

    Args:
        frames: ``[T, P, D]`` visual tokens of one video, ``P`` = ``side * side`` (+ 1 leading CLS).
        fraction: share of each frame's tokens to keep, in (0, 1].

    Raises:
        ValueError: ``fraction`` outside (0, 1] or ``P`` not a square grid (see :func:`frame_grid`).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"pooling fraction must be in (0, 1], got {fraction!r}")
    t, p, d = frames.shape
    side, extra = frame_grid(p)
    rows, cols = pool_grid(side, fraction * p - extra)
    cell = cell_index(side, rows, cols).to(frames.device)  # [side*side]
    patches = frames[:, extra:].float()  # [T, side*side, D]
    sums = torch.zeros(t, rows * cols, d, device=frames.device).index_add_(1, cell, patches)
    counts = torch.bincount(cell, minlength=rows * cols).to(sums)
    means = sums / counts[None, :, None]  # [T, C, D]
    first = torch.full((rows * cols,), side * side, dtype=torch.long, device=frames.device)
    first = first.scatter_reduce(0, cell, torch.arange(side * side, device=frames.device), "amin")  # [C]
    tokens = frames.clone()
    tokens[:, extra + first] = means.to(frames.dtype)
    keep = torch.zeros(t, p, dtype=torch.bool, device=frames.device)
    keep[:, :extra] = True
    keep[:, extra + first] = True
    return SpatialPool(tokens, keep, (rows, cols))
