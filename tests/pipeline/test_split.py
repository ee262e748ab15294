"""Long videos split across decode tasks: the same rows as one task, committed once per video."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.commit.ledger import Ledger
from pipeline.config import PipelineConfig
from pipeline.harness.standin import StandInCost
from pipeline.run import run_pipeline
from pipeline.stages import readers
from pipeline.stages.decode import decode_rows, decode_segments, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.schema import LAST_SEGMENT
from pipeline.stages.sources import list_sources
from pipeline.stages.split import MAX_PARTS, share_bounds, split_items
from pipeline.stages.video import CorruptMedia, Segment, SegmentPlan
from tests.pipeline.media import encode
from tests.pipeline.runs import make_config, read_rows

COST = StandInCost(ms_per_segment=1.0)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """45 s at 4 fps, 32 px, a keyframe every 2 s: nine 5 s segments."""
    folder = tmp_path_factory.mktemp("long")
    frames = np.zeros((180, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(180, dtype=np.uint8)[:, None, None]  # every frame differs
    return encode(folder / "long.mp4", frames, fps=4, options={"g": "8"})


def test_shares_cover_every_segment_once_and_the_last_is_never_empty() -> None:
    for segments in range(1, 30):
        for parts in range(1, 8):
            bounds = [share_bounds(segments, k, parts) for k in range(parts)]
            assert [i for first, stop in bounds for i in range(first, stop)] == list(range(segments))
            assert bounds[-1][1] > bounds[-1][0]
    with pytest.raises(ValueError, match="part must be in"):
        share_bounds(4, 2, 2)


def test_only_large_videos_are_split_and_at_most_max_parts_times() -> None:
    items = [{"source_size": 10}, {"source_size": 25}, {"source_size": None}, {"source_size": 10**9}]
    parts = Counter(i["parts"] for i in split_items(items, split_video_bytes=10))
    assert parts == {1: 2, 3: 3, MAX_PARTS: MAX_PARTS}
    assert [i["part"] for i in split_items(items[1:2], 10)] == [0, 1, 2]
    assert len(split_items(items, None)) == 4


def _config(video: Path, tmp_path: Path, model: Path, **changes: Any) -> PipelineConfig:
    return make_config(str(video.parent), str(tmp_path / "out"), model, stand_in=COST, **changes)


def _rows(config: PipelineConfig, parts: int) -> list[dict[str, Any]]:
    item = source_row(list_sources(config.input_uri)[0], config.config_key(), config.questions)
    tasks = split_items([item], None if parts == 1 else max(1, -(-item["source_size"] // parts)))
    assert len(tasks) == parts
    return [row for task in tasks for row in decode_rows(task, config.decoding, frame_size=32)]


def test_three_parts_decode_the_rows_of_one_task(long_video: Path, tmp_path: Path, pipeline_model_dir: Path) -> None:
    config = _config(long_video, tmp_path, pipeline_model_dir)
    whole, split = _rows(config, 1), _rows(config, 3)
    assert [r["segment_index"] for r in split] == list(range(9))
    assert [r[LAST_SEGMENT] for r in split] == [False] * 8 + [True]
    assert split == whole  # frames, timestamps and flags


@pytest.mark.parametrize("part", [1, 2])
def test_pyav_parts_seek_to_their_share(long_video: Path, part: int) -> None:
    def frames(share: tuple[int, int]) -> list[Segment]:
        _, segments = decode_segments(long_video, segment_seconds=5.0, size=32, decoder="pyav", share=share)
        return list(segments)

    whole = frames((0, 1))
    first, stop = share_bounds(len(whole), part, 3)
    got = frames((part, 3))
    assert [s.index for s in got] == list(range(first, stop))
    for segment in got:
        assert np.array_equal(segment.frames, whole[segment.index].frames)
        assert segment.timestamps_s == whole[segment.index].timestamps_s


def test_a_failing_middle_part_gives_every_segment_a_row_and_commits_once(
    long_video: Path, tmp_path: Path, pipeline_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = readers.DecordReader.iter_segments

    def broken_at_four(
        self: readers.DecordReader, plans: list[SegmentPlan], size: int, to_the_end: bool = True
    ) -> Iterator[Segment]:
        for segment in decode(self, plans, size, to_the_end):
            if segment.index == 4:
                raise CorruptMedia("damaged at segment 4")
            yield segment

    monkeypatch.setattr(readers.DecordReader, "iter_segments", broken_at_four)
    config = _config(long_video, tmp_path, pipeline_model_dir)
    rows = _rows(config, 3)  # part 1 holds segments 3-5: 3 decodes, 4 fails, 5 is never decoded
    assert [(r["segment_index"], r["error_class"]) for r in rows[3:6]] == [
        (3, None),
        (4, "CorruptMedia"),
        (5, "CorruptMedia"),
    ]
    assert [r[LAST_SEGMENT] for r in rows] == [False] * 8 + [True]
    ledger = Ledger(*config.output.filesystem())
    predictor = Predictor(config.model_settings, config.answering)
    committed = [e for row in reversed(rows) for e in ledger.write_rows(predictor(pa.Table.from_pylist([row])), "r")]
    assert len(committed) == 1 and committed[0].status == "partial"
    # a caption and an answer per decoded segment, one error row per failed one
    assert Counter(r["segment_index"] for r in read_rows(config)) == {i: 1 if i in (4, 5) else 2 for i in range(9)}


@pytest.mark.slow  # 10 s here (2 cores): split and unsplit Ray runs
@pytest.mark.usefixtures("pipeline_ray")
def test_a_split_run_commits_the_rows_of_an_unsplit_run_once(
    long_video: Path, tmp_path: Path, pipeline_model_dir: Path
) -> None:
    size = long_video.stat().st_size
    whole = _config(long_video, tmp_path / "whole", pipeline_model_dir, split_video_bytes=None)
    split = _config(long_video, tmp_path / "split", pipeline_model_dir, split_video_bytes=size // 3)
    assert len(split_items([{"source_size": size}], split.split_video_bytes)) >= 3
    summaries = [run_pipeline(c) for c in (whole, split)]
    assert [(s.processed, s.failed, s.partial) for s in summaries] == [(1, 0, 0)] * 2
    keys = ("segment_index", "task", "segment_start_s", "segment_end_s", "frame_timestamps_s", "answer")
    got = [sorted(tuple(str(r[k]) for k in keys) for r in read_rows(c)) for c in (whole, split)]
    assert got[0] == got[1] and len(got[1]) == 9 * 2 == len(set(got[1]))
    assert run_pipeline(split.replace(run_id="rerun")).skipped == 1
