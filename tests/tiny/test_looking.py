"""The looking loss reads the attention the model runs: checked against transformers' eager attention weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsevlm.tiny.batches import SequenceBuilder, collate, pick_questions
from sparsevlm.tiny.hard_qa import make_hard_sample, make_task_sample
from sparsevlm.tiny.heads import PatchHeads
from sparsevlm.tiny.looking import looking_losses, ranking_losses
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import build_tokenizer
from sparsevlm.tiny.train import TrainConfig
from tests.tiny.steps import train_steps

SMALL = TinyModelConfig(num_frames=6, text_layers=3)


def test_the_loss_is_minus_log_the_eager_attention_mass_on_the_evidence() -> None:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(SMALL, tokenizer)
    model.set_attn_implementation("eager")
    samples = [make_hard_sample("train", i, num_frames=6) for i in range(3)]  # ragged: 3 rows, padded
    batch = collate(SequenceBuilder(tokenizer), samples, np.random.default_rng(0))
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids,
            pixel_values_videos=batch.pixel_values_videos,
            output_hidden_states=True,
            output_attentions=True,
        )
    losses = looking_losses(model.model.language_model, out.hidden_states, [1, 2], batch)
    for layer, loss in zip([1, 2], losses, strict=True):
        probs = out.attentions[layer].mean(1)  # [B, L, L], mean over heads
        masses = []
        for b in range(len(samples)):
            for q, pos in enumerate(batch.answer_positions[b].tolist()):
                tokens = batch.answer_evidence[b, q].nonzero().flatten() + batch.visual_start[b]
                if pos >= 0 and len(tokens):
                    masses.append(float(probs[b, pos, tokens].sum()))
        assert len(masses) >= 6
        assert float(loss) == pytest.approx(-np.mean(np.log(np.asarray(masses) + 1e-6)), rel=1e-4)


def test_the_ranking_loss_is_minus_log_the_evidence_share_of_each_prompt_tokens_eager_attention_on_the_video() -> None:
    torch.manual_seed(1)
    tokenizer = build_tokenizer()
    model = build_model(SMALL, tokenizer)
    model.set_attn_implementation("eager")
    samples = [make_hard_sample("train", i, num_frames=6) for i in range(3)]
    batch = collate(SequenceBuilder(tokenizer), samples, np.random.default_rng(2))
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids,
            pixel_values_videos=batch.pixel_values_videos,
            output_hidden_states=True,
            output_attentions=True,
        )
    (loss,) = ranking_losses(model.model.language_model, out.hidden_states, [2], batch)
    probs = out.attentions[2].mean(1)  # [B, L, L]
    video = batch.input_ids == model.config.video_token_id  # [B, L]
    masses = []
    for b in range(len(samples)):
        for pos, q in zip(batch.prompt_positions[b].tolist(), batch.prompt_question[b].tolist(), strict=True):
            tokens = batch.answer_evidence[b, q].nonzero().flatten() + batch.visual_start[b]
            if pos >= 0 and len(tokens):
                masses.append(float(probs[b, pos, tokens].sum() / probs[b, pos, video[b]].sum()))
    assert len(masses) >= 30
    assert float(loss) == pytest.approx(-np.mean(np.log(np.asarray(masses) + 1e-6)), rel=1e-4)


def test_prompt_positions_run_from_each_questions_first_word_to_its_answer_position() -> None:
    tokenizer = build_tokenizer()
    builder = SequenceBuilder(tokenizer)
    rng = np.random.default_rng(3)
    samples = [make_task_sample(kind, "train", i, num_frames=6) for i, kind in enumerate(["hard", "easy"] * 2)]
    asked = [pick_questions(rng, s, 2) for s in samples]
    for qas in asked:
        ids, labels = builder.build(qas, 6 * 65)
        spans = builder.prompt_positions(qas, labels)
        texts = [tokenizer.decode([ids[i] for i in span]).strip() for span in spans]
        assert texts == [f"{qa.question} ASSISTANT:" for qa in qas]
        assert [span[-1] for span in spans] == builder.answer_positions(labels)
    batch = collate(builder, samples, np.random.default_rng(3))
    for b in range(len(samples)):
        valid = batch.prompt_positions[b] >= 0
        assert valid.sum() > 0
        assert (batch.input_ids[b, batch.prompt_positions[b][valid]] != builder.video_id).all()
        assert int(batch.prompt_question[b][valid].max()) < int((batch.answer_positions[b] >= 0).sum())


def test_answer_positions_predict_the_answer_words() -> None:
    tokenizer = build_tokenizer()
    builder = SequenceBuilder(tokenizer)
    samples = [make_hard_sample("train", i, num_frames=6) for i in range(2)]
    batch = collate(builder, samples, np.random.default_rng(1))
    for b in range(2):
        for q, pos in enumerate(batch.answer_positions[b].tolist()):
            if pos >= 0:
                word = tokenizer.decode([int(batch.labels[b, pos])]).strip()
                assert word in {"yes", "no", "one", "two", "three", "left", "right", "up", "down"}
                assert batch.answer_evidence[b, q].sum() <= 60


@pytest.mark.slow  # 13-16 s here (2 cores): 8 training steps with the looking loss
def test_training_with_the_looking_loss_lowers_it() -> None:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(SMALL, tokenizer).train()
    heads = PatchHeads(SMALL.text_hidden, tokenizer)
    batch = collate(
        SequenceBuilder(tokenizer),
        [make_hard_sample("train", i, num_frames=6) for i in range(2)],
        np.random.default_rng(0),
    )
    cfg = TrainConfig(
        motion_layer=1,
        bf16=False,
        text_layers=3,
        look_weight=1.0,
        look_layers="1,2",
        rank_weight=1.0,
        rank_layers="0,2",
    )
    steps = train_steps(model, heads, batch, cfg)
    looks = [losses["look"] for losses in steps]
    ranks = [losses["rank"] for losses in steps]
    assert looks[-1] < 0.8 * looks[0]
    assert ranks[-1] < 0.8 * ranks[0]
    with pytest.raises(ValueError, match="--look-layers"):
        TrainConfig(text_layers=3, look_layers="1,5")
    with pytest.raises(ValueError, match="--rank-layers"):
        TrainConfig(text_layers=3, rank_layers="x")
