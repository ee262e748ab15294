"""The one-line forms of an error: the headline (first line), the cause (last line), and the typed short form."""

from __future__ import annotations

from pipeline.error_lines import cause_line, headline, short_error


def test_each_form_picks_its_line_and_an_empty_message_falls_back_to_the_class() -> None:
    wrapped = RuntimeError("Task failed: retry hint\n\n  Traceback ...\nOSError: bucket is gone\n")
    assert headline(wrapped) == "Task failed: retry hint"
    assert cause_line(wrapped) == "OSError: bucket is gone"
    assert short_error(wrapped) == "RuntimeError: OSError: bucket is gone"
    assert (headline(ValueError()), cause_line(ValueError("  \n"))) == ("ValueError", "ValueError")
    assert short_error(KeyError()) == "KeyError: "
    assert len(cause_line(OSError("x" * 900))) == 500 and len(short_error(OSError("y" * 900))) == len("OSError: ") + 300
