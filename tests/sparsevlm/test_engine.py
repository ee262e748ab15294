"""VideoQAEngine: batched answers equal per-row answers, stats are filled, bad checkpoints are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm import SparseConfig
from sparsevlm.engine import VideoQAEngine, inspect_checkpoint
from sparsevlm.engine_types import CheckpointError, PromptError, PromptTooLong
from sparsevlm.prompt_text import CAPTION_PROMPT, build_prompt
from sparsevlm.tiny.inputs import normalize_frames
from sparsevlm.tiny.loading import load_tiny

Tiny = tuple[VideoLlavaForConditionalGeneration, PreTrainedTokenizerBase]
PROMPTS = [CAPTION_PROMPT, "What colour is the square?", "Is there a circle?"]


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    """The bundled tiny model when trained, else an untrained one (tests hold for both)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer, _ = load_tiny()
    return model, tokenizer


@pytest.fixture(scope="module")
def checkpoint(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-ckpt")
    model, tokenizer = tiny
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def segments(count: int, num_frames: int = 4, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_batched_answers_equal_answers_row_by_row(tiny: Tiny) -> None:
    engine = VideoQAEngine.from_model(*tiny, sparse="video-25")
    frames = segments(3)
    batch = engine.answer(frames, PROMPTS, max_new_tokens=4)
    for i in range(3):
        alone = engine.answer(frames[i : i + 1], PROMPTS[i : i + 1], max_new_tokens=4)[0]
        assert alone.text == batch[i].text
        assert alone.stats.visual_tokens_per_layer == batch[i].stats.visual_tokens_per_layer
        assert alone.stats.prefill_flops == pytest.approx(batch[i].stats.prefill_flops)
    assert len({a.latency_ms for a in batch}) == 1 and batch[0].latency_ms > 0  # one generate call


def test_answer_refuses_prompts_it_cannot_ask_and_never_truncates(tiny: Tiny) -> None:
    engine = VideoQAEngine.from_model(*tiny, sparse="dense")
    context = int(tiny[0].config.text_config.max_position_embeddings)
    too_many = context // engine.spec.tokens_per_frame + 1  # frames whose visual tokens alone overflow it
    with pytest.raises(PromptTooLong, match=rf"context of {context} tokens .* with {too_many} frames"):
        engine.answer(segments(1, num_frames=too_many), ["Is there a circle?"], max_new_tokens=4)
    with pytest.raises(PromptError, match="placeholder '<video>'"):
        engine.answer(segments(2), ["Is there a circle?", "Where is the <video>?"], max_new_tokens=4)
    with pytest.raises(PromptError, match="placeholder '<image>'"):
        engine.check_prompt("Is this an <image>?", 2, max_new_tokens=4)
    # cross-frame merging with original positions lowers no position: every frame still counts
    with pytest.raises(PromptTooLong, match=rf"with {too_many} frames"):
        VideoQAEngine.from_model(*tiny, sparse="video-xf-25").check_prompt("Is there a circle?", too_many, 4)
    # long-video mode (compact positions) merges down to what the context leaves: the same video fits
    VideoQAEngine.from_model(*tiny, sparse="video-long").check_prompt("Is there a circle?", too_many, 4)


def test_stats_follow_the_sparse_config(tiny: Tiny) -> None:
    engine = VideoQAEngine.from_model(*tiny, sparse=SparseConfig.preset("video-25"))
    answers = engine.answer(segments(2, num_frames=2), PROMPTS[:2], max_new_tokens=2)
    visual = 2 * engine.spec.tokens_per_frame
    for answer in answers:
        stats = answer.stats
        assert stats.visual_tokens_in == visual == 2 * 65
        assert stats.equivalent_tokens == pytest.approx(0.25 * visual, abs=0.02 * visual)
        assert 0 < stats.prefill_flops < stats.dense_prefill_flops
    assert engine.describe() == {
        "model_id": engine.model_id,
        "sparse_preset": "video-25",
        "sparse_config_json": SparseConfig.preset("video-25").to_json(),
    }


def test_a_call_under_another_config_uses_the_same_weights_and_restores_the_engines(tiny: Tiny) -> None:
    frames, prompts = segments(2, num_frames=2), PROMPTS[:2]
    reference = VideoQAEngine.from_model(*tiny, sparse="dense").answer(frames, prompts, max_new_tokens=3)
    engine = VideoQAEngine.from_model(*tiny, sparse="video-5")  # the same model object, patched to video-5
    before = engine.answer(frames, prompts, max_new_tokens=3)
    dense = engine.answer(frames, prompts, max_new_tokens=3, sparse=SparseConfig.preset("dense"))
    after = engine.answer(frames, prompts, max_new_tokens=3)
    for ref, answer in zip(reference, dense, strict=True):
        assert answer.text == ref.text  # the dense preset is the unpruned model
        assert answer.stats.visual_tokens_per_layer == ref.stats.visual_tokens_per_layer
        assert answer.stats.equivalent_tokens == answer.stats.visual_tokens_in  # nothing pruned
        assert answer.stats.prefill_flops == pytest.approx(answer.stats.dense_prefill_flops)
    for first, last in zip(before, after, strict=True):
        assert (last.text, last.stats.visual_tokens_per_layer) == (first.text, first.stats.visual_tokens_per_layer)
        assert last.stats.equivalent_tokens == pytest.approx(0.05 * last.stats.visual_tokens_in)  # video-5 again
    assert engine.describe()["sparse_preset"] == "video-5"


def test_prompt_and_pixels_match_the_tiny_training_inputs(tiny: Tiny) -> None:
    engine = VideoQAEngine.from_model(*tiny)
    frames = segments(1, num_frames=3)[0]
    assert engine.prompt("Why?", 3) == build_prompt("Why?", 3 * 65)
    assert torch.equal(engine.prepare(frames), normalize_frames(frames))
    with pytest.raises(ValueError, match=r"\[T, 64, 64, 3\]"):
        engine.prepare(np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="same frame count"):
        engine.answer([frames, frames[:2]], ["a", "b"])


def test_loads_a_safetensors_checkpoint_directory(tiny: Tiny, checkpoint: Path) -> None:
    spec = inspect_checkpoint(checkpoint)
    assert (spec.frame_size, spec.patch_size, spec.tokens_per_frame) == (64, 8, 65)
    loaded = VideoQAEngine.from_pretrained(checkpoint, "video-10")
    reference = VideoQAEngine.from_model(*tiny, sparse="video-10")
    frames = segments(2)
    got = [a.text for a in loaded.answer(frames, PROMPTS[:2], max_new_tokens=3)]
    assert got == [a.text for a in reference.answer(frames, PROMPTS[:2], max_new_tokens=3)]
    assert loaded.model_id == str(checkpoint) and loaded.sparse.name == "video-10"


def test_refuses_checkpoints_that_are_not_video_llava(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        inspect_checkpoint(tmp_path)
    LlamaConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="'llama' checkpoint, not Video-LLaVA"):
        VideoQAEngine.from_pretrained(tmp_path)


def test_refuses_pickled_weights(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors only"):
        VideoQAEngine.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "video_llava"


def test_a_segment_asked_several_prompts_is_normalised_once(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = VideoQAEngine.from_model(*tiny, sparse="video-25")
    first, second = segments(2)
    copies = engine.answer([first.copy(), first.copy(), second], PROMPTS, max_new_tokens=4)  # one array per prompt
    prepared: list[int] = []
    original = engine.prepare
    monkeypatch.setattr(
        engine, "prepare", lambda frames, out=None: prepared.append(id(frames)) or original(frames, out)
    )
    shared = engine.answer([first, first, second], PROMPTS, max_new_tokens=4)  # as the predictor passes them
    assert prepared == [id(first), id(second)]
    assert [a.text for a in shared] == [a.text for a in copies]
    for got, want in zip(shared, copies, strict=True):
        assert got.stats.visual_tokens_per_layer == want.stats.visual_tokens_per_layer
        assert all(torch.equal(got.stats.scores[k], want.stats.scores[k]) for k in want.stats.scores)
