"""The synthetic video QA generator: determinism, splits, and answers that agree with the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from sparsevlm.tiny.video_qa import (
    ANSWER_WORDS,
    COLOURS,
    COUNT_WORDS,
    DIRECTIONS,
    FAMILIES,
    RGB,
    SHAPES,
    evidence_token_indices,
    make_sample,
    sample_seed,
    uniform_frame_indices,
)

SAMPLES = [make_sample("train", i) for i in range(40)]


def test_same_index_gives_identical_bytes() -> None:
    a, b = make_sample("val", 7), make_sample("val", 7)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.caption == b.caption
    assert [(q.question, q.answer, q.evidence.tobytes()) for q in a.questions] == [
        (q.question, q.answer, q.evidence.tobytes()) for q in b.questions
    ]


def test_splits_use_disjoint_seeds_and_differ() -> None:
    seeds = {split: {sample_seed(split, i) for i in (0, 1, 999, 9_999_999)} for split in ("train", "val", "test")}
    assert not seeds["train"] & seeds["val"] and not seeds["val"] & seeds["test"]
    assert not seeds["train"] & seeds["test"]
    assert make_sample("train", 0).frames.tobytes() != make_sample("test", 0).frames.tobytes()
    with pytest.raises(ValueError, match="unknown split"):
        sample_seed("dev", 0)
    with pytest.raises(ValueError, match="index"):
        sample_seed("train", -1)


@pytest.mark.parametrize(("num_frames", "size", "patch"), [(8, 64, 8), (32, 64, 8), (8, 64, 16)])
def test_shapes_and_dtypes(num_frames: int, size: int, patch: int) -> None:
    s = make_sample("test", 3, num_frames=num_frames, size=size, patch=patch)
    grid = (num_frames, size // patch, size // patch)
    assert s.frames.shape == (num_frames, size, size, 3) and s.frames.dtype == np.uint8
    assert s.patch_colour.shape == s.patch_shape.shape == s.patch_motion.shape == grid
    assert s.object_masks.shape == (len(s.objects), num_frames, size, size)
    for qa in s.questions:
        assert qa.family in FAMILIES and qa.answer in ANSWER_WORDS
        assert qa.evidence.shape == grid and qa.evidence.dtype == bool


def test_objects_are_drawn_in_their_colour_and_background_is_grey() -> None:
    for s in SAMPLES:
        for obj, mask in zip(s.objects, s.object_masks, strict=True):
            assert np.all(s.frames[mask] == RGB[obj.colour])
            visible = mask.any(axis=(1, 2))
            assert np.array_equal(np.flatnonzero(visible), np.arange(obj.first_frame, obj.last_frame + 1))
        background = s.frames[~s.object_masks.any(axis=0)]
        assert np.all(background[:, 0] == background[:, 1]) and np.all(background[:, 1] == background[:, 2])


def test_evidence_patches_show_the_answered_object() -> None:
    checked = 0
    for s in SAMPLES:
        p = s.patch
        for qa in s.questions:
            if qa.answer == "no":
                assert not qa.evidence.any()
                continue
            if qa.family in ("count", "presence"):
                continue
            colour = qa.answer if qa.family in ("colour", "first", "last") else _named_colour(qa.question)
            for t, i, j in zip(*np.nonzero(qa.evidence), strict=True):
                block = s.frames[t, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(-1, 3)
                assert np.sum(np.all(block == RGB[colour], axis=1)) >= p * p // 8
                checked += 1
    assert checked > 500


def test_answers_agree_with_ground_truth() -> None:
    for s in SAMPLES:
        by_colour = {obj.colour: obj for obj in s.objects}
        for qa in s.questions:
            if qa.family == "count":
                assert qa.answer == COUNT_WORDS[len(s.object_masks)]
                assert np.array_equal(qa.evidence, s.patch_colour > 0)
            elif qa.family == "shape":
                assert qa.answer == by_colour[_named_colour(qa.question)].shape
            elif qa.family == "colour":
                assert qa.answer in COLOURS and by_colour[qa.answer].shape in qa.question
            elif qa.family == "direction":
                obj = by_colour[_named_colour(qa.question)]
                start, end = obj.positions[obj.first_frame], obj.positions[obj.last_frame]
                assert qa.answer == _direction_of(end - start)
            elif qa.family == "after":
                obj = by_colour[_named_colour(qa.question)]
                assert obj.turn_frame is not None
                assert qa.answer == _direction_of(obj.positions[-1] - obj.positions[obj.turn_frame - 1])
            elif qa.family in ("first", "last"):
                frames = [int(np.flatnonzero(m.any(axis=(1, 2)))[0]) for m in s.object_masks]
                pick = min(frames) if qa.family == "first" else max(frames)
                assert frames.count(pick) == 1 and by_colour[qa.answer].first_frame == pick
            elif qa.family == "presence":
                name = qa.question.removeprefix("is there a ").removesuffix("?")
                assert (qa.answer == "yes") == (name in {obj.name for obj in s.objects})


def test_patch_labels_match_object_masks() -> None:
    s = SAMPLES[0]
    p = s.patch
    for k, obj in enumerate(s.objects):
        cover = s.object_masks[k].reshape(len(s.frames), 8, p, 8, p).mean(axis=(2, 4))
        mine = s.patch_colour == 1 + COLOURS.index(obj.colour)
        assert np.all(cover[mine] >= 0.125)
        assert np.all(s.patch_shape[mine] == 1 + SHAPES.index(obj.shape))


def test_every_family_occurs_and_answers_are_balanced() -> None:
    answers: dict[str, set[str]] = {f: set() for f in FAMILIES}
    for s in SAMPLES:
        for qa in s.questions:
            answers[qa.family].add(qa.answer)
    assert all(answers[f] for f in FAMILIES)
    assert answers["direction"] == set(DIRECTIONS) and answers["shape"] == set(SHAPES)


def test_evidence_token_indices_follow_video_llava_layout() -> None:
    mask = np.zeros((3, 8, 8), dtype=bool)
    mask[0, 0, 0] = mask[2, 1, 3] = True
    tokens_per_frame = 1 + 8 * 8  # CLS first
    expected = [1, 2 * tokens_per_frame + 1 + 1 * 8 + 3]
    assert evidence_token_indices(mask).tolist() == expected
    with pytest.raises(ValueError, match=r"\[T, gh, gw\]"):
        evidence_token_indices(mask[0])


def test_caption_mentions_every_object() -> None:
    s = SAMPLES[1]
    assert s.caption.count(".") == len(s.objects)
    for obj in s.objects:
        assert f"a {obj.name}" in s.caption and f"moves {obj.direction}" in s.caption


def _named_colour(question: str) -> str:
    return next(c for c in COLOURS if f" {c} " in question)


def _direction_of(delta: np.ndarray) -> str:
    d_row, d_col = int(delta[0]), int(delta[1])
    if abs(d_col) > abs(d_row):
        return "right" if d_col > 0 else "left"
    return "down" if d_row > 0 else "up"


def test_uniform_frame_indices_are_run_centres() -> None:
    assert uniform_frame_indices(32, 8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert uniform_frame_indices(8, 8).tolist() == list(range(8))


@pytest.mark.parametrize("index", range(6))
def test_a_brief_event_falls_between_the_uniformly_sampled_frames(index: int) -> None:
    sample = make_sample("test", index, num_frames=32, brief_between=8)
    sampled = set(uniform_frame_indices(32, 8).tolist())
    (yes,) = [q for q in sample.questions if q.family == "presence" and q.answer == "yes"]
    brief = next(o for o in sample.objects if yes.question == f"is there a {o.name}?")
    shown = {t for t in range(32) if sample.object_masks[sample.objects.index(brief), t].any()}
    assert shown and shown.isdisjoint(sampled) and len(shown) >= 2
    assert not sample.object_masks[sample.objects.index(brief)][sorted(sampled)].any()
    assert not np.array_equal(make_sample("test", index, num_frames=32).frames, sample.frames)
    with pytest.raises(ValueError, match="num_frames >= 3 \\* brief_between"):
        make_sample("test", index, num_frames=16, brief_between=8)
