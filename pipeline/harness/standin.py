"""A stand-in accelerator, for benchmarks and tests only: an engine with the part of
:class:`~sparsevlm.engine.VideoQAEngine`'s interface that :class:`~pipeline.stages.predictor.Predictor` uses
(``describe``, ``check_prompt``, ``answer``) which spends a time from a cost model instead of running a model.

It measures the pipeline in the shape it runs in production, where the model actors sit on accelerators and
the decoders on the CPUs beside them: the stand-in waits (``time.sleep``, no CPU) for as long as its cost model
says the accelerator would take for the batch, so the CPUs stay with the decoders, as on a GPU node. Its actor
holds one unit of the custom Ray resource :data:`STAND_IN_RESOURCE` and no CPU (``pipeline/build.py``).

Its rows can never pass for real results:

* ``answer`` is :data:`STAND_IN_ANSWER` (``"[stand-in]"``) and ``model_id`` and ``sparse_preset`` are
  :data:`STAND_IN` (``"stand-in"``); ``sparse_config_json`` holds the cost model and the actor that wrote them;
  the token and FLOPs statistics are 0.
* the run's config key includes the stand-in's cost (:meth:`pipeline.config.PipelineConfig.config_key`), so a
  stand-in run never marks a video done for a real run into the same output, nor the other way round.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsevlm.engine_types import EngineAnswer, PromptError
from sparsevlm.prompt_text import PLACEHOLDERS

if TYPE_CHECKING:
    from sparsevlm.config import SparseConfig
    from sparsevlm.stats import SampleStats

__all__ = ["STAND_IN", "STAND_IN_ANSWER", "STAND_IN_RESOURCE", "StandInCost", "StandInEngine"]

STAND_IN = "stand-in"
STAND_IN_ANSWER = "[stand-in]"
STAND_IN_RESOURCE = "stand_in_accelerator"  # the custom Ray resource a stand-in actor holds (one each)


@dataclass(frozen=True)
class StandInCost:
    """What one batched call costs the stand-in accelerator: ``ms_per_batch + ms_per_segment * segments``.

    A segment is one decoded clip, whatever the number of prompts asked about it (the real engine encodes a
    segment's frames once for its caption and its questions).

    Attributes:
        ms_per_segment: milliseconds per segment of the batch (> 0).
        ms_per_batch: fixed milliseconds per call (>= 0; a GPU's launch and sync costs).
        frame_size: the side of the frames the decoders produce for it (None: the checkpoint's; Video-LLaVA's
            is 224), so that decoding costs what it would for the model stood in for.
    """

    ms_per_segment: float
    ms_per_batch: float = 0.0
    frame_size: int | None = None

    def __post_init__(self) -> None:
        if not self.ms_per_segment > 0:
            raise ValueError(f"stand-in ms_per_segment must be > 0, got {self.ms_per_segment!r}")
        if not self.ms_per_batch >= 0:
            raise ValueError(f"stand-in ms_per_batch must be >= 0, got {self.ms_per_batch!r}")
        if self.frame_size is not None and self.frame_size < 1:
            raise ValueError(f"stand-in frame_size must be >= 1 or None, got {self.frame_size!r}")

    def seconds(self, segments: int) -> float:
        """The wall time of one call on ``segments`` segments."""
        return (self.ms_per_batch + self.ms_per_segment * segments) / 1000

    def segments_per_s(self, batch_size: int) -> float:
        """One accelerator's capacity with full batches of ``batch_size`` segments."""
        return batch_size / self.seconds(batch_size)


class StandInEngine:
    """Answers every prompt with :data:`STAND_IN_ANSWER` after sleeping for the batch's cost.

    Args:
        cost: the cost model.
    """

    def __init__(self, cost: StandInCost) -> None:
        self.cost = cost

    def describe(self) -> dict[str, Any]:
        """Provenance columns: ``stand-in`` for the model and the preset; the cost model and the actor (host and
        process id, called in the actor: the benchmark tells the accelerators apart by it) as JSON."""
        worker = f"{socket.gethostname()}:{os.getpid()}"
        return {
            "model_id": STAND_IN,
            "sparse_preset": STAND_IN,
            "sparse_config_json": json.dumps({STAND_IN: {**asdict(self.cost), "worker": worker}}, sort_keys=True),
        }

    def check_prompt(self, question: str, num_frames: int, max_new_tokens: int) -> None:
        """Refuse a question with a ``<video>`` or ``<image>`` placeholder, as the real engine does (there is no
        tokenizer, so the context length is not checked).

        Raises:
            PromptError: the question contains a placeholder.
        """
        for placeholder in PLACEHOLDERS:
            if placeholder in question:
                raise PromptError(f"question contains the placeholder {placeholder!r}: {question!r:.200}")

    def answer(
        self,
        segments: list[np.ndarray],
        prompts: list[str],
        max_new_tokens: int = 64,
        repeat_stop: int = 0,
        sparse: SparseConfig | None = None,
    ) -> list[EngineAnswer]:
        """Sleep for the cost of the batch's distinct segments, then answer :data:`STAND_IN_ANSWER` to each prompt.

        A call under another configuration (``sparse``: the shadow dense sample, pipeline/observability/quality.py)
        costs and answers the same: the stand-in has no model, so its sample always agrees; what it measures is the
        sample's extra accelerator time.

        Args:
            segments: B uint8 arrays ``[T, S, S, 3]``; prompts about one segment share its buffer (the Predictor
                passes views of the row's frame bytes), which is how distinct segments are counted.
            prompts: B prompts.
            max_new_tokens: unused (the cost model has no per-token term).
            repeat_stop: unused (a stand-in answer never repeats).
            sparse: unused (see above).

        Returns:
            B answers, every one with the call's measured sleep as its latency and zero statistics.
        """
        if len(segments) != len(prompts) or not segments:
            raise ValueError(f"need one prompt per segment, got {len(segments)} segments and {len(prompts)} prompts")
        distinct = len({s.__array_interface__["data"][0] for s in segments})
        start = time.perf_counter()
        time.sleep(self.cost.seconds(distinct))  # the accelerator works; this process's CPU does not
        latency_ms = (time.perf_counter() - start) * 1000
        return [EngineAnswer(STAND_IN_ANSWER, _no_stats(), latency_ms) for _ in prompts]

    context: int | None = None  # no tokenizer: no context to fit (pipeline/stages/summary.py never cuts)

    def text_length(self, prompt: str) -> int:
        """Words, for want of a tokenizer (only a context would use it, and the stand-in has none)."""
        return len(prompt.split())

    def answer_text(self, prompts: list[str], max_new_tokens: int = 64, repeat_stop: int = 0) -> list[EngineAnswer]:
        """Sleep for one segment's cost per call, then answer :data:`STAND_IN_ANSWER` to each text-only prompt
        (the ``summary`` task, pipeline/stages/summary.py; a call of text is far cheaper than one of frames, and
        the cost model has no term for it).

        Raises:
            PromptError: a prompt contains a placeholder.
        """
        if not prompts:
            raise ValueError("need at least one prompt")
        for prompt in prompts:
            self.check_prompt(prompt, 0, max_new_tokens)
        start = time.perf_counter()
        time.sleep(self.cost.seconds(1))
        latency_ms = (time.perf_counter() - start) * 1000
        return [EngineAnswer(STAND_IN_ANSWER, _no_stats(), latency_ms) for _ in prompts]


def _no_stats() -> SampleStats:
    """Zero statistics: no model ran, so no token was kept and no FLOP was spent.

    torch is imported here, not with the module: the config imports :class:`StandInCost` from this module and
    travels to every Ray worker, decoders included, which must not load torch. Only the model stage answers,
    and its :class:`~pipeline.stages.predictor.Predictor` has loaded torch already, so this costs the stand-in nothing.
    """
    import torch

    from sparsevlm.stats import SampleStats

    return SampleStats(
        visual_tokens_in=0,
        visual_tokens_per_layer=[],
        equivalent_tokens=0.0,
        kept_indices={},
        scores={},
        raters=torch.zeros(0, dtype=torch.long),
        prefill_flops=0.0,
        dense_prefill_flops=0.0,
    )
