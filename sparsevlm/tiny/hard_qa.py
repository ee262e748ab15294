"""The hard split of the synthetic video QA task: evidence that is scarce by construction.

On the easy split (:mod:`sparsevlm.tiny.video_qa`) a question's object has a unique colour, is large and is on
screen most of the clip, so any few of its ~27 tokens answer and keeping a random 10 % of the tokens keeps the
answer (reference/fidelity-findings.md). Here an answer depends on a handful of tokens that only the question
can point to:

* clutter: 8-14 small objects (8 or 10 px, about 2 patches a frame) of 4 colours x 3 shapes, some striped;
* confusers: every object a question names shares its colour with another object and its shape with another,
  so only the conjunction finds it (a text-agnostic saliency lands on it by chance);
* brief events: every named object is on screen for 2 or 3 of the 8 frames only.

Families, their answers and what a question needs (the "requirement" of :func:`chance_bound`):

| family | question | answers | needs |
|---|---|---|---|
| ``direction_of`` | which way does the red square move? | left/right/up/down | tokens in 2 of its 3 frames |
| ``order`` | does the red square appear before the blue circle? | yes/no | a token of each of the two |
| ``count_of`` | how many red squares are there? | one/two/three | a token of every instance |
| ``striped`` | is the red square striped? | yes/no | a token of it |
| ``binding`` | is there a red square? (its colour, its shape are on screen) | yes/no | a token of it if "yes" |

Every hard video asks one question of each family. Samples are deterministic in ``(split, index)`` and use a
random stream of their own, so hard sample ``i`` shares nothing with easy sample ``i``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from sparsevlm.tiny.video_qa import (
    _STEP,
    COLOURS,
    COUNT_WORDS,
    DIRECTIONS,
    FAMILIES,
    QA,
    SHAPES,
    ObjectTrack,
    VideoSample,
    _collide,
    _patch_labels,
    _render,
    _sample,
    evidence_token_indices,
    make_sample,
    sample_seed,
)

HARD_FAMILIES: tuple[str, ...] = ("direction_of", "order", "count_of", "striped", "binding")
HARD_SIZES: tuple[int, ...] = (8, 10)
# How long each kind of object is on screen (frames), out of 8.
_DIRECTION_FRAMES = 3
_BRIEF_FRAMES = 2
_COUNT_FRAMES = 3
_STRIPED_FRAMES = 3
MIN_FRAMES = 6  # two brief events in order, with frames around them
_HARD_STREAM = 1  # second word of the generator's seed: hard samples never share a stream with easy ones


@dataclass(frozen=True)
class _Target:
    """One object a question names: its type, when it is on screen, and its look."""

    colour: str
    shape: str
    first: int
    last: int
    striped: bool = False


def make_hard_sample(split: str, index: int, num_frames: int = 8, size: int = 64, patch: int = 8) -> VideoSample:
    """Render sample ``index`` of ``split`` of the hard task (questions in :data:`HARD_FAMILIES` order).

    Args:
        split: "train", "val" or "test".
        index: sample index within the split.
        num_frames: T; the brief events are 2-3 frames whatever T is, so 8 is the native setting.
        size: frame height and width in pixels.
        patch: patch size P of the vision tower; ``size`` must be a multiple of it.

    Returns:
        The rendered :class:`VideoSample`; ``objects`` holds the named objects first, then the distractors.
    """
    if num_frames < MIN_FRAMES:
        raise ValueError(
            f"the hard split needs num_frames >= {MIN_FRAMES} for two brief events in order, got {num_frames}"
        )
    if size < 48 or size % patch != 0:
        raise ValueError(f"size must be >= 48 and a multiple of patch; got size={size}, patch={patch}")
    seed = sample_seed(split, index)
    rng = np.random.default_rng((seed, _HARD_STREAM))
    for _ in range(100):  # redraw the scene until every object found a clear path
        drawn = _draw_scene(rng, num_frames, size)
        if drawn is not None:
            break
    else:  # pragma: no cover - 100 failures in a row would be a bug in the placement rules
        raise RuntimeError(f"could not place the hard scene of {split} {index}")
    objects, plan = drawn
    frames, masks = _render(rng, objects, num_frames, size)
    labels = _patch_labels(objects, masks, patch)
    owner = labels[3]
    questions = _hard_questions(objects, owner, plan)
    return _sample(frames, questions, objects, masks, labels, patch, seed)


@dataclass(frozen=True)
class _Plan:
    """Which objects the questions name (indices into the scene's objects)."""

    direction: int
    order: tuple[int, int]  # (asked first, asked second)
    count: tuple[int, ...]
    striped: int
    present: int | None  # the "yes" binding object, or None when the answer is "no"
    absent: tuple[str, str]  # (colour, shape) asked about when ``present`` is None


def _draw_scene(rng: np.random.Generator, num_frames: int, size: int) -> tuple[tuple[ObjectTrack, ...], _Plan] | None:
    """Every object of one hard clip and the question plan, or None when an object found no clear path."""
    types = [(c, s) for c in COLOURS for s in SHAPES]
    order = rng.permutation(len(types))
    named = [types[int(k)] for k in order[:6]]  # direction, order A, order B, count, striped, binding
    rest = [types[int(k)] for k in order[6:]]
    last = num_frames - 1

    def window(length: int) -> tuple[int, int]:
        first = int(rng.integers(0, num_frames - length + 1))
        return first, first + length - 1

    targets: list[_Target] = [_Target(*named[0], *window(_DIRECTION_FRAMES), striped=bool(rng.random() < 0.3))]
    a_first = int(rng.integers(0, num_frames - 2 * _BRIEF_FRAMES))
    b_first = int(rng.integers(a_first + _BRIEF_FRAMES, num_frames - _BRIEF_FRAMES + 1))
    targets.append(_Target(*named[1], a_first, a_first + _BRIEF_FRAMES - 1, striped=bool(rng.random() < 0.3)))
    targets.append(_Target(*named[2], b_first, b_first + _BRIEF_FRAMES - 1, striped=bool(rng.random() < 0.3)))
    instances = int(rng.integers(1, 4))
    count_window = window(_COUNT_FRAMES)
    targets += [_Target(*named[3], *count_window, striped=bool(rng.random() < 0.3)) for _ in range(instances)]
    targets.append(_Target(*named[4], *window(_STRIPED_FRAMES), striped=bool(rng.random() < 0.5)))
    present = bool(rng.random() < 0.5)
    if present:
        targets.append(_Target(*named[5], *window(_BRIEF_FRAMES), striped=bool(rng.random() < 0.3)))
    # Distractors: long-lived objects of the types no question names (the absent type excluded), so that each
    # named colour and each named shape also appears on an object of another type.
    distractors = [rest[int(k)] for k in rng.permutation(len(rest))[: int(rng.integers(3, 6))]]
    for c, s in distractors:  # on screen at least 5 frames (4 on a 6-frame clip)
        first = int(rng.integers(0, 3))
        end = int(rng.integers(min(last, max(first + 4, last - 2)), last + 1))
        targets.append(_Target(c, s, first, end, bool(rng.random() < 0.3)))
    if not _confused(named if present else named[:5], targets):
        return None
    objects: list[ObjectTrack] = []
    for target in targets:
        track = _place(rng, target, objects, num_frames, size)
        if track is None:
            return None
        objects.append(track)
    b_index = 2
    pair = (1, b_index) if rng.random() < 0.5 else (b_index, 1)
    count = tuple(range(3, 3 + instances))
    striped_index = 3 + instances
    plan = _Plan(
        direction=0,
        order=pair,
        count=count,
        striped=striped_index,
        present=striped_index + 1 if present else None,
        absent=named[5],
    )
    return tuple(objects), plan


def _confused(named: list[tuple[str, str]], targets: list[_Target]) -> bool:
    """Whether every named type shares its colour with an object of another shape and its shape with an object
    of another colour (so neither the colour nor the shape alone finds it)."""
    kinds = {(t.colour, t.shape) for t in targets}
    for colour, shape in named:
        same_colour = any(c == colour and s != shape for c, s in kinds)
        same_shape = any(s == shape and c != colour for c, s in kinds)
        if not (same_colour and same_shape):
            return False
    return True


def _place(
    rng: np.random.Generator, target: _Target, placed: list[ObjectTrack], num_frames: int, size: int
) -> ObjectTrack | None:
    """A straight path for ``target`` that stays in the frame and clear of ``placed``, or None."""
    for _ in range(60):
        side = HARD_SIZES[int(rng.integers(len(HARD_SIZES)))]
        direction = DIRECTIONS[int(rng.integers(4))]
        speed = float(rng.uniform(2.5, 4.0))  # pixels per frame: a brief object still moves a patch or so
        step = np.asarray(_STEP[direction], dtype=np.float64)
        offsets = np.round(np.outer(np.arange(num_frames) - target.first, step) * speed)
        low = -offsets.min(axis=0)
        high = (size - side) - offsets.max(axis=0)
        if np.any(high < low):
            continue
        start = np.array([rng.integers(int(low[k]), int(high[k]) + 1) for k in range(2)])
        track = ObjectTrack(
            colour=target.colour,
            shape=target.shape,
            size=side,
            first_frame=target.first,
            last_frame=target.last,
            direction=direction,
            turn_frame=None,
            turn_direction=None,
            positions=(start + offsets).astype(np.int64),
            striped=target.striped,
        )
        if not any(_collide(track, other, gap=2) for other in placed):
            return track
    return None


def _plural(shape: str) -> str:
    return f"{shape}s"


def _hard_questions(objects: tuple[ObjectTrack, ...], owner: np.ndarray, plan: _Plan) -> tuple[QA, ...]:
    """One question of each of :data:`HARD_FAMILIES`, with its evidence."""
    evidence = [owner == k for k in range(len(objects))]
    target = objects[plan.direction]
    qas = [QA("direction_of", f"which way does the {target.name} move?", target.direction, evidence[plan.direction])]
    first, second = (objects[k] for k in plan.order)
    before = "yes" if first.first_frame < second.first_frame else "no"
    both = evidence[plan.order[0]] | evidence[plan.order[1]]
    qas.append(QA("order", f"does the {first.name} appear before the {second.name}?", before, both))
    kind = objects[plan.count[0]]
    instances = np.any([evidence[k] for k in plan.count], axis=0)
    question = f"how many {kind.colour} {_plural(kind.shape)} are there?"
    qas.append(QA("count_of", question, COUNT_WORDS[len(plan.count)], instances))
    striped = objects[plan.striped]
    answer = "yes" if striped.striped else "no"
    qas.append(QA("striped", f"is the {striped.name} striped?", answer, evidence[plan.striped]))
    if plan.present is not None:
        qas.append(QA("binding", f"is there a {objects[plan.present].name}?", "yes", evidence[plan.present]))
    else:
        colour, shape = plan.absent
        qas.append(QA("binding", f"is there a {colour} {shape}?", "no", np.zeros_like(owner, dtype=bool)))
    return tuple(qas)


def evidence_groups(sample: VideoSample, qa: QA) -> list[np.ndarray]:
    """The groups of visual-token indices a question needs a token from, for :func:`chance_bound`.

    ``direction_of``: one group per frame of the object (two of them must be hit); ``count_of`` and ``order``:
    one group per object (all must be hit); ``striped`` and a "yes" ``binding``: one group; a "no" binding: none.
    """
    if not qa.evidence.any():
        return []
    owner = sample.patch_owner
    objects = sorted({int(k) for k in np.unique(owner[qa.evidence])})
    if qa.family == "direction_of":
        frames = sorted({int(t) for t in np.nonzero(qa.evidence)[0]})
        return [evidence_token_indices(_frame_mask(qa.evidence, t)) for t in frames]
    return [evidence_token_indices(qa.evidence & (owner == k)) for k in objects]


def _frame_mask(mask: np.ndarray, t: int) -> np.ndarray:
    only = np.zeros_like(mask)
    only[t] = mask[t]
    return only


def _needed(family: str, groups: int) -> int:
    """How many evidence groups must keep a token for the question to be answerable."""
    if family == "direction_of":
        return min(2, groups)
    return groups


CHANCE: dict[str, float] = {"direction_of": 0.25, "order": 0.5, "count_of": 1 / 3, "striped": 0.5, "binding": 0.5}


def chance_bound(
    sample: VideoSample, qa: QA, keep_fraction: float, rng: np.random.Generator, draws: int = 2000
) -> float:
    """The accuracy that keeping a uniformly random ``keep_fraction`` of the visual tokens allows, by construction.

    A question is answerable when the kept tokens hit enough of its evidence groups (:func:`evidence_groups`);
    otherwise the best answer is a guess among the family's answers (:data:`CHANCE`). A "no" binding question
    needs nothing (an empty view says "no"), so its bound is 1.

    Args:
        sample: the video.
        qa: one of its questions (a hard family).
        keep_fraction: share of the ``T * (1 + gh * gw)`` visual tokens kept, at random, without replacement.
        rng: the draws' generator.
        draws: Monte Carlo draws.

    Returns:
        P(answerable) + (1 - P(answerable)) * chance, in [0, 1].
    """
    groups = evidence_groups(sample, qa)
    if not groups:
        return 1.0
    num_frames, gh, gw = sample.patch_owner.shape
    total = num_frames * (1 + gh * gw)
    keep = max(1, round(keep_fraction * total))
    member = np.full(total, -1, dtype=np.int64)
    for g, tokens in enumerate(groups):
        member[tokens] = g
    kept = np.argsort(rng.random((draws, total)), axis=1)[:, :keep]  # [draws, keep] uniform subsets
    hits = np.zeros((draws, len(groups)), dtype=bool)
    labels = member[kept]  # [draws, keep]
    for g in range(len(groups)):
        hits[:, g] = (labels == g).any(axis=1)
    answerable = hits.sum(axis=1) >= _needed(qa.family, len(groups))
    p = float(answerable.mean())
    return p + (1 - p) * CHANCE[qa.family]


def family_chance_bounds(
    split: str, count: int, keep_fractions: tuple[float, ...], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Mean evidence tokens and :func:`chance_bound` per hard family over ``count`` videos of ``split``.

    Returns:
        ``{family: {"evidence_tokens": mean, "random_<F>": bound, ...}}`` plus ``"all"`` (bounds only).
    """
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[float, ...]]] = {f: [] for f in HARD_FAMILIES}
    for index in range(count):
        sample = make_hard_sample(split, index)
        for qa in sample.questions:
            bounds = tuple(chance_bound(sample, qa, f, rng, draws=400) for f in keep_fractions)
            rows[qa.family].append((float(qa.evidence.sum()), *bounds))
    out: dict[str, dict[str, float]] = {}
    for family, values in rows.items():
        table = np.asarray(values)
        out[family] = {"evidence_tokens": float(table[:, 0].mean())}
        out[family] |= {f"random_{f:g}": float(table[:, 1 + k].mean()) for k, f in enumerate(keep_fractions)}
    everything = np.asarray(list(itertools.chain.from_iterable(rows.values())))
    out["all"] = {f"random_{f:g}": float(everything[:, 1 + k].mean()) for k, f in enumerate(keep_fractions)}
    return out


QuestionSplit = Literal["easy", "hard"]
QUESTION_SPLITS: tuple[QuestionSplit, ...] = get_args(QuestionSplit)


def families(question_split: QuestionSplit) -> tuple[str, ...]:
    """The question families of a question split, in the order its samples ask them."""
    return HARD_FAMILIES if question_split == "hard" else FAMILIES


def make_task_sample(
    question_split: QuestionSplit, split: str, index: int, num_frames: int = 8, size: int = 64, patch: int = 8
) -> VideoSample:
    """Sample ``index`` of ``split`` ("train", "val", "test") of the easy or the hard question split."""
    if question_split == "hard":
        return make_hard_sample(split, index, num_frames=num_frames, size=size, patch=patch)
    if question_split == "easy":
        return make_sample(split, index, num_frames=num_frames, size=size, patch=patch)
    raise ValueError(f"unknown question split {question_split!r}; expected one of {QUESTION_SPLITS}")
