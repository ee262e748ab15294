"""VideoQAEngine: a Video-LLaVA checkpoint with SparseVLM, answering questions about video segments.

The engine is the only way the pipeline touches the model: it loads a checkpoint (a local directory, or a hub
id that is already in the local cache when running offline), checks that it is a safetensors Video-LLaVA,
prepares model-resolution uint8 frames exactly like CLIP's processor (:mod:`sparsevlm.preprocess`), builds
Video-LLaVA's single-turn prompt with the token ids the checkpoint was trained on (:mod:`sparsevlm.prompt`) and
runs one batched, left-padded, greedy ``generate`` per call under its :class:`~sparsevlm.config.SparseConfig`.
Weights load straight onto the target device in the chosen dtype (``auto``: bf16 on GPUs that have it, fp16 on
other GPUs, fp32 on CPU). Remote code is never trusted: every transformers call passes
``trust_remote_code=False``, and a checkpoint whose ``config.json`` or ``tokenizer_config.json`` maps classes to
its own code (``auto_map``) is refused rather than loaded as something its authors did not write.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
    VideoLlavaForConditionalGeneration,
)

from sparsevlm.checkpoint import read_checkpoint
from sparsevlm.config import SparseConfig
from sparsevlm.engine_types import (
    DTYPE_NAMES,
    DtypeName,
    EngineAnswer,
    ModelSpec,
    PromptError,
    PromptTooLong,
)
from sparsevlm.patch import apply_patch, last_stats
from sparsevlm.preprocess import normalize_uint8
from sparsevlm.prompt import PromptText, encode_text, left_pad, visual_positions
from sparsevlm.prompt_text import PLACEHOLDERS, build_prompt, text_prompt
from sparsevlm.repetition import RepeatStop, trim_repeat
from sparsevlm.stats import SampleStats, dense_stats
from sparsevlm.transfer import to_device

logger = logging.getLogger(__name__)

__all__ = ["VideoQAEngine", "inspect_checkpoint", "resolve_dtype"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The weight dtype for a ``--dtype`` value on ``device``.

    ``auto`` is bfloat16 on a CUDA GPU with native bf16 (compute capability 8.0 and up: A10G, L4, A100,
    H100), float16 on other CUDA GPUs (T4, V100: bf16 there is emulated and slow) and float32 elsewhere (CPU).

    Raises:
        ValueError: ``dtype`` is none of :data:`DTYPE_NAMES` (nor one of their torch dtypes).
    """
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    if dtype != "auto":
        return _DTYPES[str(dtype)]
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def inspect_checkpoint(model: str | os.PathLike[str]) -> ModelSpec:
    """Check a checkpoint without loading its weights (cheap: reads ``config.json`` and ``tokenizer_config.json``
    as JSON, torch-free: :func:`sparsevlm.checkpoint.read_checkpoint`).

    Args:
        model: a local directory or a hub id (resolved from the local cache when offline).

    Returns:
        The checkpoint's :class:`ModelSpec`.

    Raises:
        CheckpointError: the directory does not exist, has no Video-LLaVA config, has only pickled weights, or
            asks for its own code (``auto_map``).
    """
    return read_checkpoint(model).spec


class VideoQAEngine:
    """A sparsified Video-LLaVA that answers prompts about video segments in batches.

    Args:
        model: a ``VideoLlavaForConditionalGeneration`` (it is patched in place with ``sparse``).
        tokenizer: its tokenizer.
        sparse: the SparseConfig (or preset name) every call runs under.
        model_id: a label for results; defaults to the model config's ``_name_or_path``.
    """

    def __init__(
        self,
        model: VideoLlavaForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        sparse: SparseConfig | str = "dense",
        model_id: str | None = None,
    ) -> None:
        self.sparse = SparseConfig.preset(sparse) if isinstance(sparse, str) else sparse
        self.model = apply_patch(model.eval(), self.sparse)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:  # LLaMA tokenizers may ship without one; left padding is masked
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        vision: Any = model.config.vision_config
        self.spec = ModelSpec(
            model_id=model_id or str(getattr(model.config, "_name_or_path", "") or "in-memory"),
            frame_size=int(vision.image_size),
            patch_size=int(vision.patch_size),
        )
        text_config = getattr(model.config, "text_config", model.config)
        self._context: int | None = getattr(text_config, "max_position_embeddings", None)
        self._video_token_id = int(model.config.video_token_id)
        self._texts: dict[str, PromptText] = {}  # the same few prompts come back in every batch

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        sparse: SparseConfig | str = "dense",
        *,
        device: str = "cpu",
        dtype: DtypeName | torch.dtype = "auto",
        label: str | None = None,
    ) -> VideoQAEngine:
        """Load a safetensors Video-LLaVA checkpoint and its tokenizer.

        The weights go from the safetensors files straight to ``device`` (``device_map={"": device}``), in
        ``dtype``: no float32 or host-memory copy of the model on the way to a GPU.

        Args:
            model: a local checkpoint directory or a hub id (set ``HF_HUB_OFFLINE=1`` to use the cache only).
            sparse: SparseConfig or preset name.
            device: torch device for the model, e.g. ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
            dtype: ``"auto"`` (see :func:`resolve_dtype`), ``"bfloat16"``, ``"float16"`` or ``"float32"``.
            label: what results call the model (:attr:`model_id`); default: ``model`` as given.

        Raises:
            CheckpointError: see :func:`inspect_checkpoint`.
            ValueError: an unknown ``dtype``.
        """
        weights = resolve_dtype(dtype, device)
        spec = inspect_checkpoint(model)
        loaded: Any = VideoLlavaForConditionalGeneration.from_pretrained(
            spec.model_id,
            dtype=weights,
            device_map={"": device},
            use_safetensors=True,
            trust_remote_code=False,
            attn_implementation="sdpa",
        )
        tokenizer = AutoTokenizer.from_pretrained(spec.model_id, trust_remote_code=False)
        return cls(loaded, tokenizer, sparse, model_id=label or spec.model_id)

    @classmethod
    def from_model(
        cls,
        model: VideoLlavaForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        sparse: SparseConfig | str = "dense",
        model_id: str | None = None,
    ) -> VideoQAEngine:
        """Wrap an already built model (tests, notebooks)."""
        return cls(model, tokenizer, sparse, model_id)

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def prompt(self, question: str, num_frames: int) -> str:
        """The full prompt for ``num_frames`` frames at model resolution, as text."""
        return build_prompt(question, num_frames * self.spec.tokens_per_frame)

    def prompt_ids(self, question: str, num_frames: int) -> list[int]:
        """The token ids the engine sends for ``question`` about ``num_frames`` frames (see :mod:`sparsevlm.prompt`)."""
        return self._text(question).ids(self._video_token_id, num_frames * self.spec.tokens_per_frame)

    def _text(self, question: str) -> PromptText:
        if question not in self._texts:
            self._texts[question] = encode_text(self.tokenizer, question)
        return self._texts[question]

    def check_prompt(
        self, question: str, num_frames: int, max_new_tokens: int, sparse: SparseConfig | None = None
    ) -> None:
        """Refuse a question that cannot be asked about ``num_frames`` frames; never truncate it.

        The count is what the LLM really holds: every frame's visual tokens (as many as enter its first layer
        under this engine's SparseConfig, :func:`sparsevlm.prompt.visual_positions`; long-video mode's
        ``budget_frames`` sets a pruning budget but the layers before the first pruning layer still see every
        frame), the text tokens, and ``max_new_tokens``. ``sparse``: count under this SparseConfig instead of the
        engine's own (a call of :meth:`answer` under another one).

        Raises:
            PromptError: the question contains a ``<video>`` or ``<image>`` placeholder (tokens without features).
            PromptTooLong: the count exceeds ``max_position_embeddings`` (past it the model still runs but
                answers garbage), naming the limit and by how much to shorten it.
        """
        _refuse_placeholders(question, "question")
        if self._context is None:
            return
        text = len(self._text(question))
        visual = visual_positions(sparse or self.sparse, num_frames, self.spec.tokens_per_frame)
        needed = text + visual + max_new_tokens
        if needed > self._context:
            raise PromptTooLong(
                f"prompt does not fit the model's context of {self._context} tokens (max_position_embeddings): "
                f"with {num_frames} frames it is {visual} visual + {text} text tokens, plus "
                f"max_new_tokens={max_new_tokens}; shorten it by at least {needed - self._context} tokens or use "
                f"fewer frames: {question!r:.200}"
            )

    def prepare(self, frames: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP-normalise one segment of model-resolution frames.

        Args:
            frames: uint8 ``[T, S, S, 3]`` with ``S = spec.frame_size``.
            out: a float32 ``[T, 3, S, S]`` CPU tensor to write into (e.g. a row of a pinned batch).

        Returns:
            float32 ``[T, 3, S, S]`` (one row of ``pixel_values_videos``; ``out`` when given).
        """
        size = self.spec.frame_size
        if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frames [T, {size}, {size}, 3] at model resolution, got dtype={frames.dtype} "
                f"shape={tuple(frames.shape)}; resize with sparsevlm.resize.resize_and_crop_uint8 first"
            )
        return normalize_uint8(frames, out)

    def _pixels(self, segments: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """``pixel_values_videos`` of ``segments`` on ``device`` in the model's dtype.

        Each distinct segment (a segment asked several prompts comes once per prompt, as the same array) is
        normalised once, on the host in float32, straight into pinned memory on CUDA; it is copied without the
        host waiting, cast to the model's dtype on the device, and repeated there per prompt.

        Returns:
            ``[B, T, 3, S, S]``, row i from ``segments[i]``.
        """
        distinct = list({id(s): s for s in segments}.values())
        slot = {id(s): k for k, s in enumerate(distinct)}
        size = self.spec.frame_size
        shape = (len(distinct), int(segments[0].shape[0]), 3, size, size)  # [U, T, 3, S, S]
        host = torch.empty(shape, dtype=torch.float32, pin_memory=device.type == "cuda")
        for k, segment in enumerate(distinct):
            self.prepare(segment, out=host[k])
        on_device = to_device(host, device).to(self.model.dtype)
        if len(distinct) == len(segments):
            return on_device
        return on_device[to_device([slot[id(s)] for s in segments], device)]  # [B, T, 3, S, S]

    @torch.no_grad()
    def answer(
        self,
        segments: list[np.ndarray],
        prompts: list[str],
        max_new_tokens: int = 64,
        repeat_stop: int = 0,
        sparse: SparseConfig | None = None,
    ) -> list[EngineAnswer]:
        """Answer one prompt per segment with ONE batched greedy ``generate``.

        Args:
            segments: B uint8 arrays ``[T, S, S, 3]`` with the same T (row i is asked ``prompts[i]``).
            prompts: B questions or instructions (plain text; the template is added here).
            max_new_tokens: generation budget per answer.
            repeat_stop: when > 0, a row stops once its answer ends with the same 1 to ``repeat_stop`` tokens
                twice in a row, and keeps the first copy (sparsevlm/repetition.py); 0 generates on.
            sparse: run this call under another SparseConfig on the same weights (e.g. ``dense``, to compare
                a sample of answers with the unpruned model's without loading it twice); the engine's own
                config is back in place when the call returns, whatever happens. None: the engine's own.

        Returns:
            B answers in input order, each with its row's prefill statistics.

        Raises:
            PromptError: a prompt cannot be asked (see :meth:`check_prompt`); nothing runs.
        """
        if len(segments) != len(prompts) or not segments:
            raise ValueError(f"need one prompt per segment, got {len(segments)} segments and {len(prompts)} prompts")
        counts = {int(s.shape[0]) for s in segments}
        if len(counts) != 1:
            raise ValueError(f"all segments of one call must have the same frame count, got {sorted(counts)}")
        num_frames = int(segments[0].shape[0])
        for p in prompts:
            self.check_prompt(p, num_frames, max_new_tokens, sparse)
        pad = self.tokenizer.pad_token_id
        input_ids, attention_mask = left_pad([self.prompt_ids(p, num_frames) for p in prompts], int(pad))
        pixels = self._pixels(segments, self.model.device)  # [B, T, 3, S, S] in the model's dtype, on the device
        return self._generate(
            input_ids, attention_mask, max_new_tokens, repeat_stop, sparse, pixel_values_videos=pixels
        )

    @property
    def context(self) -> int | None:
        """The model's context window in tokens (``max_position_embeddings``); None when its config has none."""
        return self._context

    def text_length(self, prompt: str) -> int:
        """The tokens of :meth:`answer_text`'s prompt for ``prompt`` (the template included)."""
        return len(self._text_ids(prompt))

    def _text_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(text_prompt(prompt))["input_ids"])

    def check_text(self, prompt: str, max_new_tokens: int) -> None:
        """Refuse a text-only prompt that cannot be asked; never truncate it.

        Raises:
            PromptError: the prompt contains a ``<video>`` or ``<image>`` placeholder.
            PromptTooLong: its tokens plus ``max_new_tokens`` exceed the model's context.
        """
        _refuse_placeholders(prompt, "prompt")
        if self._context is None:
            return
        needed = self.text_length(prompt) + max_new_tokens
        if needed > self._context:
            raise PromptTooLong(
                f"prompt does not fit the model's context of {self._context} tokens (max_position_embeddings): "
                f"{needed - max_new_tokens} tokens plus max_new_tokens={max_new_tokens}; shorten it by at least "
                f"{needed - self._context} tokens: {prompt!r:.200}"
            )

    @torch.no_grad()
    def answer_text(self, prompts: list[str], max_new_tokens: int = 64, repeat_stop: int = 0) -> list[EngineAnswer]:
        """Answer text-only prompts (no video; e.g. a video's summary from its segments' captions, the
        pipeline's ``summary`` task) with ONE batched greedy ``generate`` on the same weights.

        With no visual token in the sequence the patched layers have nothing to prune, so every
        SparseConfig runs the same computation; the answers' statistics count no visual token.

        Args:
            prompts: B prompts (plain text; the template, :func:`~sparsevlm.prompt_text.text_prompt`, is added here).
            max_new_tokens: generation budget per answer.
            repeat_stop: as in :meth:`answer`.

        Raises:
            PromptError: a prompt cannot be asked (see :meth:`check_text`); nothing runs.
        """
        if not prompts:
            raise ValueError("need at least one prompt")
        for p in prompts:
            self.check_text(p, max_new_tokens)
        input_ids, attention_mask = left_pad([self._text_ids(p) for p in prompts], int(self.tokenizer.pad_token_id))
        text_config = getattr(self.model.config, "text_config", self.model.config)
        stats = dense_stats(text_config, torch.zeros_like(input_ids, dtype=torch.bool), attention_mask)
        return self._generate(input_ids, attention_mask, max_new_tokens, repeat_stop, None, stats)

    def _generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        repeat_stop: int,
        sparse: SparseConfig | None,
        stats: list[SampleStats] | None = None,
        **inputs: torch.Tensor,
    ) -> list[EngineAnswer]:
        """One greedy ``generate`` over left-padded rows (and ``inputs``, e.g. the pixels), decoded; each answer
        carries ``stats`` (default: the patched prefill's, which only a prefill with visual tokens records)."""
        device = self.model.device
        start = time.perf_counter()
        model: Any = self.model  # transformers types generate() for its mixin, not for the model class
        if sparse is not None:
            apply_patch(self.model, sparse)  # replaces the patched model's config: no copy of the weights
        try:
            out = model.generate(
                input_ids=to_device(input_ids, device),
                attention_mask=to_device(attention_mask, device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList(
                    [RepeatStop(input_ids.shape[1], repeat_stop)] if repeat_stop else []
                ),
                **inputs,
            )  # [B, L + new]
            latency_ms = (time.perf_counter() - start) * 1000
            stats = last_stats(self.model) if stats is None else stats
        finally:
            if sparse is not None:
                apply_patch(self.model, self.sparse)
        ends = [t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None]
        rows = [
            trim_repeat(r, repeat_stop, ends) if repeat_stop else (r, False)
            for r in out[:, input_ids.shape[1] :].tolist()
        ]
        texts = self.tokenizer.batch_decode([r for r, _ in rows], skip_special_tokens=True)
        return [EngineAnswer(t.strip(), s, latency_ms, cut) for t, s, (_, cut) in zip(texts, stats, rows, strict=True)]

    def describe(self) -> dict[str, Any]:
        """Provenance columns of result rows: model id, preset name and the SparseConfig as JSON."""
        return {
            "model_id": self.model_id,
            "sparse_preset": self.sparse.name,
            "sparse_config_json": self.sparse.to_json(),
        }


def _refuse_placeholders(text: str, what: str) -> None:
    """Raise :class:`PromptError` when ``text`` holds a ``<video>`` or ``<image>`` placeholder (tokens with no
    features behind them)."""
    for placeholder in PLACEHOLDERS:
        if placeholder in text:
            raise PromptError(f"{what} contains the placeholder {placeholder!r}: {text!r:.200}")
