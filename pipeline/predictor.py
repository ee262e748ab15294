"""The model stage: segment rows in (``pipeline.decode.decode_rows``; their fields are listed there), result
rows out. A callable class; no Ray here (pipeline/build.py wires it).

The model stage turns each segment into one caption row and one row per question (``RESULT_SCHEMA``) and
appends :data:`pipeline.ledger.INTERNAL_COLUMNS` for the writer.

Questions are checked against the model (``VideoQAEngine.check_prompt``) before they are asked, and rejected,
never truncated: one containing the ``<video>`` placeholder (``PromptError``), or one whose prompt plus
``max_new_tokens`` exceeds the model's context window (``PromptTooLong``, naming the limit; past it the model
still runs but answers garbage). The
run's own questions and caption prompt fail the model stage at start; a manifest's per-video question
becomes error rows for that question only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import PIPELINE_VERSION, PipelineConfig
from pipeline.decode import INFO_FIELDS, VIDEO_FIELDS
from pipeline.ledger import LAST_SEGMENT, LEDGER_KEY, SEGMENT_ROWS
from pipeline.metrics import record_model_batch
from pipeline.schema import empty_row, rows_to_table
from pipeline.standin import StandInEngine
from sparsevlm.engine import EngineAnswer, PromptError, VideoQAEngine
from sparsevlm.stats import SampleStats

logger = logging.getLogger(__name__)

__all__ = ["Predictor"]


class Predictor:
    """The model stage: a batch of segment rows in, result rows out (callable class for ``map_batches``).

    Each actor holds one :class:`~sparsevlm.engine.VideoQAEngine` (or, with ``config.stand_in``, one
    :class:`~pipeline.standin.StandInEngine`: benchmarks and tests only). All prompts of the batch's decoded
    segments (the caption instruction, then each question) go into one batched ``generate``. Decode error
    rows pass through as error result rows; a failing ``generate`` turns its rows into error rows; a question
    the model cannot take (see the module docstring) becomes error rows without reaching ``generate``.

    Args:
        config: the run's config (model, SparseConfig, prompts, generation budget, CPU share).
        engine: an already built engine (tests); default: load ``config.model``, or the stand-in that
            ``config.stand_in`` describes.

    Raises:
        PromptError: the caption prompt or one of ``config.questions`` cannot be asked (every row would fail).
    """

    def __init__(self, config: PipelineConfig, engine: VideoQAEngine | StandInEngine | None = None) -> None:
        # The actor's CPU share is its thread budget: more threads than reserved CPUs starve the decoders.
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.engine = engine or _load_engine(config)
        self._provenance = {
            **self.engine.describe(),
            "model_revision": config.model_revision,
            "run_id": config.run_id,
            "pipeline_version": PIPELINE_VERSION,
        }
        for prompt in (config.caption_prompt, *config.questions):
            problem = self._prompt_problem(prompt, config.frames_per_segment)
            if problem is not None:
                raise problem

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        """Turn segment rows into result rows.

        Args:
            batch: segment rows (an Arrow table, or a dict of columns).

        Returns:
            ``RESULT_SCHEMA`` columns followed by the ledger's internal columns, one row per
            (segment, task), in input order.
        """
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        rows = table.to_pylist()
        decoded = [i for i, r in enumerate(rows) if r["error_class"] is None]
        tasks = [(i, task, prompt) for i in decoded for task, prompt in self._tasks(rows[i])]
        answers = self._answer(rows, tasks)
        per_row: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(rows))}
        for (i, task, prompt), answer in zip(tasks, answers, strict=True):
            per_row[i].append(self._result(rows[i], task, prompt, answer))
        for i, row in enumerate(rows):
            if row["error_class"] is not None:
                error = {"status": "error", "error_class": row["error_class"], "error_message": row["error_message"]}
                per_row[i].append(self._result(row, "caption", None, error))
        results, internal = [], []
        for i, row in enumerate(rows):
            results.extend(per_row[i])
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
        return out.append_column(SEGMENT_ROWS, pa.array(counts, pa.int64()))

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


def _load_engine(config: PipelineConfig) -> VideoQAEngine | StandInEngine:
    if config.stand_in is not None:
        return StandInEngine(config.stand_in)
    return VideoQAEngine.from_pretrained(
        config.model, config.sparse, device=config.device, dtype=config.dtype, label=config.model_label
    )


def _error_fields(err: BaseException) -> dict[str, Any]:
    return {"status": "error", "error_class": type(err).__name__, "error_message": str(err)}


def _frames(row: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(row["frames"], dtype=np.uint8).reshape(row["frames_shape"])  # [T, S, S, 3], read-only
