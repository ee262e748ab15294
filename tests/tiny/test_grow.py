"""Growing the tiny Video-LLaVA in depth: the grown model computes what the original did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from jobs.grow_tiny import main
from sparsevlm.tiny import CHECKPOINT_DIR
from sparsevlm.tiny.grow import grow_depth
from sparsevlm.tiny.inputs import encode_prompts
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import build_tokenizer
from sparsevlm.tiny.video_qa import make_sample

TRAINED = (CHECKPOINT_DIR / "config.json").is_file()


def _logits(
    model: VideoLlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, size: int, patch: int
) -> torch.Tensor:
    sample = make_sample("test", 5, num_frames=8, size=size, patch=patch)
    questions = [qa.question for qa in sample.questions[:3]]
    enc = encode_prompts(tokenizer, questions, [sample.frames] * len(questions), patch)
    with torch.no_grad():
        return model(**enc).logits


@pytest.mark.skipif(not TRAINED, reason="no trained checkpoint in sparsevlm/tiny/checkpoint")
@pytest.mark.parametrize("positions", [None, [0, 5, 10, 15]])
def test_grown_checkpoint_gives_the_same_logits(positions: list[int] | None) -> None:
    model = VideoLlavaForConditionalGeneration.from_pretrained(CHECKPOINT_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    grown = grow_depth(model, 16, positions)
    assert grown.config.text_config.num_hidden_layers == 16 and len(grown.model.language_model.layers) == 16
    assert model.config.text_config.num_hidden_layers == 4  # the original is untouched
    expected = _logits(model, tokenizer, 64, 8)
    torch.testing.assert_close(_logits(grown, tokenizer, 64, 8), expected, atol=1e-5, rtol=0)
    assert expected.std() > 1  # a trained model's logits, not a degenerate all-equal case
    kept = list(range(4)) if positions is None else positions
    for depth, layer in enumerate(grown.model.language_model.layers):
        zero = depth not in kept
        assert bool((layer.self_attn.o_proj.weight == 0).all()) == zero
        assert bool((layer.mlp.down_proj.weight == 0).all()) == zero
        assert bool((layer.self_attn.q_proj.weight != 0).any())  # new layers still have gradients to follow
    old = model.model.language_model.layers[3].mlp.up_proj.weight
    assert torch.equal(grown.model.language_model.layers[kept[3]].mlp.up_proj.weight, old)


def test_a_trainable_new_layer_changes_the_output() -> None:
    tokenizer = build_tokenizer()
    small = TinyModelConfig(image_size=48, patch_size=16, vision_hidden=32, vision_heads=2, text_hidden=32,
                            text_intermediate=64, text_layers=2, text_heads=4, text_kv_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(small, tokenizer)
    grown = grow_depth(model, 3)
    before = _logits(model, tokenizer, 48, 16)
    torch.testing.assert_close(_logits(grown, tokenizer, 48, 16), before, atol=1e-5, rtol=0)
    with torch.no_grad():
        grown.model.language_model.layers[2].mlp.down_proj.weight.normal_()
    assert not torch.allclose(_logits(grown, tokenizer, 48, 16), before, atol=1e-3)


def test_growing_refuses_bad_depths() -> None:
    model = build_model(TinyModelConfig(text_layers=2, vision_layers=1), build_tokenizer())
    with pytest.raises(ValueError, match="below the model's 2 layers"):
        grow_depth(model, 1)
    for positions in ([1, 0], [0, 4], [0]):
        with pytest.raises(ValueError, match="strictly increasing depths"):
            grow_depth(model, 4, positions)


@pytest.mark.skipif(not TRAINED, reason="no trained checkpoint in sparsevlm/tiny/checkpoint")
def test_grow_command_writes_a_checkpoint_with_its_provenance(tmp_path: Path) -> None:
    out = main(["--layers", "6", "--out", str(tmp_path / "grown")])
    grown = VideoLlavaForConditionalGeneration.from_pretrained(out)
    assert grown.config.text_config.num_hidden_layers == 6
    assert AutoTokenizer.from_pretrained(out).video_token == "<video>"
    metrics = json.loads((out / "metrics.json").read_text())
    source = json.loads((CHECKPOINT_DIR / "metrics.json").read_text())
    assert metrics["command"] == f"python -m jobs.grow_tiny --layers 6 --out {tmp_path / 'grown'}"
    # every run that made the 4-layer checkpoint, then the 4-layer checkpoint's own run
    assert [r["command"] for r in metrics["init_from"]] == [
        *(r["command"] for r in source["init_from"]),
        source["command"],
    ]
