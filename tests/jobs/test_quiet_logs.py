"""Quiet by default: what an operator cannot act on is left out at ``--log-level info`` and shown at ``debug``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from jobs.logs import configure_logging

NOISE = (
    ("ray.data._internal.util", logging.WARNING, "The argument ``concurrency`` is deprecated in Ray 2.51."),
    ("ray.data", logging.WARNING, "Progress bars disabled. To enable, set ..."),
    ("ray.data._internal.execution.streaming_executor", logging.INFO, "Starting execution of Dataset dataset_1."),
)


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    ray_loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [(lg, lg.level, lg.propagate) for lg in ray_loggers]
    for lg in ray_loggers:  # as before a job routes them (an earlier test in this process may have)
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
    with warnings.catch_warnings():
        yield
    for lg, level, propagate in levels:
        lg.setLevel(level)
        lg.propagate = propagate
    configure_logging("text")


def _emit_noise_and_a_real_warning() -> None:
    for name, level, message in NOISE:
        logging.getLogger(name).log(level, message)
    logging.getLogger("pipeline.build").warning("the output is almost full")
    # Python shows a warning once per call site: forget that an earlier test in this process already saw it.
    globals().pop("__warningregistry__", None)
    warnings.warn("The maximum number of concurrent tasks for 'MapBatches(commit_rows)' is set to 2", stacklevel=1)


def test_info_leaves_out_what_an_operator_cannot_act_on(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().handlers.clear()  # pytest's capture handler would make text mode add none
    configure_logging("text", "info")
    _emit_noise_and_a_real_warning()
    err = capsys.readouterr().err
    assert "the output is almost full" in err
    assert not any(message in err for _, _, message in NOISE) and "maximum number of concurrent" not in err


def test_debug_shows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().handlers.clear()
    with warnings.catch_warnings(record=True) as caught:
        # Start from Python's own filters (a module the suite imported may have added one): debug adds none, so
        # the warning is issued; what the logging module then does with it is not this test's business.
        warnings.resetwarnings()
        configure_logging("text", "debug")
        _emit_noise_and_a_real_warning()
    err = capsys.readouterr().err
    assert all(message in err for _, _, message in NOISE)
    assert any("maximum number of concurrent" in str(w.message) for w in caught)


def test_an_unknown_level_names_the_choices() -> None:
    with pytest.raises(ValueError, match="log level must be one of info, debug, got 'loud'"):
        configure_logging("text", "loud")  # type: ignore[arg-type]
