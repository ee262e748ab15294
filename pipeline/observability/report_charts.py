"""Inline SVG charts for the run report page (pipeline/observability/report.py). Pure functions; no I/O, no scripts.

Every chart is a self-contained ``<svg>`` string sized by its ``viewBox``, so the page needs no network and
no JavaScript to draw it. Labels pass through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

__all__ = ["bar_chart", "step_chart"]

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 36  # plot margins in viewBox units
COLOURS = {"ok": "#2e7d32", "partial": "#f9a825", "error": "#c62828"}
LINE = "#1565c0"


def _number(value: float) -> str:
    """A tick or axis label: whole numbers without decimals, others with up to two."""
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.3g}"


def _ticks(top: float, count: int = 4) -> list[float]:
    """Round ticks from 0 to at least ``top``: about ``count`` steps of 1, 2 or 5 times a power of ten."""
    top = max(top, 1e-9)
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


def step_chart(points: Sequence[tuple[float, float]], x_label: str, y_label: str, title: str) -> str:
    """A cumulative curve as a step line.

    Args:
        points: (x, y) pairs, x ascending (e.g. seconds since the run started, videos committed by then).
        x_label: the x axis' name.
        y_label: the y axis' name.
        title: the chart's accessible title.

    Returns:
        An ``<svg>`` element; with no points, one that says so.
    """
    esc = html.escape
    if not points:
        return _empty(title, "nothing was committed")
    x_ticks = _ticks(max(x for x, _ in points))
    y_ticks = _ticks(max(y for _, y in points))
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + width * x / x_ticks[-1]

    def sy(y: float) -> float:
        return TOP + height * (1 - y / y_ticks[-1])

    path = [f"M{sx(0):.1f},{sy(0):.1f}"]
    last_y = 0.0
    for x, y in points:
        path.append(f"L{sx(x):.1f},{sy(last_y):.1f} L{sx(x):.1f},{sy(y):.1f}")
        last_y = y
    parts = [_frame(title), _y_axis(y_ticks, sy), _x_axis(x_ticks, sx)]
    parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{LINE}" stroke-width="2"/>')
    parts.append(_labels(esc(x_label), esc(y_label)))
    return "".join(parts) + "</svg>"


def bar_chart(bars: Sequence[tuple[float, float, float]], x_label: str, y_label: str, title: str) -> str:
    """Bars over intervals, e.g. segments per second in each slice of the run.

    Args:
        bars: (start, end, value) per interval, ascending and not overlapping.
        x_label: the x axis' name.
        y_label: the y axis' name.
        title: the chart's accessible title.
    """
    esc = html.escape
    if not bars:
        return _empty(title, "nothing was committed")
    x_ticks = _ticks(max(end for _, end, _ in bars))
    y_ticks = _ticks(max(value for _, _, value in bars))
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + width * x / x_ticks[-1]

    def sy(y: float) -> float:
        return TOP + height * (1 - y / y_ticks[-1])

    parts = [_frame(title), _y_axis(y_ticks, sy), _x_axis(x_ticks, sx)]
    for start, end, value in bars:
        x0, x1, y = sx(start), sx(end), sy(value)
        parts.append(
            f'<rect x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
            f'height="{sy(0) - y:.1f}" fill="{LINE}" opacity="0.75"/>'
        )
    parts.append(_labels(esc(x_label), esc(y_label)))
    return "".join(parts) + "</svg>"


def _frame(title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" class="chart">'
        f"<title>{html.escape(title)}</title>"
    )


def _empty(title: str, why: str) -> str:
    return (
        _frame(title)
        + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#666">{html.escape(why)}</text></svg>'
    )


def _y_axis(ticks: list[float], sy: Callable[[float], float]) -> str:
    parts = []
    for tick in ticks:
        y = sy(tick)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    return "".join(parts)


def _x_axis(ticks: list[float], sx: Callable[[float], float]) -> str:
    base = HEIGHT - BOTTOM
    parts = [f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}" stroke="#888"/>']
    for tick in ticks:
        x = sx(tick)
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{_number(tick)}</text>')
    return "".join(parts)


def _labels(x_label: str, y_label: str) -> str:
    return (
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle">{x_label}</text>'
        f'<text x="12" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">{y_label}</text>'
    )
