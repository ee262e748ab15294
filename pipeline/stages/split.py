"""Long videos split across decode tasks, so that one hour-long file keeps every decoder busy.

The driver knows each video's size from the listing, not its duration, so a video larger than
``PipelineConfig.split_video_bytes`` becomes ``parts = ceil(size / split_video_bytes)`` work items (at most
:data:`MAX_PARTS`), the same video with ``part = 0 .. parts - 1``. Each decode task opens the file once, plans
the whole video's segments exactly as an unsplit task would, and decodes only its share of them
(:func:`share_bounds`: ``parts`` runs of consecutive segments, sizes differing by at most one, the last one never
empty), so the segment indices, frames and rows are those of one task. Only the last part flags the video's
final segment; rows and the exactly-once commit stay per video: the writer stages every segment it receives
and commits the video when it holds every segment up to the flagged last one (``pipeline/commit/ledger.py``).

Errors: a video that cannot be opened is reported by its last part only (one whole-video error row, as
unsplit). A segment that fails inside part ``k < parts - 1`` gives an error row for it and for each later
segment of that part (the part stops there), so the video still has a row for every segment index; in the last
part a failure ends the video as it would unsplit. Each part downloads an object-store video in full
(``open_local_copy``; no range reads yet), so splitting pays where decoding costs more than the download.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_PARTS", "share_bounds", "split_items"]

MAX_PARTS = 16  # decode tasks per video: past this the per-task open (and download) costs more than it spreads


def share_bounds(segments: int, part: int, parts: int) -> tuple[int, int]:
    """The segment indices ``[first, stop)`` that part ``part`` of ``parts`` decodes out of ``segments``."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    return segments * part // parts, segments * (part + 1) // parts


def split_items(items: list[dict[str, Any]], split_video_bytes: int | None) -> list[dict[str, Any]]:
    """The decode stage's work items: each video's item once, or ``parts`` times (``part`` set) when its size
    exceeds ``split_video_bytes`` (None: never split)."""
    out: list[dict[str, Any]] = []
    for item in items:
        size = item.get("source_size") or 0
        parts = 1 if split_video_bytes is None else min(MAX_PARTS, max(1, math.ceil(size / split_video_bytes)))
        out.extend({**item, "part": part, "parts": parts} for part in range(parts))
    return out
