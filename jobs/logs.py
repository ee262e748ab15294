"""How a job's log lines look: plain text for people, or one JSON object per line for log shippers.

``--log-format json`` sends every log record (the job's, the pipeline's and Ray's Python loggers, Python
warnings), the progress lines and a failing job's last error line to stderr as one JSON object each::

    {"time": "2026-12-02T18:30:00.123Z", "level": "INFO", "logger": "pipeline.run", "message": "..."}

with ``exc_info`` (the formatted traceback) when a record carries one, and any ``extra={"fields": {...}}``
merged in (the progress lines carry their counts that way). What does not pass through Python's logging stays
plain: Ray workers' output is kept in Ray's log files instead of being relayed (``RAY_LOG_TO_DRIVER=0``), and
Ray's C++ core may still print a line of its own format.

Quiet by default (``--log-level info``): records an operator cannot act on are dropped (:data:`UNACTIONABLE`:
deprecation notes about Ray Data's own arguments, notes on its progress bars, its executor's plan, a concurrency
hint about a stage with fewer inputs than tasks; Ray's INFO lines), and model workers load their weights without
a progress bar. ``--log-level debug`` shows all of them, and every library's DEBUG records.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import warnings
from typing import Any, Literal, get_args

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LogLevel = Literal["info", "debug"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
# Messages of Ray, Ray Data and Python warnings that say nothing an operator can change (shown at debug).
UNACTIONABLE = re.compile(
    r"is deprecated|Progress bars disabled|^Starting execution of Dataset|^Execution plan of Dataset|"
    r"execution finished in|Started a local Ray instance|The maximum number of concurrent tasks"
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that Ray sets up with handlers of their own (and propagate=False): in JSON mode they go through ours.
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and extra ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a test's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property always reads stderr
        pass


class _Actionable(logging.Filter):
    """Drops records whose message matches :data:`UNACTIONABLE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not UNACTIONABLE.search(record.getMessage())


def configure_logging(log_format: LogFormat = "text", level: LogLevel = "info") -> None:
    """Send log records at INFO (or DEBUG) and above to stderr, formatted as ``log_format``.

    Replaces the handler an earlier call installed. Text mode, like ``logging.basicConfig``, adds none when
    the root logger already has other handlers (a host application's or a test runner's); JSON mode, asked
    for by name, always does. Ray's loggers get handlers of their own when Ray is imported; in JSON mode call
    :func:`route_ray_logs` once Ray may be imported (after :func:`pipeline.ray_env.use_local_ray_env`).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    if log_format == "text" and root.handlers:
        return
    handler = _StderrHandler()
    # At INFO, Ray Data's logger passes DEBUG records on (its own handlers filter them): the handler drops them.
    handler.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    if level == "info":
        handler.addFilter(_Actionable())
        _ignore_unactionable_warnings()
        # transformers reads it at import: the model workers (started by this process) load without a bar.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if log_format == "json":
        logging.captureWarnings(True)  # Python warnings become records of the "py.warnings" logger
        # Ray workers' prints (a model's loading bars, say) are relayed to the driver's stderr as plain text;
        # in JSON mode they stay in Ray's log files. Ray reads this once, at import: jobs import it later.
        os.environ.setdefault("RAY_LOG_TO_DRIVER", "0")


def _ignore_unactionable_warnings() -> None:
    warnings.filterwarnings("ignore", message=f".*(?:{UNACTIONABLE.pattern})")  # matched from the start


def route_ray_logs() -> None:
    """Send Ray's and Ray Data's driver-side log records through the root handler (imports Ray).

    Both attach their own stderr handlers at import and stop propagation; their lines would be in Ray's format
    (plain text in JSON mode) and escape the root handler's filter. Records Ray Data writes to its own log file
    under the session folder stay there too. Below DEBUG, Ray's INFO records are left out.
    """
    import ray.data  # noqa: F401  (its import configures the loggers this replaces)

    debug = logging.getLogger().level <= logging.DEBUG
    for name in _RAY_LOGGERS:
        ray_logger = logging.getLogger(name)
        for old in list(ray_logger.handlers):
            if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                ray_logger.removeHandler(old)
        ray_logger.propagate = True
        ray_logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:  # again: importing Ray put its own warning filters in front of configure_logging's
        _ignore_unactionable_warnings()


def json_logging() -> bool:
    """Whether the root logger writes JSON (``configure_logging("json")`` ran)."""
    handlers = logging.getLogger().handlers
    return any(isinstance(h, _StderrHandler) and isinstance(h.formatter, JsonFormatter) for h in handlers)


def error_line(message: str, exit_code: int) -> str:
    """A failing job's last line on stderr: ``error: <message>``, or a JSON record in JSON mode."""
    if not json_logging():
        return f"error: {message}"
    record = logging.LogRecord("jobs", logging.ERROR, __file__, 0, message, None, None)
    record.fields = {"exit_code": exit_code}
    return JsonFormatter().format(record)
