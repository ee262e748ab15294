"""The tiny Video-LLaVA: tokenizer, prompt layout, offline save/load, and a few training steps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.preprocess import CLIP_MEAN, CLIP_STD
from sparsevlm.prompt_text import build_prompt
from sparsevlm.tiny.batches import IGNORE, SequenceBuilder, TrainBatch, collate
from sparsevlm.tiny.heads import PatchHeads
from sparsevlm.tiny.inputs import encode_prompts, normalize_frames
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import answer_token_ids, build_tokenizer
from sparsevlm.tiny.train import BatchStream, TrainConfig, main, make_batch, train_step
from sparsevlm.tiny.video_qa import ANSWER_WORDS, COLOURS, VideoSample, make_sample
from tests.tiny.steps import train_steps

# 48 px frames, 16 px patches: 9 patches + CLS = 10 tokens per frame, 40 for a 4-frame video.
SMALL = TinyModelConfig(
    image_size=48,
    patch_size=16,
    num_frames=4,
    vision_hidden=32,
    vision_heads=2,
    text_hidden=32,
    text_intermediate=64,
    text_layers=2,
    text_heads=4,
    text_kv_heads=2,
    max_positions=512,
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return build_tokenizer()


@pytest.fixture(scope="module")
def small_model(tokenizer: PreTrainedTokenizerBase) -> VideoLlavaForConditionalGeneration:
    torch.manual_seed(0)
    return build_model(SMALL, tokenizer)


def small_sample(index: int = 0) -> VideoSample:
    return make_sample("train", index, num_frames=SMALL.num_frames, size=SMALL.image_size, patch=SMALL.patch_size)


def test_tokenizer_special_tokens_and_single_token_answers(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer.video_token == "<video>" and tokenizer.image_token == "<image>"
    assert tokenizer.video_token_id == tokenizer.convert_tokens_to_ids("<video>")
    ids = answer_token_ids(tokenizer)
    assert set(ids) == set(ANSWER_WORDS) and len(set(ids.values())) == len(ANSWER_WORDS)
    for word, token in ids.items():
        assert tokenizer.encode(f" {word}", add_special_tokens=False) == [token]
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id


def test_normalize_frames_is_clip_normalisation() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 4, 8, 8, 3), dtype=np.uint8)
    x = normalize_frames(frames)
    assert x.shape == (2, 4, 3, 8, 8) and x.dtype == torch.float32
    expected = (frames[1, 2, 3, 4, 0] / 255 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert x[1, 2, 0, 3, 4].item() == pytest.approx(expected, abs=1e-6)


def test_prompt_video_tokens_match_vision_tokens(
    tokenizer: PreTrainedTokenizerBase, small_model: VideoLlavaForConditionalGeneration
) -> None:
    sample = small_sample()
    enc = encode_prompts(tokenizer, ["how many objects are there?"], [sample.frames], SMALL.patch_size)
    prompt_tokens = int((enc["input_ids"] == tokenizer.video_token_id).sum())
    with torch.no_grad():
        features = small_model.model.get_video_features(enc["pixel_values_videos"], vision_feature_layer=-1)
    assert prompt_tokens == features.pooler_output[..., 0].numel() == SMALL.num_frames * (1 + 3 * 3)
    assert build_prompt("q?", 2) == "USER: <video><video>\nq? ASSISTANT:"
    with torch.no_grad():
        logits = small_model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(tokenizer))


def test_training_sequence_starts_with_the_inference_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    sample = small_sample(1)
    num_video = SMALL.num_frames * 10
    ids, labels = SequenceBuilder(tokenizer).build(list(sample.questions), num_video)
    prompt = encode_prompts(tokenizer, [sample.questions[0].question], [sample.frames], SMALL.patch_size)
    first = prompt["input_ids"][0].tolist()
    assert ids[: len(first)] == first
    answers = [tokenizer.encode(f" {qa.answer}", add_special_tokens=False)[0] for qa in sample.questions]
    supervised = [(i, y) for i, y in enumerate(labels) if y != IGNORE]
    assert [y for _, y in supervised][::2] == answers  # each answer, then its </s>
    assert all(ids[i + 1] == y for i, y in supervised)
    assert supervised[0][0] == len(first) - 1


def test_save_and_load_offline_round_trip(
    tokenizer: PreTrainedTokenizerBase,
    small_model: VideoLlavaForConditionalGeneration,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    sample = small_sample(2)
    question = sample.questions[0].question
    enc = encode_prompts(tokenizer, [question], [sample.frames], SMALL.patch_size)
    assert torch.equal(
        encode_prompts(loaded_tok, [question], [sample.frames], SMALL.patch_size)["input_ids"], enc["input_ids"]
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, small_model(**enc).logits)
    assert loaded.config.text_config.num_key_value_heads < loaded.config.text_config.num_attention_heads
    assert loaded.config.text_config._attn_implementation == "sdpa"


def test_order_targets_mark_the_first_and_the_newest_object(tokenizer: PreTrainedTokenizerBase) -> None:
    # A video whose objects appear at different frames, as "first"/"last" questions need.
    sample = next(
        s for s in (make_sample("train", i) for i in range(200)) if len({o.first_frame for o in s.objects}) >= 2
    )
    batch = collate(SequenceBuilder(tokenizer), [sample], np.random.default_rng(0))
    colour = batch.patch_colour[0]  # [T, P]
    codes = {1 + COLOURS.index(o.colour): o.first_frame for o in sample.objects}
    earliest = min(codes.values())
    for t in range(colour.shape[0]):
        seen = [f for f in codes.values() if f <= t]
        for code, first in codes.items():
            on = colour[t] == code
            if not on.any():
                continue
            assert set(batch.patch_earliest[0, t][on].tolist()) == {int(first == earliest)}
            assert set(batch.patch_newest[0, t][on].tolist()) == {int(first == max(seen))}
        background = colour[t] == 0
        assert (batch.patch_earliest[0, t][background] == IGNORE).all()
        assert (batch.patch_newest[0, t][background] == IGNORE).all()


def test_a_few_training_steps_reduce_the_loss(tokenizer: PreTrainedTokenizerBase) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL, tokenizer).train()
    heads = PatchHeads(SMALL.text_hidden, tokenizer)
    cfg = TrainConfig(motion_layer=1, bf16=False)
    batch = collate(SequenceBuilder(tokenizer), [small_sample(i) for i in range(2)], np.random.default_rng(0))
    history = train_steps(model, heads, batch, cfg)
    assert set(history[0]) == {
        "answer",
        "colour",
        "shape",
        "motion",
        "new",
        "earliest",
        "newest",
        "naming",
        "striped",
        "total",
    }
    assert history[-1]["total"] < 0.9 * history[0]["total"]
    assert history[-1]["answer"] < history[0]["answer"]


def test_order_weight_zero_trains_without_the_order_heads(tokenizer: PreTrainedTokenizerBase) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL, tokenizer)
    heads = PatchHeads(SMALL.text_hidden, tokenizer)
    batch = collate(SequenceBuilder(tokenizer), [small_sample(i) for i in range(2)], np.random.default_rng(0))
    losses = train_step(model, heads, batch, TrainConfig(motion_layer=1, bf16=False, aux_weight=0.5, order_weight=0))
    rest = losses["colour"] + losses["shape"] + losses["motion"] + losses["new"] + losses["striped"]
    torch.testing.assert_close(losses["total"], losses["answer"] + 0.5 * rest)
    assert losses["earliest"] > 0 and losses["newest"] > 0  # still measured, just not trained
    assert losses["naming"] > 0  # measured; trained only with naming_weight > 0


def test_naming_weight_adds_the_naming_loss_and_training_lowers_it(tokenizer: PreTrainedTokenizerBase) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL, tokenizer).train()
    heads = PatchHeads(SMALL.text_hidden, tokenizer)
    batch = collate(SequenceBuilder(tokenizer), [small_sample(i) for i in range(2)], np.random.default_rng(0))
    plain = TrainConfig(motion_layer=1, bf16=False)
    named = TrainConfig(motion_layer=1, bf16=False, naming_weight=2.0)
    with torch.no_grad():
        base, added = train_step(model, heads, batch, plain), train_step(model, heads, batch, named)
    torch.testing.assert_close(added["total"], base["total"] + 2.0 * base["naming"])
    optimizer = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=1e-2)
    history = []
    for _ in range(6):  # its gradient reaches the projector and the embeddings through the model
        losses = train_step(model, heads, batch, named)
        optimizer.zero_grad()
        losses["naming"].backward()
        optimizer.step()
        history.append(losses["naming"].item())
    assert history[-1] < 0.8 * history[0]


@pytest.mark.slow
def test_cli_main_writes_a_loadable_checkpoint_without_training_heads(tmp_path: Path) -> None:
    cfg = TrainConfig(
        out=str(tmp_path), minutes=0, max_steps=2, batch_size=2, num_frames=4, warm_frames=4,
        val_videos=1, test_videos=1, eval_every_minutes=100, threads=1,
    )  # fmt: skip
    metrics = main(cfg)
    assert metrics["steps"] == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["test_accuracy"]) >= {"shape", "count", "all"}
    assert saved["command"].startswith("python -m jobs.train_tiny")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "colour" in k or "motion" in k]  # noqa: SIM118
    assert VideoLlavaForConditionalGeneration.from_pretrained(tmp_path).config.video_token_id == 5
    assert AutoTokenizer.from_pretrained(tmp_path).video_token == "<video>"


@pytest.mark.slow
def test_a_run_continues_from_a_checkpoint_on_new_videos(tmp_path: Path) -> None:
    base = TrainConfig(
        out=str(tmp_path / "a"), minutes=0, max_steps=1, batch_size=2, num_frames=4, warm_frames=4,
        val_videos=1, test_videos=1, eval_every_minutes=100, threads=1,
    )  # fmt: skip
    main(base)
    continued = dataclasses.replace(base, out=str(tmp_path / "b"), init=str(tmp_path / "a"), first_video=1000, lr=0.0)
    metrics = main(continued)
    assert metrics["train_videos_seen"] == 2
    assert [run["steps"] for run in metrics["init_from"]] == [1]  # the run it continued
    before = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    after = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the weights it started from


def test_continuing_from_a_different_model_is_refused(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    build_model(dataclasses.replace(TinyModelConfig(), text_hidden=64, text_heads=4), tokenizer).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="is not the tiny model's"):
        main(TrainConfig(out=str(tmp_path / "out"), init=str(tmp_path), max_steps=1, minutes=0))


def test_caption_turn_and_text_targets(tokenizer: PreTrainedTokenizerBase) -> None:
    sample = small_sample(3)
    builder = SequenceBuilder(tokenizer)
    num_video = SMALL.num_frames * 10
    qas = list(sample.questions)
    plain_ids, plain_labels = builder.build(qas, num_video)
    ids, labels = builder.build(qas, num_video, sample.caption)
    assert ids[: len(plain_ids)] == plain_ids and labels[: len(plain_labels)] == plain_labels
    assert tokenizer.decode(ids[len(plain_ids) :]) == f"USER: describe the video. ASSISTANT: {sample.caption}</s>"
    assert all(y == IGNORE for y in labels[len(plain_ids) :])  # the caption is text, not an answer
    text = builder.text_labels(ids, labels)
    video = tokenizer.video_token_id
    targets = [i for i, y in enumerate(text) if y != IGNORE]
    assert all(ids[i + 1] == text[i] != video for i in targets)
    assert not [i for i in targets if labels[i] != IGNORE]  # answers keep their own loss
    # every other next token is a target: the template, every question and the whole caption
    assert {i for i in range(len(ids) - 1) if ids[i + 1] != video and labels[i] == IGNORE} == set(targets)
    question = tokenizer.encode(f" {qas[0].question}", add_special_tokens=False)[-3:]
    assert any(ids[i + 1 : i + 4] == question for i in targets)
    batch = collate(builder, [sample, small_sample(4)], np.random.default_rng(0), caption=True)
    assert batch.text_labels.shape == batch.labels.shape
    assert ((batch.text_labels != IGNORE) & (batch.labels != IGNORE)).sum() == 0
    assert (batch.text_labels[batch.input_ids == builder.pad_id] == IGNORE).all()


def test_text_loss_weight_adds_the_text_loss(tokenizer: PreTrainedTokenizerBase) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL, tokenizer)
    heads = PatchHeads(SMALL.text_hidden, tokenizer)
    batch = collate(
        SequenceBuilder(tokenizer), [small_sample(i) for i in range(2)], np.random.default_rng(0), caption=True
    )
    plain = train_step(model, heads, batch, TrainConfig(motion_layer=1, bf16=False))
    assert "text" not in plain
    weighted = train_step(model, heads, batch, TrainConfig(motion_layer=1, bf16=False, text_loss_weight=0.5))
    assert weighted["text"] > 0
    torch.testing.assert_close(weighted["total"], plain["total"] + 0.5 * weighted["text"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = TrainConfig(motion_layer=1, bf16=False, text_loss_weight=1.0)
    first = None
    for _ in range(6):
        losses = train_step(model, heads, batch, cfg)
        first = losses["text"].item() if first is None else first
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
    assert losses["text"].item() < 0.9 * first


def test_text_loss_weight_and_motion_layer_are_checked() -> None:
    with pytest.raises(ValueError, match="--text-loss-weight must be >= 0"):
        TrainConfig(text_loss_weight=-1.0)
    with pytest.raises(ValueError, match=r"--motion-layer must be in \[1, --text-layers=4\]"):
        TrainConfig(motion_layer=5)
    assert TrainConfig(motion_layer=5, text_layers=16).text_layers == 16


def test_the_training_command_line_names_a_bad_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.train_tiny import parse_args

    cfg = parse_args(["--max-steps", "3", "--minutes", "0", "--hard-fraction", "0.5", "--warm-fraction", "0"])
    assert isinstance(cfg, TrainConfig) and cfg.max_steps == 3 and cfg.hard_fraction == 0.5
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--hard-fraction", "2"])
    assert exit_info.value.code == 2
    assert "--hard-fraction must be in [0, 1], got 2.0" in capsys.readouterr().err


def _assert_same_batch(a: TrainBatch, b: TrainBatch) -> None:
    for field in dataclasses.fields(TrainBatch):
        assert torch.equal(getattr(a, field.name), getattr(b, field.name)), field.name


@pytest.mark.slow  # 4 s here (2 cores): loader processes
def test_batches_built_in_loader_processes_are_the_ones_built_inline(tokenizer: PreTrainedTokenizerBase) -> None:
    cfg = TrainConfig(batch_size=2, hard_fraction=0.5, text_loss_weight=1.0, seed=3, warm_fraction=0)
    builder = SequenceBuilder(tokenizer)
    inline = BatchStream(cfg, builder)
    workers = BatchStream(dataclasses.replace(cfg, loader_workers=1), builder)
    try:
        # 100, 102, then a change of frame count (what was queued is dropped), then on from 104.
        for first, frames in [(100, 6), (102, 6), (104, 8), (106, 8)]:
            got = workers.get(first, frames)
            assert got.pixel_values_videos.shape[1] == frames
            _assert_same_batch(got, inline.get(first, frames))
    finally:
        workers.close()
    # the batch depends on the seed and its first video only, not on what was built before it
    _assert_same_batch(make_batch(builder, cfg, 104, 8), inline.get(104, 8))
    assert not torch.equal(make_batch(builder, cfg, 106, 8).input_ids, make_batch(builder, cfg, 104, 8).input_ids)


def test_device_and_loader_workers_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N, got 'gpu0'"):
        TrainConfig(device="gpu0")
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N, got 'meta'"):
        TrainConfig(device="meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda: torch .* sees no CUDA GPU here; train with --device cpu"):
        TrainConfig(device="cuda")
    with pytest.raises(ValueError, match="--loader-workers must be >= 0, got -1"):
        TrainConfig(loader_workers=-1)
    with pytest.raises(ValueError, match=r"--hard-fraction 0\.5 needs videos of at least 6 frames"):
        TrainConfig(hard_fraction=0.5, warm_frames=4, warm_fraction=0.5)
    assert TrainConfig(hard_fraction=0.5, warm_frames=4, warm_fraction=0).hard_fraction == 0.5
    batch = collate(SequenceBuilder(build_tokenizer()), [small_sample(0)], np.random.default_rng(0))
    _assert_same_batch(batch.to(torch.device("cpu")), batch)
