"""The two row stages around the model: decode (one video -> segment rows) and predict (segments -> result
rows). Plain functions and a callable class; no Ray here (pipeline/build.py wires them).

Rows that cross the decode -> model boundary (one per segment, or one error row per failed video)::

    ledger_key, video_id, source_uri, source_size, source_etag, questions   from the source (source_row)
    duration_s, fps, width, height, codec                                     video metadata (None if it failed)
    segment_index, segment_start_s, segment_end_s, frame_timestamps_s        None/[] for whole-video errors
    frames (bytes), frames_shape ([T, S, S, 3])                               model-resolution uint8, raw
    last_segment (bool), error_class, error_message                           None error_class = decoded

Frames travel as raw bytes plus their shape rather than as a tensor column, so error rows (no frames) and
segment rows share one Arrow schema. The model stage turns each segment into one caption row and one row per
question (``RESULT_SCHEMA``) and appends :data:`pipeline.ledger.INTERNAL_COLUMNS` for the writer.

Questions are checked against the model (``VideoQAEngine.check_prompt``) before they are asked, and rejected,
never truncated: one containing the ``<video>`` placeholder (``PromptError``), or one whose prompt plus
``max_new_tokens`` exceeds the model's context window (``PromptTooLong``, naming the limit; past it the model
still runs but answers garbage). The
run's own questions and caption prompt fail the model stage at start; a manifest's per-video question
becomes error rows for that question only.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import PIPELINE_VERSION, PipelineConfig
from pipeline.decode import DecodeError, Segment, VideoInfo, deadline_after, decode_segments, open_local_copy
from pipeline.ledger import LAST_SEGMENT, LEDGER_KEY, SEGMENT_ROWS, ledger_key
from pipeline.schema import empty_row, rows_to_table
from pipeline.sources import VideoSource
from pipeline.storage import TransientIOError, storage_failure
from sparsevlm.engine import EngineAnswer, PromptError, VideoQAEngine

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "decode_rows", "source_row"]

_VIDEO_FIELDS = ("video_id", "source_uri", "source_size", "source_etag")
_INFO_FIELDS = ("duration_s", "fps", "width", "height", "codec")


def source_row(source: VideoSource, config: PipelineConfig) -> dict[str, Any]:
    """The work item of one video: identity, the questions to ask (run's, then the manifest's) and its key."""
    questions = list(dict.fromkeys([*config.questions, *source.questions]))
    return {
        LEDGER_KEY: ledger_key(config.config_key(), source.video_id, questions),
        "video_id": source.video_id,
        "source_uri": source.uri,
        "source_size": source.size,
        "source_etag": source.etag,
        "questions": questions,
    }


def decode_rows(
    row: dict[str, Any], config: PipelineConfig, frame_size: int, *, first_frame_only: bool = False
) -> Generator[dict[str, Any], None, None]:
    """Decode one video into segment rows (the decode stage; see the module docstring for the fields).

    Deterministic failures (:class:`~pipeline.decode.DecodeError`) and unexpected decoder exceptions become
    error rows: the whole video's when it cannot be opened, or one for the failing segment after the good
    ones. A storage's permanent answers (403, 404, other 4xx) are error rows too; a transient storage failure
    (5xx, throttling, a dropped connection) raises :class:`~pipeline.storage.TransientIOError`, which the Ray
    decode task retries (``pipeline/build.py``). All storage I/O happens before the first row is yielded.

    Args:
        row: a :func:`source_row`.
        config: the run's config (segmenting, guards, S3 options).
        frame_size: the model's frame side in pixels.
        first_frame_only: one row with the first decodable frame (the driver's preflight check).

    Yields:
        Segment rows in time order; the last one has ``last_segment=True``.
    """
    base = {LEDGER_KEY: row[LEDGER_KEY], **{k: row[k] for k in _VIDEO_FIELDS}, "questions": list(row["questions"])}
    uri = row["source_uri"]
    video: dict[str, Any] = dict.fromkeys(_INFO_FIELDS)
    previous: Segment | None = None
    sent = False
    local = uri
    deadline = deadline_after(config.max_decode_seconds)  # the download counts too
    try:
        fs = config.fsspec_filesystem(uri)
        with open_local_copy(uri, fs, max_bytes=config.max_video_bytes, deadline=deadline) as path:
            local = str(path)
            info, segments = decode_segments(
                path,
                frames_per_segment=config.frames_per_segment,
                segment_seconds=config.segment_seconds,
                size=frame_size,
                max_duration_s=config.max_duration_s,
                max_bytes=config.max_video_bytes,
                max_frames=config.max_frames,
                deadline=deadline,
                first_frame_only=first_frame_only,
            )
            video = _video_fields(info)
            for segment in segments:  # one segment of look-ahead, to flag the last one
                if previous is not None:
                    sent = True
                    yield _segment_row(base, video, previous, last=False)
                previous = segment
    except Exception as err:  # bad input never fails the job; the row records it
        if not sent and isinstance(err, TransientIOError):  # Ray retries the task; it had sent no row yet
            raise
        if not sent and isinstance(err, OSError) and storage_failure(err) == "transient":
            raise TransientIOError(f"{uri}: {err}") from err
        if not isinstance(err, DecodeError):
            logger.exception("unexpected %s decoding %s; recorded as an error row", type(err).__name__, uri)
        if previous is not None:
            yield _segment_row(base, video, previous, last=False)
        index = None if video["duration_s"] is None else (0 if previous is None else previous.index + 1)
        message = str(err).replace(local, uri)  # name the object, not its temporary local copy
        yield {**base, **video, **_no_segment(index), "error_class": type(err).__name__, "error_message": message}
        return
    if previous is not None:
        yield _segment_row(base, video, previous, last=True)


def _video_fields(info: VideoInfo) -> dict[str, Any]:
    return {
        "duration_s": info.duration_s,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
    }


def _segment_row(base: dict[str, Any], video: dict[str, Any], segment: Segment, last: bool) -> dict[str, Any]:
    return {
        **base,
        **video,
        "segment_index": segment.index,
        "segment_start_s": segment.start_s,
        "segment_end_s": segment.end_s,
        "frame_timestamps_s": list(segment.timestamps_s),
        "frames": segment.frames.tobytes(),  # uint8 [T, S, S, 3], C order
        "frames_shape": list(segment.frames.shape),
        LAST_SEGMENT: last,
        "error_class": None,
        "error_message": None,
    }


def _no_segment(index: int | None) -> dict[str, Any]:
    return {
        "segment_index": index,
        "segment_start_s": None,
        "segment_end_s": None,
        "frame_timestamps_s": [],
        "frames": b"",
        "frames_shape": [0],
        LAST_SEGMENT: True,
    }


class Predictor:
    """The model stage: a batch of segment rows in, result rows out (callable class for ``map_batches``).

    Each actor holds one :class:`~sparsevlm.engine.VideoQAEngine`. All prompts of the batch's decoded
    segments (the caption instruction, then each question) go into one batched ``generate``. Decode error
    rows pass through as error result rows; a failing ``generate`` turns its rows into error rows; a question
    the model cannot take (see the module docstring) becomes error rows without reaching ``generate``.

    Args:
        config: the run's config (model, SparseConfig, prompts, generation budget, CPU share).
        engine: an already built engine (tests); default: load ``config.model``.

    Raises:
        PromptError: the caption prompt or one of ``config.questions`` cannot be asked (every row would fail).
    """

    def __init__(self, config: PipelineConfig, engine: VideoQAEngine | None = None) -> None:
        # The actor's CPU share is its thread budget: more threads than reserved CPUs starve the decoders.
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.engine = engine or VideoQAEngine.from_pretrained(
            config.model, config.sparse_config(), device=config.device, dtype=config.dtype
        )
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
            frames = [_frames(rows[tasks[k][0]]) for k in asked]
            prompts = [tasks[k][2] for k in asked]
            try:
                answers.update(zip(asked, self.engine.answer(frames, prompts, self.config.max_new_tokens), strict=True))
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
            **{k: row[k] for k in (*_VIDEO_FIELDS, *_INFO_FIELDS)},
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
        )


def _error_fields(err: BaseException) -> dict[str, Any]:
    return {"status": "error", "error_class": type(err).__name__, "error_message": str(err)}


def _frames(row: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(row["frames"], dtype=np.uint8).reshape(row["frames_shape"])  # [T, S, S, 3], read-only
