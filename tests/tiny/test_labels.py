"""The bundled checkpoints are named for what they are (``bundled:tiny-synthetic``) wherever results go, and the
name changes nothing a run keys on."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import caption
from jobs.common import config_from_args
from pipeline.config import PipelineConfig
from pipeline.observability.run_record import summarise
from sparsevlm.config import DEFAULT_PRESET
from sparsevlm.tiny import (
    BUNDLED_LABELS,
    BUNDLED_REPEAT_STOP,
    CHECKPOINT_DIR,
    DEEP_CHECKPOINT_DIR,
    bundled_label,
    resolve_model,
)


def test_labels_and_directories_map_both_ways(tmp_path: Path) -> None:
    assert bundled_label(str(CHECKPOINT_DIR)) == "bundled:tiny-synthetic"
    assert bundled_label(str(DEEP_CHECKPOINT_DIR) + "/") == "bundled:tiny-deep"
    assert bundled_label("bundled:tiny-deep") == "bundled:tiny-deep"
    assert bundled_label(str(tmp_path)) is None and bundled_label("LanguageBind/Video-LLaVA-7B-hf") is None
    assert resolve_model("bundled:tiny-synthetic") == str(CHECKPOINT_DIR)
    assert resolve_model("LanguageBind/Video-LLaVA-7B-hf") == "LanguageBind/Video-LLaVA-7B-hf"
    with pytest.raises(ValueError, match="'bundled:tiny' is not a bundled checkpoint; bundled ones: bundled:tiny-"):
        resolve_model("bundled:tiny")


def test_the_label_and_the_path_give_one_config_key(tmp_path: Path) -> None:
    made = PipelineConfig(input_uri=str(tmp_path), output_uri=str(tmp_path / "o"), model=str(CHECKPOINT_DIR))
    by_path = made.resolved()
    by_label = by_path.replace(model="bundled:tiny-synthetic").resolved()
    assert by_label.model == str(CHECKPOINT_DIR)  # the key's material is unchanged: a path, as before labels
    assert by_label.config_key() == by_path.config_key()
    assert by_label.model_label == by_path.model_label == "bundled:tiny-synthetic"
    other = by_path.replace(model=str(tmp_path))
    assert other.model_label == str(tmp_path)


def test_the_summary_says_which_model_preset_and_prompts_answered(tmp_path: Path) -> None:
    config = PipelineConfig(
        input_uri=str(tmp_path), output_uri=str(tmp_path / "o"), model=str(CHECKPOINT_DIR), questions=("what?",)
    ).resolved()
    summary = summarise(config, seen=0, pending=0, entries=[], wall=0.0)
    assert (summary.model, summary.preset) == ("bundled:tiny-synthetic", DEFAULT_PRESET)
    assert summary.model_revision == config.model_revision and summary.model_revision
    assert summary.questions == [config.caption_prompt, "what?"]


def test_the_jobs_default_to_the_label_and_guard_the_bundled_models_against_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no line breaks inside the default's name
    parser = caption.build_parser()
    assert "(default: bundled:tiny-synthetic)" in parser.format_help()
    assert str(CHECKPOINT_DIR) not in parser.format_help()
    base = ["--input", str(tmp_path), "--output", str(tmp_path / "o")]
    bundled = config_from_args(parser.parse_args(base))
    assert bundled.model == str(CHECKPOINT_DIR) and bundled.repeat_stop == BUNDLED_REPEAT_STOP
    other = tmp_path / "model"
    (other / "config.json").parent.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (other / name).write_bytes((CHECKPOINT_DIR / name).read_bytes())
    assert config_from_args(parser.parse_args([*base, "--model", str(other)])).repeat_stop == 0
    assert config_from_args(parser.parse_args([*base, "--model", str(other), "--repeat-stop", "2"])).repeat_stop == 2
    assert config_from_args(parser.parse_args([*base, "--repeat-stop", "0"])).repeat_stop == 0
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--repeat-stop", "-1"])
    assert set(BUNDLED_LABELS) == {"bundled:tiny-synthetic", "bundled:tiny-deep"}
