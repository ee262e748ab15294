"""The model stage: segment rows in (``pipeline.stages.decode.decode_rows``; their fields are listed there), result rows
out. A callable class; no Ray here (pipeline/build.py wires it).

The model stage turns each segment into one caption row and one row per question (``RESULT_SCHEMA``) and appends
:data:`pipeline.stages.schema.INTERNAL_COLUMNS` and :data:`pipeline.observability.quality.SHADOW_COLUMNS` for the
writer.

Questions are checked against the model (``VideoQAEngine.check_prompt``) before they are asked, and rejected,
never truncated: one containing the ``<video>`` placeholder (``PromptError``), or one whose prompt plus
``max_new_tokens`` exceeds the model's context window (``PromptTooLong``, naming the limit; past it the model
still runs but answers garbage). The
run's own questions and caption prompt fail the model stage at start; a manifest's per-video question
becomes error rows for that question only.

With ``shadow_fraction`` > 0 (:class:`~pipeline.config.AnswerSettings`), the prompts of the sampled segments
(:func:`pipeline.observability.quality.shadow_sampled`) that got an answer are asked again in one more batched
``generate`` under the ``dense`` preset, on the same weights (``VideoQAEngine.answer(sparse=...)``); the dense answers
travel to the commit in the internal :data:`pipeline.observability.quality.SHADOW_COLUMNS`, never in the result columns.
A failing dense call changes no result row: it is logged and its prompts get no quality row (counted as ``failed`` in
the run's shadow cost).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import PIPELINE_VERSION, AnswerSettings, ModelSettings
from pipeline.harness.standin import StandInEngine
from pipeline.observability.metrics import record_model_batch
from pipeline.observability.quality import SHADOW_COLUMNS, SHADOW_PRESET, shadow_sampled
from pipeline.stages.schema import (
    INFO_FIELDS,
    LAST_SEGMENT,
    LEDGER_KEY,
    SEGMENT_ROWS,
    VIDEO_FIELDS,
    empty_row,
    rows_to_table,
)
from sparsevlm.config import SparseConfig
from sparsevlm.engine import VideoQAEngine
from sparsevlm.engine_types import EngineAnswer, PromptError
from sparsevlm.stats import SampleStats

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "load_engine", "provenance"]


class Predictor:
    """The model stage: a batch of segment rows in, result rows out (callable class for ``map_batches``).

    Each actor holds one :class:`~sparsevlm.engine.VideoQAEngine` (or, with ``model.stand_in``, one
    :class:`~pipeline.harness.standin.StandInEngine`: benchmarks and tests only). All prompts of the batch's decoded
    segments (the caption instruction, then each question) go into one batched ``generate``. Decode error
    rows pass through as error result rows; a failing ``generate`` turns its rows into error rows; a question
    the model cannot take (see the module docstring) becomes error rows without reaching ``generate``.

    Args:
        model: the model to load, its SparseConfig and form, the actor's threads (``PipelineConfig.model_settings``).
        answering: the prompts, the generation budget, the shadow sample's share (``PipelineConfig.answering``).
        engine: an already built engine (tests); default: load ``model.model``, or the stand-in that
            ``model.stand_in`` describes.

    Raises:
        PromptError: the caption prompt or one of ``answering.questions`` cannot be asked (every row would fail).
    """

    def __init__(
        self, model: ModelSettings, answering: AnswerSettings, engine: VideoQAEngine | StandInEngine | None = None
    ) -> None:
        # The actor's CPU share is its thread budget: more threads than reserved CPUs starve the decoders.
        torch.set_num_threads(model.torch_threads)
        self.config = answering
        self.engine = engine or load_engine(model)
        self._dense = SparseConfig.preset(SHADOW_PRESET)  # the shadow sample's configuration, same weights
        self._provenance = provenance(self.engine, model, answering)
        for prompt in (answering.caption_prompt, *answering.questions):
            problem = self._prompt_problem(prompt, answering.frames_per_segment)
            if problem is not None:
                raise problem

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        """Turn segment rows into result rows.

        Args:
            batch: segment rows (an Arrow table, or a dict of columns).

        Returns:
            ``RESULT_SCHEMA`` columns followed by the ledger's internal columns and the shadow sample's
            (:data:`pipeline.observability.quality.SHADOW_COLUMNS`), one row per (segment, task), in input order.
        """
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        rows = table.to_pylist()
        decoded = [i for i, r in enumerate(rows) if r["error_class"] is None]
        tasks = [(i, task, prompt) for i in decoded for task, prompt in self._tasks(rows[i])]
        answers = self._answer(rows, tasks)
        shadow = self._shadow(rows, tasks, answers)
        asked = sum(isinstance(a, EngineAnswer) for a in answers)  # the prompts of the one main generate call
        per_row: dict[int, list[tuple[dict[str, Any], tuple[Any, ...]]]] = {i: [] for i in range(len(rows))}
        for k, ((i, task, prompt), answer) in enumerate(zip(tasks, answers, strict=True)):
            model_ms = answer.latency_ms / asked if isinstance(answer, EngineAnswer) else None
            per_row[i].append((self._result(rows[i], task, prompt, answer), (*_shadow_fields(shadow.get(k)), model_ms)))
        for i, row in enumerate(rows):
            if row["error_class"] is not None:
                error = {"status": "error", "error_class": row["error_class"], "error_message": row["error_message"]}
                per_row[i].append((self._result(row, "caption", None, error), (None, None, None, None)))
        results: list[dict[str, Any]] = []
        extras: list[tuple[Any, ...]] = []
        internal = []
        for i, row in enumerate(rows):
            results.extend(result for result, _ in per_row[i])
            extras.extend(extra for _, extra in per_row[i])
            internal.extend([(row[LEDGER_KEY], bool(row[LAST_SEGMENT]), len(per_row[i]))] * len(per_row[i]))
        record_model_batch(
            next((a.latency_ms / 1000 for a in answers if isinstance(a, EngineAnswer)), None),
            segments=len(decoded),
            statuses=[r["status"] for r in results],
            equivalent=[r["equivalent_tokens"] for r in results if r["status"] == "ok"],
            visual_in=[r["visual_tokens_in"] for r in results if r["status"] == "ok"],
        )
        out = rows_to_table(results)
        keys, lasts, counts = zip(*internal, strict=True) if internal else ((), (), ())
        out = out.append_column(LEDGER_KEY, pa.array(keys, pa.string()))
        out = out.append_column(LAST_SEGMENT, pa.array(lasts, pa.bool_()))
        out = out.append_column(SEGMENT_ROWS, pa.array(counts, pa.int64()))
        columns = list(zip(*extras, strict=True)) if extras else [()] * len(SHADOW_COLUMNS)
        for (name, type_), values in zip(SHADOW_COLUMNS, columns, strict=True):
            out = out.append_column(name, pa.array(values, type_))
        return out

    def _shadow(
        self, rows: list[dict[str, Any]], tasks: list[tuple[int, str, str]], answers: list[EngineAnswer | dict]
    ) -> dict[int, tuple[str, float] | str]:
        """The dense answer and its share of the call's time (ms) of each sampled task that got a main answer, by
        task index, from one batched call; the call's error class for each if it fails (see the module)."""
        fraction = self.config.shadow_fraction
        sampled = [
            k
            for k, (i, _, _) in enumerate(tasks)
            if isinstance(answers[k], EngineAnswer)
            and shadow_sampled(rows[i][LEDGER_KEY], rows[i]["segment_index"], fraction)
        ]
        if not sampled:
            return {}
        segments = {i: _frames(rows[i]) for i in {tasks[k][0] for k in sampled}}  # one array per segment
        frames = [segments[tasks[k][0]] for k in sampled]
        prompts = [tasks[k][2] for k in sampled]
        try:
            dense = self.engine.answer(
                frames, prompts, self.config.max_new_tokens, self.config.repeat_stop, sparse=self._dense
            )
        except Exception as err:  # the sample is an observer: its failure never touches the results
            logger.warning(
                "the shadow dense call failed on %d sampled prompts (%s: %s); their results stand, without "
                "quality rows",
                len(sampled),
                type(err).__name__,
                err,
            )
            return dict.fromkeys(sampled, type(err).__name__)
        return {k: (a.text, a.latency_ms / len(sampled)) for k, a in zip(sampled, dense, strict=True)}

    def _tasks(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        return [("caption", self.config.caption_prompt)] + [("qa", q) for q in row["questions"]]

    def _answer(self, rows: list[dict[str, Any]], tasks: list[tuple[int, str, str]]) -> list[EngineAnswer | dict]:
        # A prompt the model cannot take gets its error here, so that it never fails the whole batch.
        answers: dict[int, EngineAnswer | dict] = {}
        for k, (i, _, prompt) in enumerate(tasks):
            problem = self._prompt_problem(prompt, rows[i]["frames_shape"][0])
            if problem is not None:
                answers[k] = _error_fields(problem)
        asked = [k for k in range(len(tasks)) if k not in answers]
        if asked:
            segments = {i: _frames(rows[i]) for i in {tasks[k][0] for k in asked}}  # one array per segment
            frames = [segments[tasks[k][0]] for k in asked]  # the same array for each prompt of a segment
            prompts = [tasks[k][2] for k in asked]
            try:
                answers.update(
                    zip(
                        asked,
                        self.engine.answer(frames, prompts, self.config.max_new_tokens, self.config.repeat_stop),
                        strict=True,
                    )
                )
            except Exception as err:  # recorded per row; a run with no success fails at the end
                logger.exception("generate failed on a batch of %d prompts; writing error rows", len(asked))
                answers.update(dict.fromkeys(asked, _error_fields(err)))
        return [answers[k] for k in range(len(tasks))]

    def _prompt_problem(self, prompt: str, num_frames: int) -> PromptError | None:
        """Why ``prompt`` cannot be asked about ``num_frames`` frames, or None if it can."""
        try:
            self.engine.check_prompt(prompt, num_frames, self.config.max_new_tokens)
        except PromptError as err:
            return err
        return None

    def _result(self, row: dict[str, Any], task: str, prompt: str | None, answer: EngineAnswer | dict) -> dict:
        fields: dict[str, Any] = {
            **{k: row[k] for k in (*VIDEO_FIELDS, *INFO_FIELDS)},
            "segment_index": row["segment_index"],
            "segment_start_s": row["segment_start_s"],
            "segment_end_s": row["segment_end_s"],
            "frame_timestamps_s": list(row["frame_timestamps_s"]) if row["segment_index"] is not None else None,
            "task": task,
            "question": prompt,
            **self._provenance,
        }
        if isinstance(answer, dict):
            return empty_row(**fields, **answer)
        stats = answer.stats
        return empty_row(
            **fields,
            answer=answer.text,
            visual_tokens_in=stats.visual_tokens_in,
            equivalent_tokens=float(stats.equivalent_tokens),
            prefill_flops=float(stats.prefill_flops),
            dense_prefill_flops=float(stats.dense_prefill_flops),
            latency_ms=answer.latency_ms,
            kept_visual_tokens=_kept_visual_tokens(stats),
        )


def _kept_visual_tokens(stats: SampleStats) -> list[int] | None:
    """The original visual-token indices kept at the first pruning layer (or by the reduction before the
    LLM when no layer prunes); None when every token was kept."""
    if stats.kept_indices:
        return [int(i) for i in stats.kept_indices[min(stats.kept_indices)].tolist()]
    if stats.reduced_kept is not None:
        return [int(i) for i in stats.reduced_kept.tolist()]
    return None


def provenance(
    engine: VideoQAEngine | StandInEngine, model: ModelSettings, answering: AnswerSettings
) -> dict[str, Any]:
    """The columns every result row of a run's model actor shares: the model, its preset and SparseConfig, the
    model's revision, the run and the pipeline's version."""
    return {
        **engine.describe(),
        "model_revision": model.revision,
        "run_id": answering.run_id,
        "pipeline_version": PIPELINE_VERSION,
    }


def load_engine(model: ModelSettings) -> VideoQAEngine | StandInEngine:
    """The engine of one model actor: ``model.model`` under ``model.sparse``, or the stand-in ``model.stand_in``
    describes."""
    if model.stand_in is not None:
        return StandInEngine(model.stand_in)
    return VideoQAEngine.from_pretrained(
        model.model, model.sparse, device=model.device, dtype=model.dtype, label=model.label
    )


def _shadow_fields(shadow: tuple[str, float] | str | None) -> tuple[str | None, str | None, float | None]:
    """``shadow_answer``, ``shadow_error`` and ``shadow_ms`` of one task (see pipeline/observability/quality.py)."""
    if shadow is None:
        return None, None, None
    if isinstance(shadow, str):
        return None, shadow, None
    return shadow[0], None, shadow[1]


def _error_fields(err: BaseException) -> dict[str, Any]:
    return {"status": "error", "error_class": type(err).__name__, "error_message": str(err)}


def _frames(row: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(row["frames"], dtype=np.uint8).reshape(row["frames_shape"])  # [T, S, S, 3], read-only
