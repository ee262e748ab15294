"""How an error is told in one line, for the driver, the stages and the jobs alike.

Two lines of a message matter: the first, its headline (what a job's one-line ending and a run failure show:
our own errors put the fix there), and the last, which names the cause in errors that wrap others (Ray's task
errors and botocore's put the underlying error at the end). No Ray or torch here.
"""

from __future__ import annotations

__all__ = ["cause_line", "headline", "short_error"]


def headline(err: BaseException) -> str:
    """The first non-empty line of an error's message, or its class name when the message is empty."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def cause_line(err: BaseException, limit: int = 500) -> str:
    """The last non-empty line of an error's message (where Ray and botocore put the cause), at most ``limit``
    characters, or its class name when the message is empty."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1][:limit] if lines else type(err).__name__


def short_error(err: BaseException) -> str:
    """``Type: last line of the message`` (at most 300 characters), for error messages that name a cause."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"
