"""What callers of :class:`~sparsevlm.engine.VideoQAEngine` name without running it: the dtype names, the
errors, the checkpoint spec and the answer type.

None of it needs torch or transformers, so the pipeline's config and its stand-in engine, which every Ray
worker imports (decoders included), use it without loading the model libraries. This module is the one home of
these names: import them from here, not through :mod:`sparsevlm.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from sparsevlm.token_counts import video_tokens_per_frame

if TYPE_CHECKING:
    from sparsevlm.stats import SampleStats

__all__ = ["DTYPE_NAMES", "CheckpointError", "DtypeName", "EngineAnswer", "ModelSpec", "PromptError", "PromptTooLong"]

DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)


class CheckpointError(ValueError):
    """The checkpoint is missing, is not a Video-LLaVA, or stores its weights in an unsafe format."""


class PromptError(ValueError):
    """A question the model cannot be asked as given (pipeline rows record this class in ``error_class``)."""


class PromptTooLong(PromptError):
    """The prompt (visual tokens + question) plus ``max_new_tokens`` exceeds the model's context window."""


@dataclass(frozen=True)
class ModelSpec:
    """What callers need to know about a checkpoint without loading its weights.

    Attributes:
        model_id: the path or hub id as given.
        frame_size: the vision tower's input side in pixels (frames are ``[T, S, S, 3]``).
        patch_size: the vision tower's patch side in pixels.
        tokens_per_frame: visual tokens per frame on the video path (patches plus CLS).
    """

    model_id: str
    frame_size: int
    patch_size: int

    @property
    def tokens_per_frame(self) -> int:
        return video_tokens_per_frame(self.frame_size, self.patch_size)


@dataclass(frozen=True)
class EngineAnswer:
    """One generated answer.

    Attributes:
        text: the decoded answer, special tokens removed and stripped.
        stats: the sparsified prefill's statistics for this batch row.
        latency_ms: wall time of the batched ``generate`` call that produced this answer.
        stopped_repeating: the generation was stopped because it repeated itself, and the repeat was cut
            (``repeat_stop``, sparsevlm/repetition.py).
    """

    text: str
    stats: SampleStats
    latency_ms: float
    stopped_repeating: bool = False
