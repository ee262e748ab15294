"""The committed tiny Video-LLaVA checkpoints (tiny, tiny-deep): load offline, stay small, answer as metrics.json
says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

from sparsevlm.tiny import BUNDLED_MODELS
from sparsevlm.tiny.evaluate import family_accuracy

# Each bundled model whose checkpoint is committed (tiny-deep is copied in from its background training run).
CHECKPOINTS = [
    pytest.param(
        path,
        id=name,
        marks=pytest.mark.skipif(not (path / "metrics.json").exists(), reason=f"no trained checkpoint in {path}"),
    )
    for name, path in BUNDLED_MODELS.items()
]
# Families measured on at least ~30 questions in 32 videos; rarer ones are too noisy for a fixed margin.
CHECKED = ("colour", "shape", "direction", "count", "presence", "all")
MARGIN = 0.15


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_checkpoint_is_small_and_has_only_video_llava_weights(checkpoint: Path) -> None:
    size = sum(f.stat().st_size for f in checkpoint.iterdir() if f.is_file())
    assert size <= 30 * 2**20
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    # Video-LLaVA's saved layout; the trainer's per-patch heads (colour, shape, motion, new) are not there.
    assert {n.split(".")[0] for n in names} == {"image_tower", "video_tower", "multi_modal_projector", "language_model"}
    assert not [n for n in names if any(head in n for head in ("colour", "motion", "background", "word_ids"))]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_checkpoint_accuracy_matches_metrics(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    model = VideoLlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert model.config.text_config.num_hidden_layers == metrics["model_config"]["text_layers"] >= 4
    # A checkpoint saved during a run (final: false) has validation accuracy only; a finished run's has test.
    split, expected = (
        ("test", metrics["test_accuracy"]) if "test_accuracy" in metrics else ("val", metrics["val_accuracy"])
    )
    frames = metrics["train_config"]["num_frames"]
    torch.set_num_threads(1)  # the test suite runs next to other CPU-heavy work
    measured = family_accuracy(model, tokenizer, split, num_videos=32, num_frames=frames)
    for family in CHECKED:
        assert measured[family] >= expected[family] - MARGIN, (family, measured[family], expected[family])
