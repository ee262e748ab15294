"""The hard question split: scarce evidence by construction, and its chance bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsevlm.tiny.hard_qa import (
    HARD_FAMILIES,
    chance_bound,
    evidence_groups,
    family_chance_bounds,
    make_hard_sample,
    make_task_sample,
)
from sparsevlm.tiny.video_qa import ANSWER_WORDS, COUNT_WORDS, RGB, STRIPE_SHADE, make_sample

SAMPLES = [make_hard_sample("train", i) for i in range(30)]


def test_samples_are_deterministic_and_differ_from_the_easy_split() -> None:
    a, b = make_hard_sample("val", 4), make_hard_sample("val", 4)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert [q.question for q in a.questions] == [q.question for q in b.questions]
    assert a.frames.tobytes() != make_sample("val", 4).frames.tobytes()
    assert make_task_sample("easy", "val", 4).frames.tobytes() == make_sample("val", 4).frames.tobytes()
    with pytest.raises(ValueError, match="unknown question split 'medium'"):
        make_task_sample("medium", "val", 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("sample", SAMPLES[:12])
def test_every_video_asks_one_question_per_family_with_answer_words(sample) -> None:  # type: ignore[no-untyped-def]
    assert tuple(q.family for q in sample.questions) == HARD_FAMILIES
    assert all(q.answer in ANSWER_WORDS for q in sample.questions)
    assert 8 <= len(sample.objects) <= 14


def _named(sample, question: str) -> list[int]:  # type: ignore[no-untyped-def]
    """Indices of the objects whose "colour shape" name occurs in the question."""
    return [k for k, o in enumerate(sample.objects) if f" {o.name}" in question]


def test_named_objects_are_brief_and_found_only_by_colour_and_shape_together() -> None:
    for sample in SAMPLES:
        kinds = {(o.colour, o.shape) for o in sample.objects}
        for qa in sample.questions:
            if qa.family == "count_of":
                continue
            named = _named(sample, qa.question)
            if qa.family == "binding" and qa.answer == "no":
                assert named == []
                colour, shape = qa.question.removeprefix("is there a ").removesuffix("?").split()
                assert any(c == colour for c, _ in kinds) and any(s == shape for _, s in kinds)
                continue
            assert len(named) == (2 if qa.family == "order" else 1), qa.question  # the name picks one object
            for k in named:
                obj = sample.objects[k]
                assert obj.last_frame - obj.first_frame + 1 in (2, 3)  # on screen 2 or 3 of 8 frames
                assert any(c == obj.colour and s != obj.shape for c, s in kinds)  # a colour confuser
                assert any(s == obj.shape and c != obj.colour for c, s in kinds)  # a shape confuser


def test_answers_match_the_scene() -> None:
    for sample in SAMPLES:
        direction, order, count, striped, binding = sample.questions
        (k,) = _named(sample, direction.question)
        assert direction.answer == sample.objects[k].direction
        first, second = (sample.objects[i] for i in _named(sample, order.question))
        if order.question.index(first.name) > order.question.index(second.name):
            first, second = second, first
        assert order.answer == ("yes" if first.first_frame < second.first_frame else "no")
        kind = count.question.removeprefix("how many ").removesuffix("s are there?")
        assert count.answer == COUNT_WORDS[sum(o.name == kind for o in sample.objects)]
        (k,) = _named(sample, striped.question)
        assert striped.answer == ("yes" if sample.objects[k].striped else "no")
        assert binding.answer == ("yes" if _named(sample, binding.question) else "no")


def test_evidence_is_a_handful_of_tokens() -> None:
    sizes = [int(q.evidence.sum()) for s in SAMPLES for q in s.questions if q.evidence.any()]
    assert 2 <= np.mean(sizes) <= 16  # of 520 visual tokens: under 3 %
    assert max(sizes) <= 40


def test_stripes_are_drawn_in_a_darker_shade_and_labelled() -> None:
    sample = next(s for s in SAMPLES if any(o.striped and o.shape == "square" for o in s.objects))
    k, obj = next((k, o) for k, o in enumerate(sample.objects) if o.striped and o.shape == "square")
    row, col = sample.object_masks[k, obj.first_frame].nonzero()
    pixels = sample.frames[obj.first_frame][row, col]
    dark = np.round(STRIPE_SHADE * np.asarray(RGB[obj.colour])).astype(np.uint8)
    assert (pixels == dark).all(1).any() and (pixels == np.asarray(RGB[obj.colour])).all(1).any()
    assert (sample.patch_striped[sample.patch_owner == k] == 1).all()
    assert sample.patch_striped[sample.patch_owner == -1].sum() == 0


def test_the_chance_bound_of_one_group_is_the_hypergeometric_miss_probability() -> None:
    sample = SAMPLES[0]
    qa = sample.questions[3]  # striped: answerable with one token of the object
    (group,) = evidence_groups(sample, qa)
    total, keep = 520, 52
    miss = math.comb(total - len(group), keep) / math.comb(total, keep)
    expected = (1 - miss) + miss * 0.5
    bound = chance_bound(sample, qa, keep / total, np.random.default_rng(0), draws=20_000)
    assert abs(bound - expected) < 0.015


def test_a_direction_question_needs_two_of_its_frames() -> None:
    sample = SAMPLES[1]
    qa = sample.questions[0]
    groups = evidence_groups(sample, qa)
    assert len(groups) == len(set(np.nonzero(qa.evidence)[0]))  # one group per frame the object is seen in
    assert chance_bound(sample, qa, 1.0, np.random.default_rng(0), draws=10) == 1.0
    keep_one = chance_bound(sample, qa, 1 / 520, np.random.default_rng(0), draws=500)
    assert keep_one == pytest.approx(0.25)  # one token can never be in two frames: a guess among 4


def test_random_keeping_a_tenth_is_bounded_well_below_dense() -> None:
    bounds = family_chance_bounds("test", 40, (0.10, 0.05))
    assert bounds["all"]["random_0.1"] <= 0.75
    assert bounds["all"]["random_0.05"] < bounds["all"]["random_0.1"]
    assert bounds["direction_of"]["random_0.1"] < 0.5
