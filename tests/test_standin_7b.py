"""The engine and the caption job on a stand-in of the Video-LLaVA-7B-hf checkpoint (tests/standin_7b.py).

The stand-in has the real checkpoint's config values, file layout (sharded safetensors under the hub's legacy
key names) and tokenizer kind, 32 text layers at width 64 and random weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from safetensors import safe_open
from transformers import VideoLlavaForConditionalGeneration

from jobs import caption
from sparsevlm.config import SparseConfig
from sparsevlm.engine import VideoQAEngine, resolve_dtype
from sparsevlm.engine_types import PromptTooLong
from sparsevlm.preprocess import preprocess_frames
from sparsevlm.prompt import encode_text, left_pad
from tests.standin_7b import SHARDS, legacy_name

QUESTIONS = ["Why is this video funny?", "Describe the video."]
VISUAL = 8 * 257  # 8 frames x (16 x 16 patches + CLS)


@pytest.fixture(scope="module")
def engine(standin_7b: Path) -> VideoQAEngine:
    torch.set_num_threads(1)
    return VideoQAEngine.from_pretrained(standin_7b, "video-25")


def frames(count: int, num_frames: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (num_frames, 224, 224, 3), dtype=np.uint8) for _ in range(count)]


def test_the_hub_layout_loads_with_every_weight(standin_7b: Path, engine: VideoQAEngine) -> None:
    index = json.loads((standin_7b / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == SHARDS
    prefixes = {name.split(".")[0] for name in index["weight_map"]}
    assert prefixes == {"language_model", "video_tower", "image_tower", "multi_modal_projector"}
    loaded = engine.model.state_dict()
    assert len(loaded) == len(index["weight_map"])
    for file in files:  # every stored tensor arrived under today's name (nothing was left randomly initialised)
        with safe_open(str(standin_7b / file), framework="pt") as stored:
            stored_names = set(stored.keys())
            for name, tensor in loaded.items():
                if legacy_name(name) in stored_names:
                    assert torch.equal(stored.get_tensor(legacy_name(name)).float(), tensor), name
    config = engine.model.config
    assert (config.image_token_id, config.video_token_id, config.text_config.vocab_size) == (32000, 32001, 32064)
    assert (engine.spec.frame_size, engine.spec.patch_size, engine.spec.tokens_per_frame) == (224, 14, 257)
    assert config.text_config.num_hidden_layers == 32 and config.text_config.max_position_embeddings == 4096


def test_the_library_api_sees_2056_visual_tokens_per_row(engine: VideoQAEngine) -> None:
    answers = engine.answer(frames(2), QUESTIONS, max_new_tokens=2)
    for answer in answers:
        stats = answer.stats
        assert stats.visual_tokens_in == VISUAL
        assert len(stats.visual_tokens_per_layer) == 32 and stats.visual_tokens_per_layer[0] == VISUAL
        assert stats.equivalent_tokens == pytest.approx(0.25 * VISUAL, abs=0.02 * VISUAL)


def test_patched_dense_equals_unpatched(standin_7b: Path) -> None:
    torch.set_num_threads(1)
    dense = VideoQAEngine.from_pretrained(standin_7b, "dense")
    plain = VideoLlavaForConditionalGeneration.from_pretrained(standin_7b, dtype=torch.float32).eval()
    segment = frames(1, seed=3)[0]
    ids = torch.tensor([dense.prompt_ids(QUESTIONS[0], 8)])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values_videos": dense.prepare(segment)[None],
    }
    settings = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        got = dense.model.generate(**inputs, **settings)
        want = plain.generate(**inputs, **settings)
    assert torch.equal(got.sequences, want.sequences)
    for step, (logits, reference) in enumerate(zip(got.logits, want.logits, strict=True)):
        assert torch.equal(logits, reference), step


def test_the_readme_recipe_builds_what_the_engine_sends(engine: VideoQAEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict[str, torch.Tensor] = {}

    class Sent(Exception):
        pass

    def capture(**kwargs: torch.Tensor) -> torch.Tensor:
        sent.update(kwargs)
        raise Sent

    monkeypatch.setattr(engine.model, "generate", capture)
    videos = frames(2, seed=5)
    with pytest.raises(Sent):
        engine.answer(videos, QUESTIONS, max_new_tokens=1)
    # the README's steps 2-4, with the model's own config and tokenizer
    tokenizer, model = engine.tokenizer, engine.model
    pixel_values_videos = preprocess_frames(np.stack(videos), 224)
    rows = [encode_text(tokenizer, q).ids(model.config.video_token_id, 8 * 257) for q in QUESTIONS]
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    assert torch.equal(sent["input_ids"], input_ids) and torch.equal(sent["attention_mask"], attention_mask)
    assert torch.equal(sent["pixel_values_videos"], pixel_values_videos)
    assert tokenizer.pad_token_id == 32002 and int((input_ids == 32001).sum()) == 2 * VISUAL


def test_the_prompt_check_counts_every_frame_on_the_7b_layout(standin_7b: Path, engine: VideoQAEngine) -> None:
    engine.check_prompt(QUESTIONS[0], 8, max_new_tokens=64)  # 2,056 + 19 text + 64 fits 4,096
    with pytest.raises(PromptTooLong, match=r"with 16 frames it is 4112 visual \+ 19 text tokens"):
        engine.check_prompt(QUESTIONS[0], 16, max_new_tokens=1)
    long = VideoQAEngine.from_model(engine.model, engine.tokenizer, "video-long")
    long.check_prompt(QUESTIONS[0], 32, max_new_tokens=64)  # merging is forced down to what the context leaves
    with pytest.raises(PromptTooLong, match="with 32 frames it is 8224 visual"):  # the shadow sample's dense call
        long.check_prompt(QUESTIONS[0], 32, max_new_tokens=64, sparse=SparseConfig.preset("dense"))
    with pytest.raises(PromptTooLong, match="shorten it by at least 1 tokens"):  # not even one frame fits
        long.check_prompt(QUESTIONS[0], 32, max_new_tokens=4096 - 257 - 19 + 1)


def test_video_long_answers_32_frames_inside_the_context(standin_7b: Path, engine: VideoQAEngine) -> None:
    long = VideoQAEngine.from_model(engine.model, engine.tokenizer, "video-long")
    answer = long.answer(frames(1, num_frames=32, seed=9), QUESTIONS[:1], max_new_tokens=2)[0]
    assert answer.stats.visual_tokens_in == 32 * 257
    assert answer.stats.seq_len_per_layer[0] + 2 <= 4096  # compact positions: every one below the context


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32"])
def test_loads_in_each_dtype(standin_7b: Path, name: str) -> None:
    torch.set_num_threads(1)
    engine = VideoQAEngine.from_pretrained(standin_7b, "video-25", dtype=name)
    dtypes = {p.dtype for p in engine.model.parameters()}
    assert dtypes == {getattr(torch, name)}
    assert {p.device.type for p in engine.model.parameters()} == {"cpu"}
    answer = engine.answer(frames(1, num_frames=1), QUESTIONS[:1], max_new_tokens=2)[0]
    assert answer.stats.visual_tokens_in == 257


def test_weights_load_straight_onto_the_device(standin_7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the call transformers receives is checked instead (device_map, not a later .to())."""
    received: dict[str, object] = {}

    class Stop(Exception):
        pass

    def loader(name: str, **kwargs: object) -> None:
        received.update(kwargs, name=name)
        raise Stop

    monkeypatch.setattr(VideoLlavaForConditionalGeneration, "from_pretrained", loader)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(Stop):
        VideoQAEngine.from_pretrained(standin_7b, device="cuda:1")
    assert received["device_map"] == {"": "cuda:1"} and received["dtype"] == torch.float16
    assert received["use_safetensors"] is True and received["trust_remote_code"] is False


def test_dtype_auto_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16  # native bf16 (A10G, L4, A100, H100)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda:1") == torch.float16  # emulated only (T4, V100): fp16
    assert resolve_dtype("float16", "cpu") == torch.float16 and resolve_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype must be one of auto, bfloat16, float16, float32, got 'fp16'"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match=r"got torch\.int8"):
        resolve_dtype(torch.int8, "cpu")


@pytest.mark.slow  # about 40 s: a Ray run whose model actor loads the stand-in and prefills 2 x 2,076 tokens
@pytest.mark.usefixtures("pipeline_ray")
def test_the_caption_job_runs_on_the_standin(assets: Path, standin_7b: Path, tmp_path: Path) -> None:
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(assets / "gradio_video_sample.webm", videos / "clip.webm")
    out = tmp_path / "out"
    argv = ["--input", str(videos), "--output", str(out), "--model", str(standin_7b), "--segment-seconds", "0"]
    summary = caption.main([*argv, "--max-new-tokens", "2", "--question", QUESTIONS[0], "--dtype", "float32"])
    assert (summary["processed"], summary["failed"]) == (1, 0)
    rows = ds.dataset(out, format="parquet").to_table().to_pylist()
    assert sorted(r["task"] for r in rows) == ["caption", "qa"]
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["visual_tokens_in"] for r in rows} == {VISUAL}
    assert {r["model_id"] for r in rows} == {str(standin_7b)}
