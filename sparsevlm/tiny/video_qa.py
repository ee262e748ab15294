"""Synthetic video question answering with pixel-exact ground truth.

Each sample is a short clip of coloured shapes moving over a static textured grey background, a set of
one-word-answer questions about it, a caption, and for every question the *evidence*: the patches that
show the object the question is about. The evidence is what a visual-token pruning method should keep,
so fidelity benchmarks can ask "did the pruned model still see the object?" and not only "did the answer
change?".

Everything is deterministic in ``(split, index)``: the same arguments always give identical bytes, and the
train / validation / test splits draw from disjoint seed ranges.

Conventions:
    * frames are ``uint8 [T, H, W, 3]``; image rows grow downwards, so "up" means decreasing row.
    * the patch grid has ``gh = H // P`` rows and ``gw = W // P`` columns; patch labels are ``[T, gh, gw]``.
    * Video-LLaVA's video path keeps CLS, so frame ``t`` contributes ``1 + gh * gw`` visual tokens with
      CLS first (see :func:`evidence_token_indices`).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
FAMILIES: tuple[str, ...] = ("colour", "shape", "direction", "count", "first", "last", "presence", "after")
# Every answer the generator can produce; the tokenizer makes each of these a single token.
ANSWER_WORDS: tuple[str, ...] = (*COLOURS, *SHAPES, *DIRECTIONS, *COUNT_WORDS[1:], "yes", "no")

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
}
# (d_row, d_col) of one unit step in each direction.
_STEP: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
_PERPENDICULAR: dict[str, tuple[str, str]] = {
    "left": ("up", "down"),
    "right": ("up", "down"),
    "up": ("left", "right"),
    "down": ("left", "right"),
}
SIZES: tuple[int, ...] = (10, 13, 16)
# Seeds of split s are SPLIT_OFFSETS[s] + index with 0 <= index < SPLIT_SIZE, so the splits never overlap.
SPLIT_SIZE = 10_000_000
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": SPLIT_SIZE, "test": 2 * SPLIT_SIZE}
# A patch "shows" an object when at least this fraction of its pixels belong to the object.
MIN_COVER = 0.125
# A striped object's dark rows are its colour scaled by this (same hue, so the colour stays readable).
STRIPE_SHADE = 0.45


@dataclass(frozen=True)
class QA:
    """One question about a video.

    Attributes:
        family: one of :data:`FAMILIES`.
        question: the question text, lower case, ending with "?".
        answer: a single word from :data:`ANSWER_WORDS`.
        evidence: bool ``[T, gh, gw]``, the patches showing the object(s) the question is about
            (all False for a "no" presence question: nothing on screen answers it).
    """

    family: str
    question: str
    answer: str
    evidence: np.ndarray


@dataclass(frozen=True)
class ObjectTrack:
    """Ground truth of one object.

    Attributes:
        colour: a key of :data:`RGB`.
        shape: one of :data:`SHAPES`.
        size: side of the shape's bounding box in pixels.
        first_frame: first frame in which the object is visible.
        last_frame: last frame in which the object is visible.
        direction: direction of motion at the start.
        turn_frame: first frame reached after the turn (motion from ``turn_frame - 1`` on uses
            ``turn_direction``), or None when the object never turns.
        turn_direction: direction after the turn, or None.
        positions: int ``[T, 2]``, top-left (row, col) of the bounding box in every frame.
        striped: every other pair of pixel rows is drawn in a darker shade of the colour (the hard split's
            fine attribute; the easy split never stripes).
    """

    colour: str
    shape: str
    size: int
    first_frame: int
    last_frame: int
    direction: str
    turn_frame: int | None
    turn_direction: str | None
    positions: np.ndarray
    striped: bool = False

    @property
    def name(self) -> str:
        """The object's name in questions and captions, e.g. "red square"."""
        return f"{self.colour} {self.shape}"

    def direction_at(self, t: int) -> str:
        """Direction of the step from frame ``t - 1`` to frame ``t`` (frame 0: the initial direction)."""
        if self.turn_frame is not None and self.turn_direction is not None and t >= self.turn_frame:
            return self.turn_direction
        return self.direction


@dataclass(frozen=True, eq=False)
class VideoSample:
    """A rendered clip with its questions and dense ground truth.

    Attributes:
        frames: uint8 ``[T, H, W, 3]``.
        questions: all questions of the clip, in :data:`FAMILIES` order.
        caption: one sentence per object, in order of appearance.
        objects: ground truth per object, in drawing order.
        object_masks: bool ``[N, T, H, W]``, the visible pixels of each object.
        patch_colour: int64 ``[T, gh, gw]``, 0 for background else 1 + index in :data:`COLOURS`.
        patch_shape: int64 ``[T, gh, gw]``, 0 for background else 1 + index in :data:`SHAPES`.
        patch_motion: int64 ``[T, gh, gw]``, 0 for background else 1 + index in :data:`DIRECTIONS` of the
            object's motion into that frame.
        patch_owner: int64 ``[T, gh, gw]``, -1 for background else the index in ``objects`` of the object the
            patch shows (colours repeat in the hard split, so a colour does not name an object there).
        patch_striped: int64 ``[T, gh, gw]``, 1 on the patches of striped objects, 0 elsewhere.
        patch: the patch size P the labels and evidence were computed with.
        seed: the seed the sample was drawn from.
    """

    frames: np.ndarray
    questions: tuple[QA, ...]
    caption: str
    objects: tuple[ObjectTrack, ...]
    object_masks: np.ndarray
    patch_colour: np.ndarray
    patch_shape: np.ndarray
    patch_motion: np.ndarray
    patch_owner: np.ndarray
    patch_striped: np.ndarray
    patch: int
    seed: int


def shape_stamp(shape: str, size: int) -> np.ndarray:
    """Binary footprint of a shape.

    Args:
        shape: one of :data:`SHAPES`.
        size: side of the bounding box in pixels.

    Returns:
        bool ``[size, size]``.
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        radius = size / 2
        return bool_array((rows - radius) ** 2 + (cols - radius) ** 2 <= radius**2)
    if shape == "triangle":  # apex up, base on the bottom row
        half_width = rows / size * (size / 2)
        return bool_array(np.abs(cols - size / 2) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def stripe_rows(size: int) -> np.ndarray:
    """bool ``[size, size]``: the pixels of a striped shape's box drawn in the darker shade (every other pair
    of rows, starting with the third)."""
    rows = np.arange(size)[:, None] // 2 % 2 == 1
    return np.repeat(rows, size, axis=1)


def bool_array(x: np.ndarray) -> np.ndarray:
    """``x`` as a bool array (keeps mypy's view of numpy comparisons simple)."""
    return np.asarray(x, dtype=bool)


def evidence_token_indices(mask: np.ndarray) -> np.ndarray:
    """Video-LLaVA visual-token indices of the patches in an evidence mask.

    Frame ``t`` contributes ``1 + gh * gw`` tokens with CLS first, so patch ``(i, j)`` of frame ``t`` is
    token ``t * (1 + gh * gw) + 1 + i * gw + j`` counted from the first visual token of the video.

    Args:
        mask: bool ``[T, gh, gw]``.

    Returns:
        int64 ``[K]``, sorted, one index per True patch.
    """
    if mask.ndim != 3:
        raise ValueError(f"evidence mask must be [T, gh, gw], got shape {mask.shape}")
    _, gh, gw = mask.shape
    t, i, j = np.nonzero(mask)
    return (t * (1 + gh * gw) + 1 + i * gw + j).astype(np.int64)


def sample_seed(split: str, index: int) -> int:
    """The seed of sample ``index`` of ``split``; seeds of different splits never coincide."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_OFFSETS)}")
    if not 0 <= index < SPLIT_SIZE:
        raise ValueError(f"index must be in [0, {SPLIT_SIZE}), got {index}")
    return SPLIT_OFFSETS[split] + index


def make_sample(
    split: str, index: int, num_frames: int = 8, size: int = 64, patch: int = 8, brief_between: int | None = None
) -> VideoSample:
    """Render sample ``index`` of ``split``.

    Args:
        split: "train", "val" or "test".
        index: sample index within the split.
        num_frames: T; 8 is the native setting, 32 or more gives a long video.
        size: frame height and width in pixels.
        patch: patch size P of the vision tower; ``size`` must be a multiple of it.
        brief_between: a brief event for long-video work: one object is on screen only for a short run of
            frames that falls between the frames a uniform ``brief_between``-frame sampling takes
            (:func:`uniform_frame_indices`), and the clip's "yes" presence question asks about it. Needs
            ``num_frames >= 3 * brief_between``. None: no brief event.

    Returns:
        The rendered :class:`VideoSample`.
    """
    if num_frames < 4:
        raise ValueError(f"num_frames must be >= 4 so motion and events are visible, got {num_frames}")
    if size < 48 or size % patch != 0:
        raise ValueError(f"size must be >= 48 and a multiple of patch; got size={size}, patch={patch}")
    seed = sample_seed(split, index)
    rng = np.random.default_rng(seed)
    objects = _draw_objects(rng, num_frames, size)
    brief: int | None = None
    if brief_between is not None:
        objects, brief = _make_brief(rng, objects, num_frames, brief_between)
    frames, masks = _render(rng, objects, num_frames, size)
    colour, shape, motion, owner = _patch_labels(objects, masks, patch)
    questions = _questions(rng, objects, owner, brief)
    return _sample(frames, questions, objects, masks, (colour, shape, motion, owner), patch, seed)


def _sample(
    frames: np.ndarray,
    questions: tuple[QA, ...],
    objects: tuple[ObjectTrack, ...],
    masks: np.ndarray,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    patch: int,
    seed: int,
) -> VideoSample:
    """Assemble a :class:`VideoSample`: the caption in order of appearance and the striped-patch labels."""
    colour, shape, motion, owner = labels
    num_frames = frames.shape[0]
    caption = " ".join(_describe(obj, num_frames) for obj in sorted(objects, key=lambda o: o.first_frame))
    striped_objects = np.array([obj.striped for obj in objects] + [False])  # index -1 is background
    striped = striped_objects[owner].astype(np.int64)
    return VideoSample(frames, questions, caption, objects, masks, colour, shape, motion, owner, striped, patch, seed)


def uniform_frame_indices(num_frames: int, count: int) -> np.ndarray:
    """The frames a uniform ``count``-frame sampling of ``num_frames`` takes: the centre of each of ``count``
    equal runs (the rule of the pipeline's segment planner)."""
    edges = np.linspace(0, num_frames, count + 1)
    return np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64)


def _make_brief(
    rng: np.random.Generator, objects: tuple[ObjectTrack, ...], num_frames: int, between: int
) -> tuple[tuple[ObjectTrack, ...], int | None]:
    """Make one object visible only in a run of frames that a uniform ``between``-frame sampling skips."""
    if num_frames < 3 * between:
        raise ValueError(f"a brief event needs num_frames >= 3 * brief_between, got {num_frames} and {between}")
    if not objects:
        return objects, None
    sampled = uniform_frame_indices(num_frames, between)
    gaps = [(int(a) + 1, int(b) - 1) for a, b in itertools.pairwise(sampled) if b - a >= 3]
    first, last = gaps[int(rng.integers(len(gaps)))]
    k = int(rng.integers(len(objects)))
    brief = dataclasses.replace(objects[k], first_frame=first, last_frame=last, turn_frame=None, turn_direction=None)
    return (*objects[:k], brief, *objects[k + 1 :]), k


def _draw_objects(rng: np.random.Generator, num_frames: int, size: int) -> tuple[ObjectTrack, ...]:
    """Draw 1-4 objects with distinct colours, non-overlapping trajectories and timed events."""
    count = int(rng.integers(1, 5))
    colours = rng.permutation(len(COLOURS))[:count]
    objects: list[ObjectTrack] = []
    for c in colours:
        for _ in range(50):  # resample until the trajectory stays clear of the objects placed so far
            candidate = _draw_track(rng, COLOURS[int(c)], num_frames, size)
            if candidate is not None and not any(_collide(candidate, other) for other in objects):
                objects.append(candidate)
                break
    return tuple(objects)


def _draw_track(rng: np.random.Generator, colour: str, num_frames: int, size: int) -> ObjectTrack | None:
    """One object's shape, timing and trajectory, or None when the path does not fit in the frame."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    side = SIZES[int(rng.integers(len(SIZES)))]
    last = num_frames - 1
    # Events: appear late, leave early, turn half way. Each object keeps >= 3 visible frames.
    first_frame = min(int(rng.integers(1, num_frames // 2 + 1)), last - 2) if rng.random() < 0.35 else 0
    last_frame = int(rng.integers(num_frames // 2, last)) if rng.random() < 0.2 else last
    last_frame = max(last_frame, first_frame + 2)
    direction = DIRECTIONS[int(rng.integers(4))]
    turn_frame: int | None = None
    turn_direction: str | None = None
    if rng.random() < 0.3:
        turn_frame = int(rng.integers(num_frames // 4 + 1, (3 * num_frames) // 4 + 1))
        turn_direction = _PERPENDICULAR[direction][int(rng.integers(2))]
    # The whole clip moves the object about 16-26 pixels whatever the frame count.
    speed = float(rng.uniform(16, 26)) / last
    offsets = np.zeros((num_frames, 2))
    after_turn = turn_direction if turn_direction is not None else direction
    for t in range(1, num_frames):
        step = _STEP[after_turn if turn_frame is not None and t >= turn_frame else direction]
        offsets[t] = offsets[t - 1] + speed * np.asarray(step)
    offsets = np.round(offsets)
    low = -offsets.min(axis=0)
    high = (size - side) - offsets.max(axis=0)
    if np.any(high < low):
        return None
    start = np.array([rng.integers(int(low[k]), int(high[k]) + 1) for k in range(2)])
    positions = (start + offsets).astype(np.int64)
    return ObjectTrack(colour, shape, side, first_frame, last_frame, direction, turn_frame, turn_direction, positions)


def _collide(a: ObjectTrack, b: ObjectTrack, gap: int = 3) -> bool:
    """Whether two objects' bounding boxes come within ``gap`` pixels in a frame where both are visible."""
    for t in range(max(a.first_frame, b.first_frame), min(a.last_frame, b.last_frame) + 1):
        (ra, ca), (rb, cb) = a.positions[t], b.positions[t]
        apart_rows = ra + a.size + gap <= rb or rb + b.size + gap <= ra
        apart_cols = ca + a.size + gap <= cb or cb + b.size + gap <= ca
        if not (apart_rows or apart_cols):
            return True
    return False


def _render(
    rng: np.random.Generator, objects: tuple[ObjectTrack, ...], num_frames: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the clip.

    Returns:
        frames uint8 ``[T, H, W, 3]`` and object masks bool ``[N, T, H, W]``.
    """
    # Static grey texture: coarse 8x8 blotches plus fine grain, identical in every frame.
    coarse = rng.integers(80, 160, size=(size // 8, size // 8))
    grey = np.kron(coarse, np.ones((8, 8))) + rng.integers(-12, 13, size=(size, size))
    background = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    frames = np.repeat(background[None], num_frames, axis=0)
    masks = np.zeros((len(objects), num_frames, size, size), dtype=bool)
    for k, obj in enumerate(objects):
        stamp = shape_stamp(obj.shape, obj.size)
        for t in range(obj.first_frame, obj.last_frame + 1):
            row, col = obj.positions[t]
            masks[k, t, row : row + obj.size, col : col + obj.size] = stamp
        frames[masks[k]] = RGB[obj.colour]
        if obj.striped:  # rows 2-3, 6-7, ... of the shape in a darker shade: visible only at full resolution
            dark = stripe_rows(obj.size)
            for t in range(obj.first_frame, obj.last_frame + 1):
                row, col = obj.positions[t]
                box = np.zeros((size, size), dtype=bool)
                box[row : row + obj.size, col : col + obj.size] = stamp & dark
                frames[t][box] = STRIPE_SHADE * np.asarray(RGB[obj.colour])
    return frames, masks


def _patch_labels(
    objects: tuple[ObjectTrack, ...], masks: np.ndarray, patch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-patch colour, shape and motion classes, and which object owns each patch.

    Args:
        objects: the N objects.
        masks: bool ``[N, T, H, W]``.
        patch: patch size P.

    Returns:
        colour, shape, motion int64 ``[T, gh, gw]`` (0 = background), and owner int64 ``[T, gh, gw]``
        (-1 = background, else the object index).
    """
    n, num_frames, height, width = masks.shape
    gh, gw = height // patch, width // patch
    cover = masks.reshape(n, num_frames, gh, patch, gw, patch).mean(axis=(3, 5))  # [N, T, gh, gw]
    owner = np.full((num_frames, gh, gw), -1, dtype=np.int64)
    if n:
        best = cover.argmax(axis=0)
        owner = np.where(cover.max(axis=0) >= MIN_COVER, best, -1)
    colour = np.zeros_like(owner)
    shape = np.zeros_like(owner)
    motion = np.zeros_like(owner)
    for k, obj in enumerate(objects):
        mine = owner == k
        colour[mine] = 1 + COLOURS.index(obj.colour)
        shape[mine] = 1 + SHAPES.index(obj.shape)
        for t in range(num_frames):
            motion[t][mine[t]] = 1 + DIRECTIONS.index(obj.direction_at(t))
    return colour, shape, motion, owner


def _questions(
    rng: np.random.Generator, objects: tuple[ObjectTrack, ...], owner: np.ndarray, brief: int | None = None
) -> tuple[QA, ...]:
    """Every well-posed question about the clip, in :data:`FAMILIES` order (the "yes" presence question is
    about object ``brief`` when given)."""
    evidence = [owner == k for k in range(len(objects))]
    shapes = [obj.shape for obj in objects]
    qas: list[QA] = []
    for k, obj in enumerate(objects):
        if shapes.count(obj.shape) == 1:  # "the square" must name one object
            qas.append(QA("colour", f"what colour is the {obj.shape}?", obj.colour, evidence[k]))
    for k, obj in enumerate(objects):
        qas.append(QA("shape", f"what shape is the {obj.colour} object?", obj.shape, evidence[k]))
    for k, obj in enumerate(objects):
        if obj.turn_frame is None:
            question = f"which way does the {obj.name} move?"
            qas.append(QA("direction", question, obj.direction, evidence[k]))
    qas.append(QA("count", "how many objects are there?", COUNT_WORDS[len(objects)], owner >= 0))
    firsts = [obj.first_frame for obj in objects]
    for family, pick in (("first", min), ("last", max)):
        when = pick(firsts) if objects else 0
        if len(objects) >= 2 and firsts.count(when) == 1 and len(set(firsts)) >= 2:
            k = firsts.index(when)
            question = f"what colour is the {family} object to appear?"
            qas.append(QA(family, question, objects[k].colour, evidence[k]))
    qas.extend(_presence(rng, objects, evidence, owner.shape, brief))
    for k, obj in enumerate(objects):
        if obj.turn_direction is not None:
            question = f"which way does the {obj.name} move after it turns?"
            qas.append(QA("after", question, obj.turn_direction, evidence[k]))
    return tuple(qas)


def _presence(
    rng: np.random.Generator,
    objects: tuple[ObjectTrack, ...],
    evidence: list[np.ndarray],
    grid: tuple[int, ...],
    about: int | None = None,
) -> list[QA]:
    """One "yes" (about object ``about`` if given) and one "no" presence question (the "no" names a
    colour-shape pair that is absent)."""
    present = {obj.name for obj in objects}
    absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
    qas: list[QA] = []
    if objects:
        k = int(rng.integers(len(objects)))
        k = k if about is None else about
        qas.append(QA("presence", f"is there a {objects[k].name}?", "yes", evidence[k]))
    name = absent[int(rng.integers(len(absent)))]
    qas.append(QA("presence", f"is there a {name}?", "no", np.zeros(grid, dtype=bool)))
    return qas


def _describe(obj: ObjectTrack, num_frames: int) -> str:
    """Caption sentence for one object, e.g. "a red square appears and moves left, then turns up."."""
    words = (
        f"a {'striped ' if obj.striped else ''}{obj.name} "
        + ("appears and " if obj.first_frame > 0 else "")
        + f"moves {obj.direction}"
    )
    if obj.turn_direction is not None:
        words += f", then turns {obj.turn_direction}"
    if obj.last_frame < num_frames - 1:
        words += ", then leaves"
    return words + "."
