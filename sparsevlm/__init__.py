"""SparseVLM visual-token sparsification for Hugging Face Video-LLaVA."""

from sparsevlm.config import PRESETS, SparseConfig
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
