"""The identity of a model checkpoint beyond its name, for the config key and the ``model_revision`` column.

A hub id such as ``LanguageBind/Video-LLaVA-7B-hf`` names whatever its ``main`` branch holds today, and a
local directory whatever was last saved into it; rows of two different models under one name would mix, and
the ledger would skip videos that the new model never saw. So a run records what it actually loads:

- a hub id: the commit hash of the cached snapshot (``refs/main`` of the Hugging Face cache, which a download
  updates), e.g. ``8b4f1c...``; the engine loads that snapshot;
- a local directory: ``sha256:`` and 32 hex digits over ``config.json``, every ``*.safetensors.index.json``, and
  each ``*.safetensors`` file's name, size, first and last MiB (tensor values change throughout a file when a
  model is retrained, so its ends change too; reading 2 MiB per file keeps this cheap for 14 GB of weights).

Anything else (a name that is neither, a hub id not in the cache) has no revision: None.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["model_revision"]

_EDGE_BYTES = 2**20  # read from each end of a weight file


def model_revision(model: str, cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The revision of ``model`` (a local checkpoint directory or a hub id), or None if it cannot be known.

    Args:
        model: the ``--model`` value.
        cache_dir: the Hugging Face hub cache (default: the environment's, ``HF_HUB_CACHE``).

    Never raises: an unreadable checkpoint is reported by the engine's own checks, not here.
    """
    local = Path(model).expanduser()
    try:
        if local.is_dir():
            return _directory_hash(local)
        return _hub_commit(model, cache_dir)
    except (OSError, ValueError):
        return None


def _directory_hash(directory: Path) -> str | None:
    config = directory / "config.json"
    if not config.is_file():
        return None
    digest = hashlib.sha256()
    digest.update(b"config.json\0" + config.read_bytes())
    for index in sorted(directory.glob("*.safetensors.index.json")):
        digest.update(f"\0{index.name}\0".encode() + index.read_bytes())
    for weights in sorted(directory.glob("*.safetensors")):
        size = weights.stat().st_size
        digest.update(f"\0{weights.name}\0{size}\0".encode())
        with weights.open("rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            f.seek(max(size - _EDGE_BYTES, 0))
            digest.update(f.read(_EDGE_BYTES))
    return "sha256:" + digest.hexdigest()[:32]


def _hub_commit(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> str | None:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=None if cache_dir is None else Path(cache_dir))
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent  # <cache>/models--org--name/snapshots/<commit>/config.json
    return snapshot.name if snapshot.parent.name == "snapshots" else None
