"""Decoder memory: one process decodes 200 videos and its resident memory stays flat (decord is known to
leak in some versions; a decode worker lives for many videos).

The warm-up must open every kind of clip once: the first MKV/H.264, AVI, WebM/VP9 and MP4 each grow the
process by a few MB for their codec's state, which is not a leak. Measured here, 200 decodes in that order
(20 warm-up): +0.0 % after warm-up; the same decodes grouped by clip with only the first clip in the warm-up
showed +3 % (a full interpreter) to +17 % (pytest), which is what an earlier version of this test measured."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.stages.decode import decode_segments

CLIPS = ("decord_flipping_a_pancake.mkv", "mmaction2_test.avi", "gradio_video_sample.webm", "moviepy_fire2.mp4")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _decode_all(path: Path) -> int:
    _, segments = decode_segments(path, frames_per_segment=8, segment_seconds=10.0, size=64)
    return sum(s.frames.shape[0] for s in segments)


@pytest.mark.slow
def test_rss_is_flat_over_200_videos(assets: Path, tmp_path: Path) -> None:
    paths = []
    for copy in range(50):  # distinct file names, as in a real run (each opens a new reader)
        for name in CLIPS:  # interleaved: the warm-up opens every codec (module docstring)
            path = tmp_path / f"{copy:02d}_{name}"
            shutil.copy(assets / name, path)
            paths.append(path)
    warm = 20
    for path in paths[:warm]:
        assert _decode_all(path) > 0
    after_warm_up = _rss_bytes()
    for path in paths[warm:]:
        assert _decode_all(path) > 0
    growth = _rss_bytes() / after_warm_up - 1
    assert growth < 0.10, f"RSS grew {growth:.1%} over {len(paths) - warm} videos after warm-up"
