"""PipelineConfig: everything one run needs, validated once at the boundary, and the parts each stage gets.
No Ray here.

The config is the flat, typed thing the jobs' flags fill; the driver (pipeline/run.py) holds it. Each stage
receives only its part, a small frozen dataclass made by a property of the config: :class:`StorageAccess` (how
to reach object storage; every task makes its own file systems from it), :class:`OutputTarget` (where results
go), :class:`DecodeSettings` (segmenting and the decode guards), :class:`ModelSettings` (which model, in what
form, where) and :class:`AnswerSettings` (what is asked and how long answers may be). The parts are picklable,
so they travel to the Ray workers instead of live objects.

Making a config does no I/O: the model's revision, part of the config key, is read from the checkpoint by
:meth:`PipelineConfig.resolved`, which the driver calls (``run_pipeline``, ``plan_run``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pyarrow.fs as pafs

from pipeline.commit.ledger_files import PARTITION
from pipeline.commit.revision import model_revision
from pipeline.harness.standin import StandInCost
from pipeline.stages.schema import KEYED_SCHEMA_VERSION, SCHEMA_VERSION
from pipeline.stages.shots import SegmentBy, ShotSegmenting
from pipeline.stages.sources import check_scheme
from pipeline.stages.storage import arrow_filesystem, s3_filesystem
from pipeline.stages.video import DEFAULT_MAX_DECODE_S, DEFAULT_MAX_FRAMES
from sparsevlm.config import DEFAULT_PRESET, PRESETS, SparseConfig
from sparsevlm.engine_types import DTYPE_NAMES, DtypeName
from sparsevlm.prompt_text import CAPTION_PROMPT, SUMMARY_PROMPT
from sparsevlm.tiny import bundled_label, resolve_model

__all__ = [
    "PIPELINE_VERSION",
    "UNRESOLVED",
    "AnswerSettings",
    "DecodeSettings",
    "ModelSettings",
    "OutputTarget",
    "PipelineConfig",
    "StorageAccess",
    "new_run_id",
]

# model_revision before PipelineConfig.resolved has read it (no revision string looks like this).
UNRESOLVED = "(unresolved)"


# A run id names the run manifest _runs/<run_id>.json: one path component, never "..", "/" or a leading ".".
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def _package_version() -> str:
    try:
        return version("sparse-video-llava")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


PIPELINE_VERSION = f"{_package_version()}+schema{SCHEMA_VERSION}"


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sortable by start time, unique across concurrent drivers."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class StorageAccess:
    """How to reach object storage: the endpoint and the s3fs options (never printed). Picklable; each task makes
    its own file systems from it."""

    s3_endpoint_url: str | None = None
    s3_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def fsspec(self, uri: str) -> Any:
        """An fsspec filesystem for an s3:// URI (None for local paths), for listing and decoding inputs."""
        if check_scheme(uri) != "s3":
            return None
        return s3_filesystem(self.s3_endpoint_url, self.s3_options)

    def arrow(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem and base path of ``uri`` (S3 goes through s3fs, so the same endpoint and
        credential options apply to inputs and outputs)."""
        return arrow_filesystem(uri, self.fsspec(uri))


@dataclass(frozen=True)
class OutputTarget:
    """Where results go: the output URI, how to reach it, and the partition folder of this run's part files."""

    uri: str
    storage: StorageAccess
    partition: str | None = None

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem and base path of the output."""
        return self.storage.arrow(self.uri)


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode stage needs: segmenting, frames per segment, the guards, and how to read the inputs."""

    segment_seconds: float | None
    shots: ShotSegmenting | None
    frames_per_segment: int
    max_video_bytes: int | None
    max_duration_s: float | None
    max_frames: int | None
    max_decode_seconds: float | None
    storage: StorageAccess

    def first_frame(self) -> DecodeSettings:
        """The same guards for a check that decodes one frame of one segment (the driver's preflight)."""
        return dataclasses.replace(self, segment_seconds=None, shots=None, frames_per_segment=1)


@dataclass(frozen=True)
class ModelSettings:
    """Which model the model actors load and how: the checkpoint, what rows call it and its revision, the
    SparseConfig, dtype and device, the actor's torch threads; or a stand-in (benchmarks, tests)."""

    model: str
    label: str
    revision: str | None
    sparse: SparseConfig
    dtype: DtypeName
    device: str
    torch_threads: int
    stand_in: StandInCost | None = None


@dataclass(frozen=True)
class AnswerSettings:
    """What the model stages ask and how: the caption instruction and questions, frames per segment (prompts
    are checked against the context with them), the generation budget, the shadow sample's share, the summary
    instruction, prompts per ``generate`` call, and the run id the rows carry."""

    caption_prompt: str
    questions: tuple[str, ...]
    frames_per_segment: int
    max_new_tokens: int
    repeat_stop: int
    shadow_fraction: float
    summary_prompt: str
    call_size: int
    run_id: str


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run.

    Attributes:
        input_uri: local folder, file:// or s3:// prefix, or a manifest (.txt/.lst/.csv/.parquet); see
            :func:`pipeline.stages.sources.list_sources`.
        output_uri: local folder or s3://bucket/prefix for the Parquet result files and the ledger.
        model: Video-LLaVA checkpoint directory or hub id (safetensors only); a bundled checkpoint's label
            (``bundled:tiny-synthetic``, :data:`sparsevlm.tiny.BUNDLED_LABELS`) is replaced by its directory, so
            the label and the path give the same config key. Results name the model :attr:`model_label`.
        questions: asked about every segment, after the caption; manifests may add per-video questions.
        caption_prompt: the instruction of the caption task.
        segment_seconds: segment length; None treats each video as one segment. Not used with ``shots``.
        shots: segment each video at its shots instead (:class:`pipeline.stages.shots.ShotSegmenting`: cut detection,
            shortest and longest segment); None (the default) keeps ``segment_seconds``' fixed segments.
        frames_per_segment: frames sampled per segment (the model's T).
        max_new_tokens: generation budget per answer.
        repeat_stop: when > 0, an answer stops once it ends with the same 1 to ``repeat_stop`` tokens twice
            in a row, keeping the first copy (sparsevlm/repetition.py); 0 (the default) generates on.
        dtype: model weight dtype, one of :data:`sparsevlm.engine_types.DTYPE_NAMES` (``auto``: bf16 or fp16 on GPUs).
        sparse: the model stage's :class:`~sparsevlm.config.SparseConfig` (a preset:
            ``SparseConfig.preset("video-10")``; or a custom one; its ``name`` is written to every row).
        workers: model actors (one engine each).
        num_gpus_per_worker: GPUs per model actor (1 in production; 0 runs the model on CPU; None: 1 when the
            Ray cluster has a GPU, else 0, decided by ``run_pipeline`` once Ray is up, the jobs' default).
        cpus_per_worker: CPUs reserved per model actor; also its torch thread count.
        decode_cpus: CPUs per decode task.
        batch_size: segments per model call; each brings ``1 + len(questions)`` prompts into one ``generate``.
        max_video_bytes: larger videos become error rows (None disables the guard).
        max_duration_s: longer videos become error rows (None disables the guard).
        max_frames: videos with more frames become ``TooLarge`` error rows (None disables the guard).
        max_decode_seconds: wall-clock limit for one video, its download included; past it the video's
            remaining segments become one ``Timeout`` error row (None: no limit). Checked between chunks,
            packets, frames and segments.
        s3_endpoint_url: an S3-compatible endpoint (e.g. ``http://127.0.0.1:9000``); None means AWS.
        s3_options: extra s3fs options such as ``key``/``secret``/``client_kwargs``; default: the AWS
            credential chain of the environment. Never printed or written (credentials belong there, in the
            environment or in an instance role: URIs and the endpoint carrying a user name or password are refused).
        run_id: identifies this run in every row and names its manifest ``_runs/<run_id>.json`` (letters,
            digits, ``_ . : -``; at most 128).
        retry_errors: reprocess videos whose committed rows are errors (e.g. after installing a codec).
        preflight_videos: the driver decodes the first frame of a sample of this many pending videos (spread
            over the run, not the first in URI order; entries known to be missing are left to their error rows)
            before starting the model; if none decodes it tries the other pending videos, and stops the run
            with one message only when none of them decodes (0 disables).
        ray_address: Ray cluster to connect to when Ray is not initialised yet (None: a local Ray).
        partition: a hive partition folder such as ``dt=2026-11-22`` for this run's part files (nightly
            indexing); the ledger stays at the output root, so runs into different partitions skip each
            other's videos.
        io_retries: how often Ray retries a decode task after a transient storage failure (5xx, throttling,
            a dropped connection; :class:`pipeline.stages.storage.TransientIOError`), each attempt with the storage
            client's own retries and backoff inside; also bounds retries after a lost worker. Permanent answers
            (403, 404) are error rows, never retried.
        shadow_fraction: the share of segments (in [0, 1]) whose answered prompts the model answers again under the
            ``dense`` preset, in the same actor, to measure how often the sparse answers agree with dense ones
            (:mod:`pipeline.observability.quality`); 0 (the default here; the jobs' ``--shadow-fraction`` defaults to
            0.02) turns it off. A segment is sampled by a hash of its ledger key and index, so a rerun samples the same.
            Not part of the config key: the result rows are the same with or without the sample (the dense answers go to
            the quality table), so changing it never reprocesses a video; a video committed earlier keeps the sample it
            was committed with.
        summarize: after the segments, give each video of two or more segments whose rows are all ``ok`` one
            ``summary`` row: its segment captions in order, as text, to the same model's language side, answered
            under ``summary_prompt`` (:mod:`pipeline.stages.summary`). Each summary has its own ledger key (from the
            video's key and the instruction), so it is committed exactly once, a rerun skips it, and turning it on
            over an existing output summarizes the videos committed before without reprocessing them. Not part of
            the config key: the videos' rows are the same with or without it.
        summary_prompt: the instruction after the captions of the ``summary`` task.
        model_revision: what ``model`` is right now (:func:`pipeline.commit.revision.model_revision`: a hub
            snapshot's commit hash, or a content hash of a local checkpoint), read by :meth:`resolved` (the
            driver calls it; :data:`UNRESOLVED` until then, and again after ``replace(model=...)``), carried as it
            is to the workers; part of the config key and of every row, so a changed checkpoint under the same name
            is processed again. The config key and :attr:`model_settings` refuse an unresolved config.
        allow_prefixes: local folders or s3://bucket/prefix locations a manifest's entries may name besides
            the manifest's own folder (by default a manifest reads only below its own folder, in its own
            bucket; see :mod:`pipeline.stages.sources`).
        split_video_bytes: a video larger than this is decoded by ``ceil(size / split_video_bytes)`` tasks (at
            most 16), each over its share of the segments, so one long video keeps every decoder busy; rows and
            the commit stay per video (:mod:`pipeline.stages.split`). None: one task per video. Not part of the config
            key: the rows are the same.
        stand_in: benchmarks and tests only: model actors that spend this cost model's time on a stand-in accelerator
            (one unit of the Ray resource ``stand_in_accelerator`` each, no CPU) instead of loading ``model``
            (:mod:`pipeline.harness.standin`); its rows answer ``[stand-in]`` and its cost is part of the config key, so
            they never mix with real results. None (the default): the real model.
    """

    input_uri: str
    output_uri: str
    model: str
    questions: tuple[str, ...] = ()
    caption_prompt: str = CAPTION_PROMPT
    segment_seconds: float | None = 10.0
    shots: ShotSegmenting | None = None
    frames_per_segment: int = 8
    max_new_tokens: int = 64
    repeat_stop: int = 0
    dtype: DtypeName = "auto"
    sparse: SparseConfig = field(default_factory=lambda: SparseConfig.preset(DEFAULT_PRESET))
    workers: int = 1
    num_gpus_per_worker: float | None = 0.0
    cpus_per_worker: float = 1.0
    decode_cpus: float = 1.0
    batch_size: int = 4
    max_video_bytes: int | None = 20 * 2**30
    max_duration_s: float | None = 6 * 3600.0
    max_frames: int | None = DEFAULT_MAX_FRAMES
    max_decode_seconds: float | None = DEFAULT_MAX_DECODE_S
    s3_endpoint_url: str | None = None
    s3_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    run_id: str = field(default_factory=new_run_id)
    retry_errors: bool = False
    preflight_videos: int = 3
    ray_address: str | None = None
    partition: str | None = None
    allow_prefixes: tuple[str, ...] = ()
    io_retries: int = 3
    split_video_bytes: int | None = 256 * 2**20
    stand_in: StandInCost | None = None
    shadow_fraction: float = 0.0
    summarize: bool = False
    summary_prompt: str = SUMMARY_PROMPT
    model_revision: str | None = UNRESOLVED

    def __post_init__(self) -> None:
        for name in ("input_uri", "output_uri", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        object.__setattr__(self, "model", resolve_model(self.model))
        check_scheme(self.input_uri)
        check_scheme(self.output_uri)
        allow_prefixes = (self.allow_prefixes,) if isinstance(self.allow_prefixes, str) else self.allow_prefixes
        object.__setattr__(self, "allow_prefixes", tuple(allow_prefixes))
        for prefix in self.allow_prefixes:
            if not isinstance(prefix, str) or not prefix.strip():
                raise ValueError(f"allow_prefixes must be non-empty strings, got {self.allow_prefixes!r}")
            check_scheme(prefix)
        if self.s3_endpoint_url is not None and "@" in self.s3_endpoint_url:
            raise ValueError(
                "s3_endpoint_url must not carry a user name or password (it is printed with the config); pass "
                "credentials through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role"
            )
        if not isinstance(self.run_id, str) or not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(
                f"run_id names the file _runs/<run_id>.json, so it must be letters, digits and _ . : - (at most 128, "
                f"starting with a letter or digit), got {self.run_id!r}"
            )
        questions = tuple(self.questions)
        object.__setattr__(self, "questions", questions)
        if any(not isinstance(q, str) or not q.strip() for q in questions):
            raise ValueError(f"questions must be non-empty strings, got {questions!r}")
        if len(set(questions)) != len(questions):
            raise ValueError(f"questions repeat: {questions!r}; each question gives one row per segment")
        if not self.caption_prompt.strip():
            raise ValueError("caption_prompt must not be empty")
        if not isinstance(self.summary_prompt, str) or not self.summary_prompt.strip():
            raise ValueError(f"summary_prompt must be a non-empty string, got {self.summary_prompt!r}")
        if self.segment_seconds is not None and not self.segment_seconds > 0:
            raise ValueError(f"segment_seconds must be > 0 or None (whole video), got {self.segment_seconds!r}")
        if self.shots is not None and not isinstance(self.shots, ShotSegmenting):
            raise ValueError(f"shots must be a pipeline.stages.shots.ShotSegmenting or None, got {self.shots!r}")
        positive_ints = ("frames_per_segment", "max_new_tokens", "workers", "batch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.num_gpus_per_worker is not None and not self.num_gpus_per_worker >= 0:
            gpus = self.num_gpus_per_worker
            raise ValueError(f"num_gpus_per_worker must be >= 0 or None (Ray decides), got {gpus!r}")
        for name in ("cpus_per_worker", "decode_cpus"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_video_bytes", "max_duration_s", "max_frames", "max_decode_seconds", "split_video_bytes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None (no limit), got {value!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if not isinstance(self.repeat_stop, int) or isinstance(self.repeat_stop, bool) or self.repeat_stop < 0:
            raise ValueError(f"repeat_stop must be an int >= 0 (0: off), got {self.repeat_stop!r}")
        if not isinstance(self.io_retries, int) or isinstance(self.io_retries, bool) or self.io_retries < 0:
            raise ValueError(f"io_retries must be an int >= 0, got {self.io_retries!r}")
        if isinstance(self.shadow_fraction, bool) or not 0 <= self.shadow_fraction <= 1:
            raise ValueError(
                f"shadow_fraction must be a number in [0, 1] (0: no shadow dense sample), got {self.shadow_fraction!r}"
            )
        if self.preflight_videos < 0:
            raise ValueError(f"preflight_videos must be >= 0, got {self.preflight_videos!r}")
        if not isinstance(self.sparse, SparseConfig):
            raise ValueError(
                f"sparse must be a SparseConfig, got {self.sparse!r}; for a preset use SparseConfig.preset(name) "
                f"with one of {', '.join(PRESETS)}"
            )
        if self.stand_in is not None and not isinstance(self.stand_in, StandInCost):
            raise ValueError(f"stand_in must be a pipeline.harness.standin.StandInCost or None, got {self.stand_in!r}")
        if self.stand_in is not None and (self.num_gpus_per_worker or 0) > 0:
            raise ValueError("a stand-in accelerator takes no GPU: set num_gpus_per_worker=0 with stand_in")
        if self.partition is not None and not PARTITION.fullmatch(self.partition):
            raise ValueError(f"partition must look like name=value (letters, digits, _ . -), got {self.partition!r}")

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with some fields changed (validated again); another ``model`` is unresolved again."""
        if "model" in changes and "model_revision" not in changes:
            changes["model_revision"] = UNRESOLVED
        return dataclasses.replace(self, **changes)

    def resolved(self) -> PipelineConfig:
        """This config with ``model_revision`` read from the checkpoint now
        (:func:`pipeline.commit.revision.model_revision`: a hub snapshot's commit hash or a content hash of a local
        checkpoint; None when it cannot be known). The driver calls it: reading the checkpoint is I/O."""
        return dataclasses.replace(self, model_revision=model_revision(self.model))

    @property
    def storage(self) -> StorageAccess:
        """How the stages reach object storage."""
        return StorageAccess(self.s3_endpoint_url, self.s3_options)

    @property
    def output(self) -> OutputTarget:
        """Where the commit stage writes."""
        return OutputTarget(self.output_uri, self.storage, self.partition)

    @property
    def decoding(self) -> DecodeSettings:
        """The decode stage's settings."""
        return DecodeSettings(
            segment_seconds=self.segment_seconds,
            shots=self.shots,
            frames_per_segment=self.frames_per_segment,
            max_video_bytes=self.max_video_bytes,
            max_duration_s=self.max_duration_s,
            max_frames=self.max_frames,
            max_decode_seconds=self.max_decode_seconds,
            storage=self.storage,
        )

    @property
    def model_settings(self) -> ModelSettings:
        """The model actors' model (its revision resolved: see :meth:`resolved`)."""
        return ModelSettings(
            model=self.model,
            label=self.model_label,
            revision=self._revision(),
            sparse=self.sparse,
            dtype=self.dtype,
            device=self.device,
            torch_threads=self.torch_threads,
            stand_in=self.stand_in,
        )

    @property
    def answering(self) -> AnswerSettings:
        """What the model actors ask, and how long their answers and calls may be."""
        return AnswerSettings(
            caption_prompt=self.caption_prompt,
            questions=self.questions,
            frames_per_segment=self.frames_per_segment,
            max_new_tokens=self.max_new_tokens,
            repeat_stop=self.repeat_stop,
            shadow_fraction=self.shadow_fraction,
            summary_prompt=self.summary_prompt,
            call_size=self.batch_size * (1 + len(self.questions)),
            run_id=self.run_id,
        )

    def _revision(self) -> str | None:
        if self.model_revision == UNRESOLVED:
            raise ValueError(
                f"the revision of model {self.model!r} is not read yet; call config.resolved() first (the driver, "
                "run_pipeline and plan_run, does)"
            )
        return self.model_revision

    @property
    def model_label(self) -> str:
        """What results call the model (rows' ``model_id``, the summary, the report page): ``bundled:...`` for a
        bundled checkpoint, else ``model`` as given. Not part of the config key (``model`` is)."""
        return bundled_label(self.model) or self.model

    @property
    def segment_by(self) -> SegmentBy:
        """How videos are segmented: ``fixed`` (``segment_seconds``) or ``shots`` (``shots``)."""
        return "fixed" if self.shots is None else "shots"

    @property
    def device(self) -> str:
        """Where the model runs: "cuda" when workers get GPUs, else "cpu"."""
        return "cuda" if (self.num_gpus_per_worker or 0) > 0 else "cpu"

    @property
    def torch_threads(self) -> int:
        """Intra-op threads of one model actor: its CPU share, at least 1 (no oversubscription)."""
        return max(1, int(self.cpus_per_worker))

    def config_key(self) -> str:
        """Hash of everything that changes the rows of a video (not resources, paths or the run id).

        Two runs with the same key produce the same rows for the same video version, so the ledger lets the
        second skip it; any change here (the model's revision, or its name when it has none, its dtype,
        SparseConfig, segmenting, prompts, schema) reprocesses. The checkpoint's path is not keyed: the same
        weights from another checkout or image skip what they already did (keys made before this rule, which
        hashed the path too, differ: such outputs are reprocessed once). ``shadow_fraction`` is not keyed: the
        sample changes no result row (see its attribute). ``auto`` is keyed as written: it
        resolves per GPU (bf16, or fp16 without native bf16), so a cluster that mixes such GPUs should name the
        dtype. Segmenting by shots keys the mode and its parameters in place of ``segment_seconds``; fixed
        segments key exactly what they keyed before shots existed, so their outputs are not reprocessed.
        """
        # The model by its content: the same weights from another path or image reuse the rows; the name
        # keys only a model whose revision cannot be known (rows keep model_id as given either way).
        revision = self._revision()
        model = {"model_revision": revision} if revision else {"model": self.model}
        material: dict[str, Any] = {
            **model,
            "dtype": self.dtype,
            "sparse": self.sparse.to_json(),
            "segment_seconds": self.segment_seconds,
            "frames_per_segment": self.frames_per_segment,
            "max_new_tokens": self.max_new_tokens,
            "caption_prompt": self.caption_prompt,
            "questions": list(self.questions),
            "schema": KEYED_SCHEMA_VERSION,
        }
        if self.repeat_stop:  # keyed only when on, so that configs without it keep their keys
            material["repeat_stop"] = self.repeat_stop
        if self.stand_in is not None:  # only then: real runs keep their keys
            material["stand_in"] = dataclasses.asdict(self.stand_in)
        if self.shots is not None:  # only then: fixed-length runs keep their keys, and segment_seconds is unused
            del material["segment_seconds"]
            material["segment_by"] = self.segment_by
            material["shots"] = dataclasses.asdict(self.shots)
        return hashlib.sha1(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
