"""What a Video-LLaVA checkpoint is, read from its files without torch or transformers.

A job's ``--dry-run`` and the driver's start-up check need the frame size, the patch size and the language
model's layout, and must refuse a checkpoint that is not a Video-LLaVA, stores pickled weights or asks for its
own code (``auto_map``), all before any weight loads; importing transformers alone costs seconds. So this module
reads ``config.json`` and ``tokenizer_config.json`` as JSON, from a local directory or the Hugging Face cache
(``huggingface_hub``, which honours ``HF_HUB_OFFLINE``), and fills the keys a ``config.json`` may leave out with
the defaults of the pinned transformers' config classes (:data:`CONFIG_DEFAULTS`; a test compares them with
``AutoConfig``). :func:`sparsevlm.engine.inspect_checkpoint` is this check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsevlm.engine_types import CheckpointError, ModelSpec

__all__ = ["CONFIG_DEFAULTS", "CheckpointInfo", "read_checkpoint"]

_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# transformers 5.23.0's defaults for the keys read here when config.json leaves them out: LlamaConfig's and
# CLIPVisionConfig's own, and VideoLlavaConfig's when a whole sub-config is missing (it then builds the 7B's).
CONFIG_DEFAULTS: dict[str, dict[str, int]] = {
    "text": {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008},
    "vision": {"image_size": 224, "patch_size": 32},
    "vision_missing": {"image_size": 224, "patch_size": 14},
}


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint's spec, its language model's layout, and its tokenizer file (None: it has none)."""

    spec: ModelSpec
    num_layers: int
    hidden_size: int
    intermediate_size: int
    tokenizer_file: Path | None


def read_checkpoint(model: str | os.PathLike[str]) -> CheckpointInfo:
    """Check a checkpoint and read its settings (``config.json``, ``tokenizer_config.json``; no weights).

    Args:
        model: a local directory or a hub id (resolved from the local cache when offline).

    Raises:
        CheckpointError: the directory does not exist, has no Video-LLaVA config, has only pickled weights, or
            asks for its own code (``auto_map``).
    """
    name = os.fspath(model)
    local = Path(name).expanduser()
    if local.is_dir():
        _check_weight_files(local)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id "org/name"
        raise CheckpointError(f"checkpoint directory {name!r} does not exist; pass a local directory or a hub id")
    config_file = _find(name, "config.json")
    if config_file is None:
        raise _unreadable(name, FileNotFoundError("no config.json there or in the local hub cache"))
    tokenizer_config = _find(name, "tokenizer_config.json")
    settings = {"config.json": _json(name, config_file)}
    settings["tokenizer_config.json"] = _json(name, tokenizer_config) if tokenizer_config else {}
    for file, values in settings.items():
        if values.get("auto_map"):
            raise CheckpointError(
                f"{name!r}: its {file} maps classes to code shipped with the checkpoint (auto_map "
                f"{values['auto_map']}); the engine never runs checkpoint code, and loading the weights into stock "
                "classes could silently differ from what that code does. Use a checkpoint saved from transformers' "
                "VideoLlavaForConditionalGeneration (or delete auto_map if the model and tokenizer are stock ones)"
            )
    config = settings["config.json"]
    model_type = config.get("model_type")
    if model_type != "video_llava":
        raise CheckpointError(
            f"{name!r} is a {model_type!r} checkpoint, not Video-LLaVA (model_type 'video_llava'); "
            "pass a Video-LLaVA checkpoint such as LanguageBind/Video-LLaVA-7B-hf"
        )
    vision = _with_defaults(config.get("vision_config"), "vision")
    text = _with_defaults(config.get("text_config"), "text")
    return CheckpointInfo(
        spec=ModelSpec(model_id=name, frame_size=int(vision["image_size"]), patch_size=int(vision["patch_size"])),
        num_layers=int(text["num_hidden_layers"]),
        hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text["intermediate_size"]),
        tokenizer_file=_find(name, "tokenizer.json"),
    )


def _with_defaults(section: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    if section is None:
        return dict(CONFIG_DEFAULTS[f"{kind}_missing" if kind == "vision" else kind])
    return {**CONFIG_DEFAULTS[kind], **section}


def _find(name: str, filename: str) -> Path | None:
    """``filename`` of a local checkpoint directory or of a hub id (the cache first; a download unless offline)."""
    local = Path(name).expanduser()
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    cached = try_to_load_from_cache(name, filename)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(hf_hub_download(name, filename))
    except EntryNotFoundError:  # the repository has no such file
        return None
    except (OSError, ValueError) as err:  # offline and not cached, no such repository, no network
        if filename == "config.json":
            raise _unreadable(name, err) from err
        return None


def _json(name: str, path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise _unreadable(name, err) from err
    if not isinstance(values, dict):
        raise _unreadable(name, ValueError(f"{path.name} holds {type(values).__name__}, not an object"))
    return values


def _unreadable(name: str, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot read a model config from {name!r} ({err}); pass a Video-LLaVA checkpoint directory "
        "(config.json + model.safetensors) or a cached hub id such as LanguageBind/Video-LLaVA-7B-hf"
    )


def _check_weight_files(directory: Path) -> None:
    names = {p.name for p in directory.iterdir()}
    if "config.json" not in names:
        raise CheckpointError(f"{directory} has no config.json; it is not a Hugging Face checkpoint directory")
    if names.isdisjoint(_SAFETENSORS):
        pickled = sorted(names & set(_PICKLED))
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise CheckpointError(
            f"{directory} has {found}; the engine loads safetensors only (pickle can run code). Convert it with "
            "model.save_pretrained(dir) after loading it once in a trusted environment"
        )
