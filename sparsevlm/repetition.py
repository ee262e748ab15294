"""Stop a generation that only repeats itself: "square square square square" ends as "square".

The rule: a row stops as soon as its generated tokens end with the same ``n`` tokens twice in a row, for any
``n`` up to ``max_ngram`` (``X X`` with ``X`` of 1 to ``max_ngram`` tokens); its answer keeps the first ``X``.
Greedy decoding that produced ``X X`` is in a loop: from here on it would repeat ``X`` until
``max_new_tokens``. A legitimate immediate repetition ("ha ha") is cut too, which is why callers switch the
guard on (``repeat_stop``), and the pipeline keys it into its config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria

__all__ = ["RepeatStop", "repeated_tail", "trim_repeat"]


def repeated_tail(tokens: Sequence[int], max_ngram: int) -> int:
    """The length ``n`` of the shortest ``X`` such that ``tokens`` ends with ``X X`` (``n <= max_ngram``), or 0."""
    for n in range(1, max_ngram + 1):
        if len(tokens) >= 2 * n and list(tokens[-n:]) == list(tokens[-2 * n : -n]):
            return n
    return 0


def trim_repeat(tokens: Sequence[int], max_ngram: int, ignore: Sequence[int] = ()) -> tuple[list[int], bool]:
    """Drop the second copy of a repeated tail (after removing trailing ``ignore`` tokens, e.g. padding).

    Returns:
        (the tokens to decode, whether a repetition was cut).
    """
    kept = list(tokens)
    while kept and kept[-1] in ignore:
        kept.pop()
    n = repeated_tail(kept, max_ngram)
    return (kept[:-n], True) if n else (list(tokens), False)


class RepeatStop(StoppingCriteria):
    """Per row: done once the tokens generated after ``prompt_length`` end with a repeated n-gram.

    Args:
        prompt_length: the (left-padded) prompt's length; only tokens after it count.
        max_ngram: the longest repeated ``X`` looked for.
    """

    def __init__(self, prompt_length: int, max_ngram: int) -> None:
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {max_ngram}")
        self.prompt_length = prompt_length
        self.max_ngram = max_ngram

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length :]  # [B, G]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # [B]
        for n in range(1, min(self.max_ngram, generated.shape[1] // 2) + 1):
            done |= (generated[:, -n:] == generated[:, -2 * n : -n]).all(dim=1)
        return done  # type: ignore[return-value]
