"""The prompt ids the engine sends: the original Video-LLaVA's, pinned on the real LLaMA vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sparsevlm import SparseConfig
from sparsevlm.engine import VideoQAEngine
from sparsevlm.prompt import encode_text, left_pad, visual_positions
from sparsevlm.prompt_text import PROMPT_HEAD, build_prompt
from sparsevlm.tiny.loading import load_tiny
from sparsevlm.tiny.video_qa import make_sample
from tests.standin_7b import write_tokenizer

VIDEO = 32001
QUESTION = "Why is this video funny?"
# What the original code (tokenizer_X_token: each piece around the placeholder tokenized on its own, the second
# without its <s>) sends with LLaMA's vocabulary: "▁" closes "USER: " and opens "\n...".
HEAD = [1, 3148, 1001, 29901, 29871]  # <s> ▁US ER : ▁
TAIL = [29871, 13, 11008, 338, 445, 4863, 2090, 1460, 29973, 319, 1799, 9047, 13566, 29901]  # ▁ \n Why ... :
# transformers' Video-LLaVA integration test pins the hub processor's ids for the same prompt with the video
# tokens filtered out: one ▁ only, i.e. one pass of the legacy=False tokenizer (no ▁ after <video>).
HUB_PROCESSOR_WITHOUT_VIDEO = [1, 3148, 1001, 29901, 29871, 13, 11008, 338, 445, 4863, 2090, 1460, 29973]


@pytest.mark.parametrize("legacy", [False, True, None], ids=["legacy-false", "legacy-true", "no-flag"])
def test_prompt_ids_are_the_original_ids_whatever_the_legacy_flag(tmp_path: Path, legacy: bool | None) -> None:
    write_tokenizer(tmp_path, legacy)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert tokenizer("Hello world")["input_ids"] == [1, 15043, 3186]  # LLaMA's reference encoding
    text = encode_text(tokenizer, QUESTION)
    assert (list(text.head), list(text.tail)) == (HEAD, TAIL)
    assert text.ids(VIDEO, 3) == [*HEAD, VIDEO, VIDEO, VIDEO, *TAIL]
    one_pass = tokenizer(build_prompt(QUESTION, 3))["input_ids"]
    if legacy:  # legacy=True prepends ▁ to every piece, as SentencePiece did for the original
        assert one_pass == text.ids(VIDEO, 3)
    else:  # 5.23's default drops the ▁ after <video>: what the hub processor sends, not what was trained
        assert one_pass == [*HEAD, VIDEO, VIDEO, VIDEO, *TAIL[1:]]
        assert [i for i in one_pass if i != VIDEO][: len(HUB_PROCESSOR_WITHOUT_VIDEO)] == HUB_PROCESSOR_WITHOUT_VIDEO


def test_the_tiny_model_gets_the_ids_it_was_trained_on() -> None:
    """Its byte-level tokenizer splits at special tokens anyway: per-piece ids equal one-pass ids."""
    model, tokenizer, _ = load_tiny()
    engine = VideoQAEngine.from_model(model, tokenizer)
    questions = ["Describe the video.", "odd  spacing\there ?"]
    questions += [qa.question for i in range(5) for qa in make_sample("test", i).questions]
    for question in questions:
        assert engine.prompt_ids(question, 2) == tokenizer(engine.prompt(question, 2))["input_ids"]
    assert encode_text(tokenizer, "x").head == tuple(tokenizer(PROMPT_HEAD)["input_ids"])


def test_visual_positions_count_every_frame_entering_the_llm() -> None:
    per_frame = 257
    assert visual_positions(SparseConfig.preset("dense"), 8, per_frame) == 2056
    # long-video mode: merging is forced down to what the context leaves, one frame at most
    assert visual_positions(SparseConfig.preset("video-long"), 32, per_frame) == 257
    # cross-frame merging with original positions lowers no position: every frame counts
    assert visual_positions(SparseConfig.preset("video-xf-25"), 32, per_frame) == 32 * 257
    # pooling before the LLM shrinks the count only when positions are renumbered
    pooled = SparseConfig(spatial_pool=0.1, recycle_ratio=0.0)
    assert visual_positions(pooled, 8, per_frame) == 2056
    assert visual_positions(SparseConfig(spatial_pool=0.1, recycle_ratio=0.0, positions="compact"), 8, per_frame) == 208


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
