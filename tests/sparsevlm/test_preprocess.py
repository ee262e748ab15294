"""CLIP preprocessing must match transformers' VideoLlavaImageProcessor exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import VideoLlavaImageProcessor
from transformers.image_transforms import get_resize_output_image_size

from sparsevlm.preprocess import CLIP_MEAN, CLIP_STD, normalize_uint8, preprocess_frames
from sparsevlm.resize import resize_and_crop_uint8, resized_shape

# (height, width, size): landscape, portrait, square, odd sizes, extreme aspect ratios, upscaling.
SHAPES = [
    (37, 90, 32),
    (90, 37, 32),
    (64, 64, 32),
    (360, 204, 224),
    (270, 480, 224),
    (101, 77, 224),
    (7, 300, 16),
]


def reference(frames: np.ndarray, size: int) -> torch.Tensor:
    """transformers' own processor (the PIL path, which needs no torchvision): [T, 3, S, S]."""
    processor = VideoLlavaImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    out = processor(images=list(frames), return_tensors="pt", return_legacy_image_output=False)
    return out["pixel_values"]


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_matches_transformers_processor(height: int, width: int, size: int) -> None:
    frames = np.random.default_rng(height * width).integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    ours = preprocess_frames(frames, size)  # [1, T, 3, S, S]
    assert ours.shape == (1, 3, 3, size, size) and ours.dtype == torch.float32
    assert (ours[0] - reference(frames, size)).abs().max().item() <= 1e-6


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_split_is_lossless(height: int, width: int, size: int) -> None:
    """Decode-side uint8 resize+crop, then worker-side normalise == the one-step function, bit for bit."""
    frames = np.random.default_rng(7).integers(0, 256, (2, 2, height, width, 3), dtype=np.uint8)
    small = np.stack([[resize_and_crop_uint8(f, size) for f in clip] for clip in frames])  # [B, T, S, S, 3]
    assert small.dtype == np.uint8 and small.shape == (2, 2, size, size, 3)
    assert torch.equal(normalize_uint8(small), preprocess_frames(frames, size))


def test_resize_rounding_matches_transformers() -> None:
    rng = np.random.default_rng(0)
    for height, width in rng.integers(1, 2000, (300, 2)):
        for size in (14, 224, 336):
            image = np.empty((height, width, 3), dtype=np.uint8)  # only its shape is read
            expected = get_resize_output_image_size(image, size, default_to_square=False)
            assert resized_shape(int(height), int(width), size) == tuple(expected)


def test_accepts_torch_and_single_clip() -> None:
    frames = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)  # [T, H, W, 3]
    out = preprocess_frames(frames, 32)
    assert out.shape == (1, 4, 3, 32, 32)
    assert torch.equal(out, preprocess_frames(frames.numpy()[None], 32))


def test_normalisation_constants() -> None:
    white = np.full((1, 8, 8, 3), 255, dtype=np.uint8)
    expected = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    assert torch.allclose(normalize_uint8(white)[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 8, 8, 3), dtype=np.float32), np.zeros((2, 8, 8, 4), dtype=np.uint8), np.zeros((8, 8, 3))],
)
def test_rejects_bad_frames_naming_the_shape(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"shape=\("):
        preprocess_frames(bad, 8)


def test_every_value_of_every_channel_is_transformers_arithmetic() -> None:
    """The table holds, for all 256 values, `float32(v * (1/255) in float64)` minus mean over std in float32."""
    values = np.arange(256, dtype=np.uint8)
    frames = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(16, 16, 3)  # [H, W, 3]
    scaled = (torch.from_numpy(frames).to(torch.float64) * (1 / 255)).to(torch.float32)
    want = ((scaled - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).movedim(-1, 0)  # [3, H, W]
    assert torch.equal(normalize_uint8(frames), want)


def test_normalises_into_a_given_buffer_and_names_a_wrong_one() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    batch = torch.full((3, 4, 3, 8, 8), 9.0)  # [U, T, 3, S, S]: rows 0 and 2 written, row 1 untouched
    for row, clip in zip((0, 2), frames, strict=True):
        assert normalize_uint8(clip, batch[row]).data_ptr() == batch[row].data_ptr()
    assert torch.equal(batch[[0, 2]], normalize_uint8(frames)) and (batch[1] == 9.0).all()
    with pytest.raises(ValueError, match=r"out must be a contiguous float32 CPU tensor \(4, 3, 8, 8\)"):
        normalize_uint8(frames[0], torch.empty(4, 3, 8, 9))
