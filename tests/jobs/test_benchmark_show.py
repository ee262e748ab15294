"""`python -m jobs.benchmark show`: the kept-token picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.benchmark.cli import main
from sparsevlm.bench.show import ShowRow, pool_pixels, render_keep_grid, token_mask


def test_token_mask_follows_the_video_llava_layout() -> None:
    # grid 2: per frame CLS + 4 patches; index 0 is frame 0's CLS, 1 its patch (0, 0), 9 frame 1's patch (1, 1)
    mask = token_mask([0, 1, 9], num_frames=2, grid=2)
    assert mask.shape == (2, 2, 2)
    assert mask[0].tolist() == [[True, False], [False, False]]
    assert mask[1].tolist() == [[False, False], [False, True]]


def test_render_dims_pruned_patches() -> None:
    frames = np.full((2, 8, 8, 3), 200, dtype=np.uint8)
    kept = np.zeros((2, 2, 2), dtype=bool)
    kept[0, 0, 0] = True
    image = np.asarray(render_keep_grid(frames, [ShowRow("m", kept, np.zeros_like(kept))], scale=1))
    top = 14  # label strip
    assert image[top + 1, 1].tolist() == [200, 200, 200]  # kept patch unchanged
    assert image[top + 6, 6].mean() < 100  # pruned patch dimmed


def test_pool_pixels_average_each_cell() -> None:
    frames = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    frames[0, :4, :4] = 100  # patch (0, 0) of a 2 x 2 patch grid
    pooled = pool_pixels(frames, grid=2, rows=1, cols=1)
    assert (pooled == 25).all()  # one cell: the frame mean
    assert (pool_pixels(frames, grid=2, rows=2, cols=2) == frames).all()  # one patch per cell: unchanged


@pytest.mark.slow  # 2-6 s here (2 cores): every method's keep grid on a synthetic video, rendered
def test_show_command_on_a_synthetic_video(tmp_path: Path) -> None:
    out = tmp_path / "show.png"
    main(["show", "--synthetic", "0", "--budget", "0.25", "--out", str(out)])
    with Image.open(out) as image:
        assert image.width == 8 * 64 * 3 and image.height > 5 * 64 * 3  # evidence + four methods
