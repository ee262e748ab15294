"""SparseVLM visual-token sparsification for Hugging Face Video-LLaVA.

The config names load with the package; the ones that need torch and transformers (the patch, the prefill
statistics) load on first use (PEP 562 ``__getattr__``). Every Ray worker of the pipeline imports
:mod:`sparsevlm.config`, which imports this package first, and the decode workers must not pay for torch and
transformers (seconds of start-up and ~150 MiB each); ``from sparsevlm import apply_patch`` still works.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sparsevlm.config import PRESETS, SparseConfig

if TYPE_CHECKING:
    from sparsevlm.patch import apply_patch, current_config, is_patched, last_stats, remove_patch
    from sparsevlm.stats import SampleStats

__all__ = [
    "PRESETS",
    "SampleStats",
    "SparseConfig",
    "apply_patch",
    "current_config",
    "is_patched",
    "last_stats",
    "remove_patch",
]

# The heavy names and the module that defines each, imported when one is first asked for.
_LAZY = {
    "SampleStats": "sparsevlm.stats",
    "apply_patch": "sparsevlm.patch",
    "current_config": "sparsevlm.patch",
    "is_patched": "sparsevlm.patch",
    "last_stats": "sparsevlm.patch",
    "remove_patch": "sparsevlm.patch",
}


def __getattr__(name: str) -> Any:
    """Import the module of a heavy name on first use and cache the name here (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsevlm' has no attribute {name!r}; its public names are {__all__}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
