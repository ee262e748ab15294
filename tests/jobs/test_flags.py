"""The argparse value types of jobs/flags.py: what each accepts, and errors that name the value and the form."""

from __future__ import annotations

import argparse
import math

import pytest

from jobs.flags import auto_or_count, fraction, int_list, non_negative, positive


def test_positive_takes_values_above_zero_of_its_kind() -> None:
    assert positive(int)("3") == 3 and isinstance(positive(int)("3"), int)
    assert positive(float)("0.5") == 0.5


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (int, "0", "expected an int >= 1, got '0'"),
        (int, "-2", "expected an int >= 1, got '-2'"),
        (int, "1.5", "expected an int >= 1, got '1.5'"),
        (float, "0", "expected a number > 0, got '0'"),
        (float, "nan", "expected a number > 0, got 'nan'"),
        (float, "soon", "expected a number > 0, got 'soon'"),
    ],
)
def test_positive_refuses_with_the_value_and_the_form(kind: type, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
        positive(kind)(text)


def test_non_negative_takes_zero_and_refuses_negatives_and_nan() -> None:
    assert non_negative(float)("0") == 0.0 and non_negative(int)("0") == 0
    assert math.isinf(non_negative(float)("inf"))
    for text in ("-1", "nan", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^expected a number >= 0, got '{text}'$"):
            non_negative(float)(text)


def test_fraction_takes_zero_to_one() -> None:
    assert (fraction("0"), fraction("0.02"), fraction("1")) == (0.0, 0.02, 1.0)
    for text in ("-0.1", "1.5", "nan", "some"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^expected a number in \\[0, 1\\], got '{text}'$"):
            fraction(text)


def test_auto_or_count() -> None:
    assert auto_or_count("auto") == "auto" and auto_or_count("0") == 0 and auto_or_count("4") == 4
    for text in ("-1", "Auto", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^expected auto or an int >= 0, got '{text}'$"):
            auto_or_count(text)


def test_int_list() -> None:
    assert int_list("3,4,5") == [3, 4, 5] and int_list("0, 2,") == [0, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        int_list("3,x")
    for text in ("", ",", "1,-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="must list integers >= 0"):
            int_list(text)


def test_a_parser_names_the_flag() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--limit", type=positive(int))
    with pytest.raises(argparse.ArgumentError, match="argument --limit: expected an int >= 1, got '0'"):
        parser.parse_args(["--limit", "0"])
