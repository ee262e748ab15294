"""The ``summary`` task: one row per video of several segments, its captions in order read by the same model's
language side as text. No Ray here (pipeline/build.py wires it; pipeline/run.py runs it after the segments).

Which videos: those of the run's listing whose own key is committed with every row ``ok`` and two or more
segments (:func:`summary_work`). A video with error rows gets none until a run with ``retry_errors`` makes it
whole: a summary of some of its parts would read as one of all of them.

Exactly once. A summary is committed under its own ledger key, :func:`summary_key` of the video's key and the
instruction, by the same commit protocol as a video (pipeline/commit/ledger.py: staged as one whole-video row,
then part file, then marker; its record says ``kind: "summary"``). A rerun skips it; a changed caption config,
model or instruction is another key. Turning ``--summarize`` on over an existing output summarizes the videos
committed earlier without reprocessing them.

The text. Each caption with its time range, in order, then the instruction::

    Descriptions of the consecutive parts of one video, in order:
    [0:00-0:10] A man opens a door.
    [0:10-0:20] He walks into a kitchen.
    Summarize the whole video in a few sentences.

Long videos. When the captions and the answer do not fit the model's context, they are cut into consecutive
runs that fit (:func:`chunk_clips`); each run is summarized with the same instruction, and the partial
summaries, with the time ranges they cover, are summarized again, until one prompt holds them all. Every level
lowers the count, or the video gets an error row (``SummaryTooLong``) instead of a loop.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.commit.ledger import Ledger, ledger_key
from pipeline.commit.ledger_index import LedgerEntry
from pipeline.config import AnswerSettings, ModelSettings, OutputTarget
from pipeline.error_lines import short_error
from pipeline.stages.schema import (
    INFO_FIELDS,
    LAST_SEGMENT,
    LEDGER_KEY,
    SEGMENT_ROWS,
    SUMMARY_TASK,
    VIDEO_FIELDS,
    empty_row,
    rows_to_table,
)
from pipeline.stages.storage import TransientIOError, storage_failure

logger = logging.getLogger(__name__)

__all__ = [
    "Clip",
    "Summarizer",
    "SummaryTooLong",
    "chunk_clips",
    "read_clips",
    "summary_key",
    "summary_text",
    "summary_work",
]

HEADER = "Descriptions of the consecutive parts of one video, in order:"
# The layout of the text above; part of the summary key, so a change of it summarizes again.
TEXT_VERSION = "1"
CLIPS = "clips_json"  # the work row's captions: a JSON list of [start_s, end_s, text]
SOURCE_FIELDS = (*VIDEO_FIELDS, *INFO_FIELDS)  # what the summary row copies from the video's rows


class Clip(NamedTuple):
    """One caption (or a partial summary) and the time range of the video it describes."""

    start_s: float
    end_s: float
    text: str


class SummaryTooLong(ValueError):
    """Two captions and the answer do not fit the model's context together, so no summary can be made."""


def summary_key(video_key: str, video_id: str, instruction: str) -> str:
    """The ledger key of a video's summary: the video's key (model, config, questions, video version), the
    instruction and the text's layout; the same ``<video_id>-<16 hex>`` form as a video's key."""
    return ledger_key(video_key, video_id, [SUMMARY_TASK, TEXT_VERSION, instruction])


def summary_text(clips: Sequence[Clip], instruction: str) -> str:
    """The prompt of one summary call: the header, one ``[m:ss-m:ss] text`` line per clip, the instruction."""
    lines = [f"[{_clock(c.start_s)}-{_clock(c.end_s)}] {' '.join(c.text.split())}" for c in clips]
    return "\n".join([HEADER, *lines, instruction])


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def chunk_clips(clips: Sequence[Clip], instruction: str, fits: Callable[[str], bool]) -> list[list[Clip]]:
    """Cut ``clips`` into consecutive runs whose :func:`summary_text` ``fits`` (greedy, in order): one run when
    they all fit.

    Raises:
        SummaryTooLong: no two neighbouring clips fit one prompt together, so another level of summaries would
            not shorten the text.
    """
    if not clips:
        raise ValueError("a summary needs at least one clip")
    runs: list[list[Clip]] = [[clips[0]]]
    for clip in clips[1:]:
        if fits(summary_text([*runs[-1], clip], instruction)):
            runs[-1].append(clip)
        else:
            runs.append([clip])
    if len(runs) == len(clips) > 1:
        raise SummaryTooLong(
            f"no two of the {len(clips)} captions fit one prompt of the model's context together with the answer's "
            "max_new_tokens, so summaries of summaries would not get shorter; lower --max-new-tokens (a caption is "
            "at most that long)"
        )
    return runs


def summary_work(
    prompt: str, retry_errors: bool, video_keys: Sequence[str], ledger: Ledger, done: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, LedgerEntry]]:
    """The summaries a run must make: one work item per committed video of ``video_keys`` with every row ``ok``
    and two or more segments whose summary key (under the instruction ``prompt``) is pending (``done``:
    :meth:`Ledger.committed`; a summary with an error row again with ``retry_errors``), and the record of each
    retried one as it was (its old part file is replaced)."""
    videos = [e for e in ledger.entries(k for k in video_keys if done.get(k) == "ok").values() if e.segments >= 2]
    keys = {summary_key(e.key, e.video_id, prompt): e for e in videos}
    pending = ledger.pending(keys, retry_errors, done)
    items = [{LEDGER_KEY: k, "file": keys[k].file, "source_uri": keys[k].source_uri} for k in pending]
    return items, ledger.entries(k for k in pending if k in done)


def read_clips(item: dict[str, Any], output: OutputTarget) -> dict[str, Any]:
    """A work item of :func:`summary_work` with its video's captions in order (:data:`CLIPS`) and the fields the
    summary row copies, read from the video's part file (one GET of its caption columns).

    A part file that is gone (a reconcile after its video was retried) gives a row with ``error`` set, so the
    summary becomes an error row; a transient storage failure raises :class:`TransientIOError` (Ray retries).
    """
    fs, base = output.filesystem()
    columns = [*SOURCE_FIELDS, "segment_index", "segment_start_s", "segment_end_s", "task", "status", "answer"]
    try:
        rows = pq.read_table(posixpath.join(base, item["file"]), filesystem=fs, columns=columns)
    except OSError as err:
        if storage_failure(err) == "transient":
            raise TransientIOError(f"reading {item['file']} for its summary: {short_error(err)}") from err
        return {**item, **dict.fromkeys(SOURCE_FIELDS), CLIPS: "[]", "error": f"{type(err).__name__}: {err}"}
    captions = rows.filter(pc.equal(rows["task"], "caption")).sort_by("segment_index")
    clips = [
        [r["segment_start_s"], r["segment_end_s"], r["answer"] or ""]
        for r in captions.select(["segment_start_s", "segment_end_s", "answer"]).to_pylist()
    ]
    first = rows.slice(0, 1).select(list(SOURCE_FIELDS)).to_pylist()[0]
    return {**item, **first, CLIPS: json.dumps(clips), "error": None}


class Summarizer:
    """The summary stage: work rows with their captions (:func:`read_clips`) in, one ``summary`` result row each out,
    with the ledger's internal columns (callable class for ``map_batches``, one engine per actor).

    All prompts of a level (every video's runs of captions, :func:`chunk_clips`) go into batched text-only
    ``generate`` calls (``VideoQAEngine.answer_text``) of at most ``batch_size x (1 + questions)`` prompts, the model
    stage's call size. A failing call gives its videos error rows.

    Args:
        model: the model, as the model stage loads it (``PipelineConfig.model_settings``).
        answering: the instruction, the generation budget, the call size (``PipelineConfig.answering``).
        engine: an already built engine (tests); default: load ``model`` as the model stage does.
    """

    def __init__(self, model: ModelSettings, answering: AnswerSettings, engine: Any = None) -> None:
        import torch

        from pipeline.stages.predictor import load_engine, provenance  # torch: the model actors only

        torch.set_num_threads(model.torch_threads)  # as the model stage: no more threads than reserved CPUs
        self.config = answering
        self.engine = engine or load_engine(model)
        self._provenance = provenance(self.engine, model, answering)
        self._call_size = answering.call_size

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        rows = table.to_pylist()
        level: dict[int, list[Clip]] = {}
        outcome: dict[int, dict[str, Any]] = {}
        spent = dict.fromkeys(range(len(rows)), (0.0, 0.0))  # per row: model ms, prefill FLOPs
        captions = [[Clip(*c) for c in json.loads(row[CLIPS])] for row in rows]
        for i, (row, clips) in enumerate(zip(rows, captions, strict=True)):
            if row["error"] is not None:
                outcome[i] = _error("PartFileMissing", f"the video's part file {row['file']}: {row['error']}")
            elif len(clips) < 2:
                outcome[i] = _error("NoCaptions", f"{row['file']} holds {len(clips)} caption rows, not 2 or more")
            else:
                level[i] = clips
        while level:
            level = self._level(level, outcome, spent)
        out = rows_to_table([self._row(rows[i], captions[i], outcome[i], *spent[i]) for i in range(len(rows))])
        out = out.append_column(LEDGER_KEY, pa.array([r[LEDGER_KEY] for r in rows], pa.string()))
        out = out.append_column(LAST_SEGMENT, pa.array([True] * len(rows), pa.bool_()))
        return out.append_column(SEGMENT_ROWS, pa.array([1] * len(rows), pa.int64()))

    def _level(
        self,
        level: dict[int, list[Clip]],
        outcome: dict[int, dict[str, Any]],
        spent: dict[int, tuple[float, float]],
    ) -> dict[int, list[Clip]]:
        """Answer one level of every pending video; return the videos that need another (their partial summaries),
        having put the finished ones and the failures into ``outcome``."""
        budget = self.config.max_new_tokens
        context = getattr(self.engine, "context", None)

        def fits(text: str) -> bool:
            return context is None or self.engine.text_length(text) + budget <= context

        runs: list[tuple[int, list[Clip]]] = []
        for i, clips in level.items():
            try:
                runs.extend((i, run) for run in chunk_clips(clips, self.config.summary_prompt, fits))
            except SummaryTooLong as err:
                outcome[i] = _error(type(err).__name__, str(err))
        answers: dict[int, list[Clip]] = {}
        for start in range(0, len(runs), self._call_size):
            call = runs[start : start + self._call_size]
            prompts = [summary_text(run, self.config.summary_prompt) for _, run in call]
            try:
                texts = self.engine.answer_text(prompts, budget, self.config.repeat_stop)
            except Exception as err:  # recorded per video; the run's other summaries go on
                logger.exception("a summary call of %d prompts failed; writing error rows", len(prompts))
                for i, _ in call:
                    outcome[i] = _error(type(err).__name__, str(err))
                continue
            for (i, run), answer in zip(call, texts, strict=True):
                ms, flops = spent[i]
                spent[i] = (ms + answer.latency_ms / len(call), flops + answer.stats.prefill_flops)
                answers.setdefault(i, []).append(Clip(run[0].start_s, run[-1].end_s, answer.text))
        following: dict[int, list[Clip]] = {}
        for i, parts in answers.items():
            if i in outcome:  # one of its runs failed
                continue
            if len(parts) == 1:
                outcome[i] = {"answer": parts[0].text}
            else:
                following[i] = parts
        return following

    def _row(
        self, row: dict[str, Any], clips: list[Clip], outcome: dict[str, Any], model_ms: float, flops: float
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            **{k: row[k] for k in SOURCE_FIELDS},
            "segment_start_s": clips[0].start_s if clips else None,
            "segment_end_s": clips[-1].end_s if clips else None,
            "task": SUMMARY_TASK,
            "question": self.config.summary_prompt,
            **self._provenance,
        }
        if fields["video_id"] is None:  # the part file could not be read: the work item names the video
            fields["video_id"] = row[LEDGER_KEY].rsplit("-", 1)[0]
            fields["source_uri"] = row["source_uri"]
        if "error_class" in outcome:
            return empty_row(**fields, **outcome)
        return empty_row(
            **fields,
            **outcome,
            visual_tokens_in=0,
            equivalent_tokens=0.0,
            prefill_flops=flops,
            dense_prefill_flops=flops,
            latency_ms=model_ms,
        )


def _error(error_class: str, message: str) -> dict[str, Any]:
    return {"status": "error", "error_class": error_class, "error_message": message}
