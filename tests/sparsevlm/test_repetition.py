"""The repetition guard: the rule on token lists, the stopping criterion per row, and the engine's answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.stages.decode import decode_segments
from sparsevlm.engine import VideoQAEngine
from sparsevlm.prompt_text import CAPTION_PROMPT
from sparsevlm.repetition import RepeatStop, repeated_tail, trim_repeat
from sparsevlm.tiny.loading import load_tiny

REAL_CLIP = Path(__file__).parents[1] / "assets" / "decord_flipping_a_pancake.mkv"


@pytest.mark.parametrize(
    ("tokens", "n"),
    [([5, 5], 1), ([1, 7, 8, 7, 8], 2), ([1, 2, 3, 1, 2, 3], 3), ([1, 2, 3, 4], 0), ([4, 5, 4], 0), ([], 0)],
)
def test_a_repeated_tail_is_the_shortest_n_gram_seen_twice_in_a_row(tokens: list[int], n: int) -> None:
    assert repeated_tail(tokens, max_ngram=3) == n


def test_trimming_keeps_the_first_copy_and_ignores_padding() -> None:
    assert trim_repeat([9, 4, 4, 0, 0], max_ngram=2, ignore=[0]) == ([9, 4], True)
    assert trim_repeat([9, 4, 0], max_ngram=2, ignore=[0]) == ([9, 4, 0], False)
    assert trim_repeat([1, 2, 3, 1, 2, 3], max_ngram=2) == ([1, 2, 3, 1, 2, 3], False)  # longer than max_ngram


def test_the_criterion_stops_each_row_on_its_own_and_never_on_the_prompt() -> None:
    ids = torch.tensor([[7, 7, 1, 2], [7, 7, 3, 3], [7, 7, 3, 4]])  # prompt [7, 7] repeats, then 2 new tokens
    assert RepeatStop(prompt_length=2, max_ngram=2)(ids, torch.zeros(3, 10)).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="max_ngram must be >= 1"):
        RepeatStop(2, 0)


def test_the_engine_cuts_an_answer_that_repeats_itself() -> None:
    torch.manual_seed(0)
    engine = VideoQAEngine.from_model(*load_tiny()[:2], sparse="video-25")
    _, segments = decode_segments(REAL_CLIP, frames_per_segment=2, segment_seconds=5.0, size=64)
    frames = [s.frames for s in segments]  # the bundled model loops on this real clip ("square square ...")
    prompts = [CAPTION_PROMPT, "What is happening?"]
    free = engine.answer(frames, prompts, max_new_tokens=8)
    guarded = engine.answer(frames, prompts, max_new_tokens=8, repeat_stop=3)
    for a, b in zip(free, guarded, strict=True):
        words = a.text.split()
        kept = len(b.text.split())
        assert not a.stopped_repeating and b.stopped_repeating
        assert a.text.startswith(b.text) and words[kept] == words[kept - 1]  # cut where it began to repeat
        tokens = engine.tokenizer(b.text, add_special_tokens=False)["input_ids"]
        assert repeated_tail(tokens, 3) == 0  # what is left does not repeat


def test_the_pipeline_keys_the_guard_only_when_it_is_on(tmp_path: Path) -> None:
    from pipeline.config import PipelineConfig

    off = PipelineConfig(input_uri=str(tmp_path), output_uri=str(tmp_path / "out"), model=str(tmp_path)).resolved()
    assert off.repeat_stop == 0 and off.replace(repeat_stop=3).config_key() != off.config_key()
    with pytest.raises(ValueError, match=r"repeat_stop must be an int >= 0 \(0: off\), got -1"):
        off.replace(repeat_stop=-1)
