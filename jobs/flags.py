"""argparse value types the jobs share.

Each parses one flag's text or raises :class:`argparse.ArgumentTypeError` naming the value and the expected
form; argparse puts the flag in front (``argument --limit: expected an int >= 1, got '0'``) and exits with 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)

_FORMS = {int: "an int", float: "a number"}


def positive(kind: type[Number]) -> Callable[[str], Number]:
    """An argparse type: a ``kind`` above 0 (an int >= 1, or a number > 0; not NaN)."""
    expected = "an int >= 1" if kind is int else f"{_FORMS[kind]} > 0"

    def parse(text: str) -> Number:
        return _parse(kind, text, expected, lambda value: value > 0)

    return parse


def non_negative(kind: type[Number]) -> Callable[[str], Number]:
    """An argparse type: a ``kind`` >= 0 (not NaN)."""
    expected = f"{_FORMS[kind]} >= 0"

    def parse(text: str) -> Number:
        return _parse(kind, text, expected, lambda value: value >= 0)

    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (not NaN), e.g. ``0.02`` (``--shadow-fraction``)."""
    return _parse(float, text, "a number in [0, 1]", lambda value: 0 <= value <= 1)


def auto_or_count(text: str) -> str | int:
    """An argparse type: ``auto`` or an int >= 0 (``--repeat-stop``)."""
    if text == "auto":
        return text
    return _parse(int, text, "auto or an int >= 0", lambda value: value >= 0)


def int_list(text: str) -> list[int]:
    """An argparse type: a comma-separated list of ints >= 0, e.g. ``3,4,5`` (``--seeds``, ``--withdraw``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 3,4,5") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must list integers >= 0, e.g. 3,4,5")
    return values


def _parse(kind: type[Number], text: str, expected: str, accept: Callable[[Number], bool]) -> Number:
    """``kind(text)`` if ``accept`` takes it (a comparison, so NaN fails), else an error naming ``expected``."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value
