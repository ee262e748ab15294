"""The one table printer of the benchmarks, and the JSON report writer they share."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def fmt(value: object) -> str:
    """A cell: ``-`` for None, floats to 3 decimals, everything else as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], width: int | None = None) -> None:
    """Print ``rows`` as right-aligned columns under a header of the column names.

    Args:
        rows: one mapping per line; a missing key prints as ``-``.
        columns: the keys to print, in order.
        width: every column's width, headers cut to it (default: the longest header or cell of each column).
    """
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    if width is None:
        widths = [max([len(c), *(len(line[k]) for line in cells)]) for k, c in enumerate(columns)]
    else:
        widths = [width] * len(columns)
    print(" ".join(f"{c[:w]:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for line in cells:
        print(" ".join(f"{v:>{w}}" for v, w in zip(line, widths, strict=True)))


def write_report(report: Mapping[str, Any], path: str | Path) -> None:
    """Write ``report`` as indented JSON to ``path`` and say so."""
    Path(path).write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
