"""Training batches for the tiny Video-LLaVA: many questions per video, plus per-patch targets.

The visual tokens dominate the compute, so one sequence carries several question-answer turns about the same
video (reference/tiny-model-training.md, runs 3-4). The first turn is exactly the inference prompt
``"USER: <video>\\n{q} ASSISTANT: {a}</s>"``; later turns continue the conversation as
``"USER: {q} ASSISTANT: {a}</s>"``. Answer tokens and their ``</s>`` are the ``labels``; with ``caption=True``
a last turn ``"USER: describe the video. ASSISTANT: {caption}</s>"`` is added (last, so that no answer can be
copied from it) and every other text token is a ``text_labels`` target: predicting "red" after "a" in the
caption, or "square" in "what colour is the square?", needs the text to look at the object it names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sparsevlm.tiny.inputs import normalize_frames
from sparsevlm.tiny.tokenizer import token_id
from sparsevlm.tiny.video_qa import QA, VideoSample, evidence_token_indices
from sparsevlm.token_counts import video_tokens_per_frame

IGNORE = -100
CAPTION_PROMPT = "describe the video."


@dataclass
class TrainBatch:
    """One padded training batch.

    Attributes:
        input_ids: long ``[B, L]``, right-padded.
        attention_mask: long ``[B, L]``.
        labels: long ``[B, L]``; the answer token at each position (already shifted: ``labels[:, i]`` is
            predicted from position ``i``), IGNORE elsewhere.
        text_labels: long ``[B, L]``; the next token where it is text that is not an answer (template,
            question and caption tokens), IGNORE at answer positions, before a visual token and on padding.
        pixel_values_videos: float32 ``[B, T, 3, H, W]``.
        patch_colour: long ``[B, T, gh * gw]``, 0 background, 1.. colour.
        patch_shape: long ``[B, T, gh * gw]``, 0 background, 1.. shape.
        patch_motion: long ``[B, T, gh * gw]``, motion into the frame; IGNORE in frame 0, where a causal
            model cannot know it yet.
        patch_new: long ``[B, T, gh * gw]``, 1 where an object is in its first visible frame, 0 on other
            object patches, IGNORE on background.
        patch_earliest: long ``[B, T, gh * gw]``, 1 on the patches of the objects that appeared first in the
            video, 0 on other object patches, IGNORE on background (what "the first object to appear" asks).
        patch_newest: long ``[B, T, gh * gw]``, 1 on the patches of the objects that appeared last among
            those seen up to that frame, 0 on other object patches, IGNORE on background.
        patch_striped: long ``[B, T, gh * gw]``, 1 on striped object patches, 0 on other object patches,
            IGNORE on background (the hard split's fine attribute, read from the projector's output).
        answer_positions: long ``[B, Q]``, the position that predicts each question's answer word, -1 padding.
        answer_evidence: bool ``[B, Q, V]``, each question's evidence among the row's ``V`` visual tokens.
        prompt_positions: long ``[B, W]``, the positions of every turn's question words through its answer
            position (``"{question} ASSISTANT:"``; not the ``USER:`` before it, which cannot know the question
            yet), -1 padding.
        prompt_question: long ``[B, W]``, which question (index into ``answer_evidence``'s ``Q``) each of those
            positions belongs to; 0 on padding.
        visual_start: long ``[B]``, the position of each row's first visual token.

    Both order targets are causal: at frame ``t`` every object that appeared by ``t`` has been seen, and an
    object appearing later cannot be the earliest nor (yet) the newest.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    text_labels: torch.Tensor
    pixel_values_videos: torch.Tensor
    patch_colour: torch.Tensor
    patch_shape: torch.Tensor
    patch_motion: torch.Tensor
    patch_new: torch.Tensor
    patch_earliest: torch.Tensor
    patch_newest: torch.Tensor
    patch_striped: torch.Tensor
    answer_positions: torch.Tensor
    answer_evidence: torch.Tensor
    prompt_positions: torch.Tensor
    prompt_question: torch.Tensor
    visual_start: torch.Tensor

    def to(self, device: torch.device) -> TrainBatch:
        """The same batch with every tensor on ``device`` (a no-op on the CPU)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class SequenceBuilder:
    """Turns a video and its questions into token ids and shifted labels.

    Args:
        tokenizer: the tiny tokenizer.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.video_id = token_id(tokenizer, "<video>")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.head = [int(tokenizer.bos_token_id), *self._encode("USER: ")]
        # A turn's prompt is "<prefix>{question} ASSISTANT:"; the byte-level BPE splits after the prefix, so the
        # question starts that many tokens into it (tests check it).
        self._prefix = {True: len(self._encode("\n")), False: len(self._encode("USER:"))}

    @lru_cache(maxsize=4096)  # noqa: B019 - a few hundred distinct strings; the builder lives for the run
    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def build(self, qas: list[QA], num_video_tokens: int, caption: str = "") -> tuple[list[int], list[int]]:
        """Token ids and shifted answer labels of one multi-turn sequence.

        Args:
            qas: the questions, in the order they are asked.
            num_video_tokens: ``num_frames * (1 + gh * gw)``.
            caption: when not empty, a last turn asks for the caption and answers with it (unlabelled here:
                its tokens are text targets, see :meth:`text_labels`).

        Returns:
            ids and labels of equal length; ``labels[i]`` is the token to predict at position ``i``.
        """
        ids = [*self.head, *[self.video_id] * num_video_tokens]
        labels = [IGNORE] * len(ids)
        for turn, qa in enumerate(qas):
            prompt = self._prompt(turn, qa)
            ids.extend(self._encode(prompt))
            labels.extend([IGNORE] * len(self._encode(prompt)))
            answer = [*self._encode(f" {qa.answer}"), self.eos_id]
            labels[-1] = answer[0]  # the last prompt token predicts the answer
            labels.extend([*answer[1:], IGNORE])
            ids.extend(answer)
        if caption:
            described = [*self._encode(f"USER: {CAPTION_PROMPT} ASSISTANT: {caption}"), self.eos_id]
            ids.extend(described)
            labels.extend([IGNORE] * len(described))
        return ids, labels

    @staticmethod
    def _prompt(turn: int, qa: QA) -> str:
        return f"\n{qa.question} ASSISTANT:" if turn == 0 else f"USER: {qa.question} ASSISTANT:"

    def prompt_positions(self, qas: list[QA], labels: list[int]) -> list[list[int]]:
        """Each question's positions from its first word through its answer position, in the sequence
        :meth:`build` made from ``qas`` (``labels`` its labels).

        A turn's prompt ends at its answer position (the prompt's last token predicts the answer), so each span
        is found from there backwards: the prompt's tokens without its prefix.
        """
        spans = []
        for turn, (qa, end) in enumerate(zip(qas, self.answer_positions(labels), strict=True)):
            start = end + 1 - len(self._encode(self._prompt(turn, qa))) + self._prefix[turn == 0]
            spans.append(list(range(start, end + 1)))
        return spans

    def answer_positions(self, labels: list[int]) -> list[int]:
        """The positions whose label is an answer word (not the ``</s>`` after it), one per question, in order."""
        return [i for i, label in enumerate(labels) if label not in (IGNORE, self.eos_id)]

    def text_labels(self, ids: list[int], labels: list[int]) -> list[int]:
        """Shifted next-token targets on the text that is not an answer: ``ids[i + 1]`` where that token is not
        a visual token and position ``i`` predicts no answer (``labels[i]`` is IGNORE); IGNORE elsewhere."""
        targets = [IGNORE] * len(ids)
        for i, (nxt, answer) in enumerate(zip(ids[1:], labels, strict=False)):
            if nxt != self.video_id and answer == IGNORE:
                targets[i] = nxt
        return targets


def pick_questions(rng: np.random.Generator, sample: VideoSample, per_family: int) -> list[QA]:
    """A shuffled subset with at most ``per_family`` questions of each family (rare families keep all)."""
    order = rng.permutation(len(sample.questions))
    taken: dict[str, int] = {}
    picked: list[QA] = []
    for k in order:
        qa = sample.questions[int(k)]
        if taken.get(qa.family, 0) < per_family:
            taken[qa.family] = taken.get(qa.family, 0) + 1
            picked.append(qa)
    return picked


def collate(
    builder: SequenceBuilder,
    samples: list[VideoSample],
    rng: np.random.Generator,
    per_family: int = 2,
    caption: bool = False,
) -> TrainBatch:
    """Build a right-padded training batch from videos of equal shape (``caption``: add the caption turn)."""
    num_frames, size = samples[0].frames.shape[:2]
    count = num_frames * video_tokens_per_frame(size, samples[0].patch)
    asked = [pick_questions(rng, s, per_family) for s in samples]
    rows = [builder.build(qas, count, s.caption if caption else "") for qas, s in zip(asked, samples, strict=True)]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), builder.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    text_labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (ids, lab) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
        text_labels[b, : len(ids)] = torch.tensor(builder.text_labels(ids, lab))
        attention_mask[b, : len(ids)] = 1
    most = max(len(qas) for qas in asked)
    answer_positions = torch.full((len(rows), most), -1, dtype=torch.long)
    answer_evidence = torch.zeros((len(rows), most, count), dtype=torch.bool)
    for b, ((_, lab), qas) in enumerate(zip(rows, asked, strict=True)):
        positions = builder.answer_positions(lab)
        answer_positions[b, : len(positions)] = torch.tensor(positions)
        for q, qa in enumerate(qas):
            answer_evidence[b, q, torch.from_numpy(evidence_token_indices(qa.evidence))] = True
    spans = [
        [(pos, q) for q, span in enumerate(builder.prompt_positions(qas, lab)) for pos in span]
        for (_, lab), qas in zip(rows, asked, strict=True)
    ]
    prompt_positions = torch.full((len(rows), max(len(s) for s in spans)), -1, dtype=torch.long)
    prompt_question = torch.zeros_like(prompt_positions)
    for b, row in enumerate(spans):
        if row:
            prompt_positions[b, : len(row)] = torch.tensor([pos for pos, _ in row])
            prompt_question[b, : len(row)] = torch.tensor([q for _, q in row])
    visual_start = torch.full((len(rows),), len(builder.head), dtype=torch.long)
    colour = np.stack([s.patch_colour for s in samples]).reshape(len(samples), num_frames, -1)
    motion = np.stack([s.patch_motion for s in samples]).reshape(len(samples), num_frames, -1)
    motion[:, 0] = IGNORE
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        text_labels=text_labels,
        pixel_values_videos=normalize_frames(np.stack([s.frames for s in samples])),
        patch_colour=torch.from_numpy(colour),
        patch_shape=torch.from_numpy(np.stack([s.patch_shape for s in samples]).reshape(colour.shape)),
        patch_motion=torch.from_numpy(motion),
        patch_new=torch.from_numpy(np.stack([_new_patches(s) for s in samples]).reshape(colour.shape)),
        patch_earliest=torch.from_numpy(np.stack([_earliest_patches(s) for s in samples]).reshape(colour.shape)),
        patch_newest=torch.from_numpy(np.stack([_newest_patches(s) for s in samples]).reshape(colour.shape)),
        patch_striped=torch.from_numpy(np.stack([_striped_patches(s) for s in samples]).reshape(colour.shape)),
        answer_positions=answer_positions,
        answer_evidence=answer_evidence,
        prompt_positions=prompt_positions,
        prompt_question=prompt_question,
        visual_start=visual_start,
    )


def _object_patches(sample: VideoSample) -> np.ndarray:
    """int64 ``[T, gh, gw]``: 0 on every object patch, IGNORE on background (the start of each order target)."""
    return np.where(sample.patch_colour > 0, 0, IGNORE).astype(np.int64)


def _striped_patches(sample: VideoSample) -> np.ndarray:
    """int64 ``[T, gh, gw]``: 1 on striped object patches, 0 on other object patches, IGNORE on background."""
    return np.where(sample.patch_owner >= 0, sample.patch_striped, IGNORE).astype(np.int64)


def _new_patches(sample: VideoSample) -> np.ndarray:
    """int64 ``[T, gh, gw]``: 1 on an object's patches in its first visible frame, 0 on its other patches,
    IGNORE on background."""
    out = _object_patches(sample)
    for k, obj in enumerate(sample.objects):
        out[obj.first_frame][sample.patch_owner[obj.first_frame] == k] = 1
    return out


def _earliest_patches(sample: VideoSample) -> np.ndarray:
    """int64 ``[T, gh, gw]``: 1 on the patches of the objects with the smallest first frame, 0 on other
    object patches, IGNORE on background."""
    out = _object_patches(sample)
    earliest = min((obj.first_frame for obj in sample.objects), default=None)
    for k, obj in enumerate(sample.objects):
        if obj.first_frame == earliest:
            out[sample.patch_owner == k] = 1
    return out


def _newest_patches(sample: VideoSample) -> np.ndarray:
    """int64 ``[T, gh, gw]``: in frame ``t``, 1 on the patches of the objects with the largest first frame
    among those that appeared by ``t``, 0 on other object patches, IGNORE on background."""
    out = _object_patches(sample)
    for t in range(out.shape[0]):
        newest = max((obj.first_frame for obj in sample.objects if obj.first_frame <= t), default=None)
        for k, obj in enumerate(sample.objects):
            if obj.first_frame == newest:
                out[t][sample.patch_owner[t] == k] = 1
    return out
