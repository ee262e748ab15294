"""Attach SparseVLM to one Video-LLaVA instance, and detach it.

``apply_patch`` swaps the class of *that instance* (and of its language model) for a subclass that overrides
the decoder loop, and adds one forward pre-hook that records which input positions are visual tokens. No
class attribute of transformers is touched, so other models in the process are unaffected, and
``remove_patch`` restores the exact original behaviour.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from transformers import VideoLlavaForConditionalGeneration
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.video_llava.modeling_video_llava import VideoLlavaModel

from sparsevlm.config import SparseConfig
from sparsevlm.modeling import SparseLlamaModel, SparseRuntime
from sparsevlm.stats import SampleStats
from sparsevlm.token_counts import video_tokens_per_frame
from sparsevlm.video_llava import SparseVideoLlavaForConditionalGeneration, SparseVideoLlavaModel

# The decoder loop in sparsevlm/modeling.py overrides internals of exactly this release.
EXPECTED_TRANSFORMERS = "5.23.0"
SUPPORTED_ATTENTION = ("sdpa", "eager")


def apply_patch(
    model: VideoLlavaForConditionalGeneration, config: SparseConfig | str
) -> VideoLlavaForConditionalGeneration:
    """Make ``model`` prune and recycle visual tokens during prefill.

    Applying again to a patched model replaces its config.

    Args:
        model: a ``VideoLlavaForConditionalGeneration`` whose language model is a ``LlamaModel``.
        config: a :class:`SparseConfig` or a preset name.

    Returns:
        The same model object, patched in place.

    Raises:
        RuntimeError: the installed transformers is not the version this patch was written for.
        TypeError: the model is not a Video-LLaVA with a LLaMA language model.
        ValueError: the language model's attention implementation is not supported.
    """
    found = installed_transformers_version()
    if found != EXPECTED_TRANSFORMERS:
        raise RuntimeError(
            f"sparsevlm patches transformers=={EXPECTED_TRANSFORMERS} internals but found "
            f"transformers=={found}; install transformers=={EXPECTED_TRANSFORMERS}"
        )
    if not isinstance(model, VideoLlavaForConditionalGeneration):
        raise TypeError(f"expected a VideoLlavaForConditionalGeneration, got {type(model).__name__}")
    cfg = SparseConfig.preset(config) if isinstance(config, str) else config
    language_model: Any = model.model.language_model
    if type(language_model) not in (LlamaModel, SparseLlamaModel):
        raise TypeError(f"expected the language model to be a LlamaModel, got {type(language_model).__name__}")
    impl = language_model.config._attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"SparseVLM supports the {SUPPORTED_ATTENTION} attention implementations, the language model "
            f"uses {impl!r}; call model.set_attn_implementation('sdpa') first"
        )
    if is_patched(model):
        _runtime(model).config = cfg
        return model
    runtime = SparseRuntime(cfg)
    vision: Any = model.config.vision_config
    runtime.tokens_per_frame = video_tokens_per_frame(vision.image_size, vision.patch_size)
    inner: Any = model.model
    runtime.hook = inner.register_forward_pre_hook(runtime.capture_inputs, with_kwargs=True)
    inner.__class__ = SparseVideoLlavaModel
    inner._sparse_runtime = runtime
    language_model.__class__ = SparseLlamaModel
    language_model._sparse_runtime = runtime
    model.__class__ = SparseVideoLlavaForConditionalGeneration
    model._sparse_runtime = runtime  # type: ignore[assignment]
    return model


def installed_transformers_version() -> str:
    """The installed transformers distribution's version."""
    return version("transformers")


def remove_patch(model: VideoLlavaForConditionalGeneration) -> VideoLlavaForConditionalGeneration:
    """Undo :func:`apply_patch`; a model that is not patched is returned unchanged."""
    if not is_patched(model):
        return model
    runtime = _runtime(model)
    runtime.hook.remove()
    inner: Any = model.model
    inner.__class__ = VideoLlavaModel
    del inner._sparse_runtime
    language_model: Any = model.model.language_model
    language_model.__class__ = LlamaModel
    del language_model._sparse_runtime
    model.__class__ = VideoLlavaForConditionalGeneration
    del model._sparse_runtime
    return model


def is_patched(model: VideoLlavaForConditionalGeneration) -> bool:
    """Whether :func:`apply_patch` is in effect on this instance."""
    return isinstance(model, SparseVideoLlavaForConditionalGeneration)


def last_stats(model: VideoLlavaForConditionalGeneration) -> list[SampleStats]:
    """Per-row statistics of the model's last prefill with visual tokens (one entry per batch row).

    Raises:
        ValueError: the model is not patched.
    """
    if not is_patched(model):
        raise ValueError("last_stats needs a patched model; call sparsevlm.apply_patch(model, config) first")
    return list(_runtime(model).stats)


def current_config(model: VideoLlavaForConditionalGeneration) -> SparseConfig:
    """The SparseConfig of a patched model."""
    if not is_patched(model):
        raise ValueError("model is not patched; call sparsevlm.apply_patch(model, config) first")
    return _runtime(model).config


def _runtime(model: VideoLlavaForConditionalGeneration) -> SparseRuntime:
    runtime: SparseRuntime = model._sparse_runtime  # type: ignore[assignment]
    return runtime
