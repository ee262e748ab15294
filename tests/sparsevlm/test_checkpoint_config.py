"""Reading a checkpoint as JSON (sparsevlm/checkpoint.py) gives what transformers would build from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig, AutoTokenizer

from pipeline.observability.run_plan import text_tokens
from sparsevlm.checkpoint import read_checkpoint
from sparsevlm.engine_types import CheckpointError
from sparsevlm.prompt import encode_text
from sparsevlm.tiny import CHECKPOINT_DIR, DEEP_CHECKPOINT_DIR
from tests.standin_7b import write_tokenizer


def checkpoint_with(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def transformers_reads(folder: Path) -> tuple[int, int, int, int, int]:
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    text, vision = config.text_config, config.vision_config
    return (
        vision.image_size,
        vision.patch_size,
        text.num_hidden_layers,
        text.hidden_size,
        text.intermediate_size,
    )


def we_read(folder: Path) -> tuple[int, int, int, int, int]:
    info = read_checkpoint(folder)
    return (
        info.spec.frame_size,
        info.spec.patch_size,
        info.num_layers,
        info.hidden_size,
        info.intermediate_size,
    )


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "video_llava"},  # both sub-configs missing: VideoLlavaConfig builds the 7B's
        {"model_type": "video_llava", "text_config": {"model_type": "llama"}, "vision_config": {}},
        {"model_type": "video_llava", "vision_config": {"model_type": "clip_vision_model", "image_size": 96}},
        {"model_type": "video_llava", "text_config": {"model_type": "llama", "num_hidden_layers": 2}},
    ],
    ids=["no-sub-configs", "empty-sub-configs", "vision-size-only", "text-layers-only"],
)
def test_the_defaults_of_missing_keys_are_transformers_own(tmp_path: Path, config: dict[str, Any]) -> None:
    folder = checkpoint_with(tmp_path / "ckpt", config)
    assert we_read(folder) == transformers_reads(folder)


@pytest.mark.parametrize("folder", [CHECKPOINT_DIR, DEEP_CHECKPOINT_DIR], ids=["tiny", "tiny-deep"])
def test_the_bundled_checkpoints_read_as_transformers_reads_them(folder: Path) -> None:
    assert we_read(folder) == transformers_reads(folder)
    assert read_checkpoint(folder).tokenizer_file == folder / "tokenizer.json"


def test_a_checkpoint_of_another_kind_is_refused_by_name(tmp_path: Path) -> None:
    folder = checkpoint_with(tmp_path / "ckpt", {"model_type": "llava"})
    with pytest.raises(CheckpointError, match=r"is a 'llava' checkpoint, not Video-LLaVA"):
        read_checkpoint(folder)
    (folder / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match=r"config\.json holds list, not an object"):
        read_checkpoint(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize("legacy", [False, True])
def test_dry_run_counts_the_prompt_tokens_the_engine_sends(tmp_path: Path, legacy: bool) -> None:
    """The ``tokenizers`` count of the dry run equals the engine's ``encode_text`` on a LLaMA tokenizer."""
    write_tokenizer(tmp_path, legacy)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), trust_remote_code=False)
    for question in ("describe the video.", "Why is this video funny?", "what colour is the square?"):
        assert text_tokens(tmp_path / "tokenizer.json", question) == len(encode_text(tokenizer, question))
    bundled = AutoTokenizer.from_pretrained(str(CHECKPOINT_DIR), trust_remote_code=False)
    assert text_tokens(CHECKPOINT_DIR / "tokenizer.json", "what?") == len(encode_text(bundled, "what?"))
