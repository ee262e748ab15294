"""The committed tiny Video-LLaVA checkpoint: loads offline, stays small, and answers as metrics.json says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

from sparsevlm.tiny.evaluate import family_accuracy

CHECKPOINT = Path(__file__).parents[2] / "sparsevlm" / "tiny" / "checkpoint"
pytestmark = pytest.mark.skipif(
    not (CHECKPOINT / "metrics.json").exists(), reason="no trained checkpoint in sparsevlm/tiny/checkpoint"
)
# Families measured on at least ~30 questions in 32 videos; rarer ones are too noisy for a fixed margin.
CHECKED = ("colour", "shape", "direction", "count", "presence", "all")
MARGIN = 0.15


def test_checkpoint_is_small_and_has_only_video_llava_weights() -> None:
    size = sum(f.stat().st_size for f in CHECKPOINT.iterdir() if f.is_file())
    assert size <= 30 * 2**20
    with safe_open(str(CHECKPOINT / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    # Video-LLaVA's saved layout; the trainer's per-patch heads (colour, shape, motion, new) are not there.
    assert {n.split(".")[0] for n in names} == {"image_tower", "video_tower", "multi_modal_projector", "language_model"}
    assert not [n for n in names if any(head in n for head in ("colour", "motion", "background", "word_ids"))]


@pytest.mark.slow
def test_checkpoint_accuracy_matches_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics = json.loads((CHECKPOINT / "metrics.json").read_text())
    model = VideoLlavaForConditionalGeneration.from_pretrained(CHECKPOINT).eval()
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    assert model.config.text_config.num_hidden_layers >= 4
    torch.set_num_threads(1)  # the test suite runs next to other CPU-heavy work
    measured = family_accuracy(model, tokenizer, "test", num_videos=32, num_frames=metrics["test_frames"])
    for family in CHECKED:
        expected = metrics["test_accuracy"][family]
        assert measured[family] >= expected - MARGIN, (family, measured[family], expected)
