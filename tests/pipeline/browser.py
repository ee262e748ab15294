"""Headless Chromium (the distribution's package, installed by `make install`) for the report page tests.

Each call starts a fresh browser with a throwaway profile, no network (every request goes to a proxy on a
closed loopback port, so a page that fetched anything would log a console error), and its console written
to stderr, where :func:`console_messages` finds it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Chromium's stderr log line for a console message (console.log/error, an uncaught exception, a failed
# load): "[pid:tid:date/time:INFO:CONSOLE:12] "text", source: file:///... (12)"
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\]\s*(.*)")


def find_chromium() -> str | None:
    """The chromium executable on PATH, or None."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def headless(url: str, *extra: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url`` with ``extra`` flags (``--dump-dom``, ``--screenshot=...``)."""
    chromium = find_chromium()
    assert chromium is not None, "chromium is not installed: run `make install` (apt-get install chromium)"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",  # root in CI containers; the page is our own file
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--proxy-server=127.0.0.1:9",  # nothing listens there: any fetch fails, and logs to the console
            "--proxy-bypass-list=<-loopback>",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)


def console_messages(stderr: str) -> list[str]:
    """The console messages in a headless run's stderr."""
    return [match[1] for line in stderr.splitlines() if (match := _CONSOLE.search(line))]


def dump_dom(page: Path) -> tuple[str, list[str]]:
    """The DOM of a local page after it loaded, and the console messages it logged."""
    done = headless(page.resolve().as_uri(), "--dump-dom")
    return done.stdout, console_messages(done.stderr)


def screenshot(page: Path, out: Path, width: int = 1100, height: int = 1800) -> list[str]:
    """Save a PNG of the page's first ``width x height`` pixels; return the console messages."""
    done = headless(
        page.resolve().as_uri(), f"--screenshot={out}", f"--window-size={width},{height}", "--hide-scrollbars"
    )
    assert out.is_file() and out.stat().st_size > 0, f"chromium wrote no screenshot: {done.stderr[-2000:]}"
    return console_messages(done.stderr)
