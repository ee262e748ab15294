"""Checkpoints written during training: complete at every save, continued with their provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

from sparsevlm.tiny import saving, train
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.saving import init_provenance, save_checkpoint
from sparsevlm.tiny.tokenizer import build_tokenizer


def test_save_checkpoint_replaces_every_file_and_copies_the_curve(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    small = TinyModelConfig(vision_hidden=32, vision_heads=2, vision_layers=1, text_hidden=32,
                            text_intermediate=64, text_layers=1, text_heads=4, text_kv_heads=2)  # fmt: skip
    curve = tmp_path / "curve.jsonl"
    curve.write_text('{"step": 1}\n')
    out = tmp_path / "ckpt"
    for step in (1, 2):
        torch.manual_seed(step)
        model = build_model(small, tokenizer)
        save_checkpoint(model, tokenizer, out, {"steps": step, "command": f"run {step}", "cpu_time_s": 3.0}, curve)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "curve.jsonl"]  # no staging directory left
    loaded = VideoLlavaForConditionalGeneration.from_pretrained(out)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())  # the last save
    assert AutoTokenizer.from_pretrained(out).video_token == "<video>"
    assert (out / "curve.jsonl").read_text() == curve.read_text()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert init_provenance(out) == [{"command": "run 2", "steps": 2, "cpu_time_s": 3.0}]
    assert init_provenance("") == [] and init_provenance(tmp_path) == []


@pytest.mark.slow
def test_training_saves_at_every_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saves: list[tuple[bool, int]] = []

    def recording(*args: object, **kwargs: object) -> None:
        metrics = args[3]
        assert isinstance(metrics, dict)
        saves.append((metrics["final"], metrics["steps"]))
        saving.save_checkpoint(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "save_checkpoint", recording)
    cfg = train.TrainConfig(
        out=str(tmp_path), minutes=0, max_steps=2, batch_size=2, num_frames=4, warm_frames=4,
        val_videos=1, test_videos=1, eval_every_minutes=1e-6, threads=1, text_loss_weight=1.0,
    )  # fmt: skip
    metrics = train.main(cfg)
    # after steps 1 and 2 (the evaluation period has passed), then before and after the final test
    assert saves == [(False, 1), (False, 2), (False, 2), (True, 2)]
    assert metrics["next_first_video"] == 4 and float(metrics["cpu_time_s"]) > 0  # type: ignore[arg-type]
    assert len((tmp_path / "curve.jsonl").read_text().splitlines()) == 3
