"""Decoding real and generated videos into segments of model-resolution frames."""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import s3fs

from pipeline.config import PipelineConfig
from pipeline.stages.decode import decode_rows, decode_segments, plan_frames, plan_segments, source_row
from pipeline.stages.schema import LAST_SEGMENT
from pipeline.stages.shots import ShotSegmenting
from pipeline.stages.sources import list_sources
from pipeline.stages.split import split_items
from pipeline.stages.storage import open_local_copy
from pipeline.stages.video import (
    CorruptMedia,
    DecodeError,
    MissingMedia,
    NoVideoStream,
    Segment,
    TooLarge,
    UnsupportedMedia,
    VideoInfo,
)
from sparsevlm.resize import resize_and_crop_uint8
from tests.pipeline.media import SHOT_COLOURS, encode, shot_frames

SIZE = 64  # model resolution used in these tests (smaller than 224 keeps them fast)
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials

# ---------------------------------------------------------------------------------------------------------
# Generated clips


def numbered_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is a flat grey whose level encodes i (levels 5 apart survive lossy coding)."""
    levels = np.arange(count) * 5 + 8
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).astype(np.uint8)


def frame_numbers(segment: Segment) -> list[int]:
    """Recover i from the grey level of each decoded frame."""
    return [round((float(f.mean()) - 8) / 5) for f in segment.frames]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    numbered = numbered_frames(45)  # 3 s at 15 fps
    pattern = np.zeros((64, 96, 3), dtype=np.uint8)
    pattern[:32, :, 0] = 255  # red top half, as stored
    h264 = encode(root / "numbered.mp4", numbered, options={"crf": "0"})
    faststart = encode(root / "faststart.mp4", numbered, container_options={"movflags": "faststart"})
    clips = {
        "h264": h264,
        "av1": encode(root / "numbered.mkv", numbered, codec="libsvtav1", options={"preset": "12", "crf": "10"}),
        "rot90": encode(root / "rot90.mp4", np.stack([pattern] * 10), rotation=90),
        "rot-90": encode(root / "rot-90.mp4", np.stack([pattern] * 10), rotation=-90),
        # decord 0.6.0 fails on quarter-turned frames this small ("The size must exactly match")
        "rot90_small": encode(root / "rot90_small.mp4", np.stack([pattern[8:56]] * 10), rotation=90),
        "empty": root / "empty.mp4",
        "text": root / "notes.mp4",
        "cut_moov": root / "cut_moov.mp4",
        "cut_faststart": root / "cut_faststart.mp4",
        "audio": root / "audio.m4a",
    }
    clips["empty"].write_bytes(b"")
    clips["text"].write_text("not a video\n" * 100)
    clips["cut_moov"].write_bytes(h264.read_bytes()[: h264.stat().st_size // 2])  # moov is at the end
    clips["cut_faststart"].write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    with av.open(str(clips["audio"]), "w") as out:
        audio = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1024, Fraction(1, 16000)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return clips


def decode_all(path: Path, **kwargs: object) -> tuple[VideoInfo, list[Segment]]:
    info, segments = decode_segments(path, size=SIZE, **kwargs)  # type: ignore[arg-type]
    return info, list(segments)


# ---------------------------------------------------------------------------------------------------------
# Segment planning (pure)


def test_plan_long_video_has_ten_second_segments() -> None:
    ts = np.arange(1090) / 30.0
    plans = plan_segments(ts, 36.33, frames_per_segment=8, segment_seconds=10.0)
    assert [(p.start_s, p.end_s) for p in plans] == [(0, 10), (10, 20), (20, 30), (30, 36.33)]
    for plan in plans:
        assert len(plan.frame_indices) == 8 and np.all(np.diff(plan.frame_indices) > 0)
        times = ts[plan.frame_indices]
        assert np.all((times >= plan.start_s) & (times < plan.end_s))
    # linspace centres: frames 0..299 in eight runs of 37.5 -> centres 18.75, 56.25, ...
    assert plans[0].frame_indices.tolist() == [18, 56, 93, 131, 168, 206, 243, 281]


def test_plan_merges_a_short_tail_and_keeps_a_long_one() -> None:
    assert len(plan_segments(np.arange(311) / 30, 10.38, 8, 10.0)) == 1
    plans = plan_segments(np.arange(750) / 30, 25.0, 8, 10.0)
    assert [(p.start_s, p.end_s) for p in plans] == [(0, 10), (10, 20), (20, 25)]


def test_plan_whole_video_mode() -> None:
    (plan,) = plan_segments(np.arange(100) / 25, 4.0, 4, None)
    assert (plan.start_s, plan.end_s) == (0, 4.0) and plan.frame_indices.tolist() == [12, 37, 62, 87]


def test_plan_repeats_frames_when_a_segment_has_too_few() -> None:
    (plan,) = plan_segments(np.array([0.0, 0.5, 1.0]), 1.5, 8, 10.0)
    assert plan.frame_indices.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_plan_gap_in_variable_frame_rate_takes_the_frame_on_screen() -> None:
    ts = np.array([0.0, 0.1, 0.2, 15.0, 15.1])
    plans = plan_segments(ts, 15.2, 2, 5.0)
    assert [p.frame_indices.tolist() for p in plans] == [[0, 2], [2, 2], [3, 4]]


def test_plan_frames_in_given_bounds_takes_frames_inside_each() -> None:
    ts = np.arange(150) / 15
    plans = plan_frames(ts, [(0.0, 3.4), (3.4, 7.0), (7.0, 10.0)], 4)
    assert [(p.start_s, p.end_s) for p in plans] == [(0.0, 3.4), (3.4, 7.0), (7.0, 10.0)]
    for plan in plans:
        times = ts[plan.frame_indices]
        assert np.all((times >= plan.start_s) & (times < plan.end_s))
    assert (
        plan_frames(ts, [(0.0, 10.0)], 4)[0].frame_indices.tolist()
        == plan_segments(ts, 10.0, 4, None)[0].frame_indices.tolist()
    )


# ---------------------------------------------------------------------------------------------------------
# Real videos (tests/assets)

ASSET_EXPECTATIONS = {
    # file: (codec, width, height, frames, segments, rotation)
    "decord_flipping_a_pancake.mkv": ("h264", 426, 240, 310, 1, 0),  # Matroska, 10.4 s: tail merged
    "gradio_video_sample.webm": ("vp9", 480, 270, 150, 1, 0),  # VP9 with alt-ref frames
    "mmaction2_test.avi": ("mpeg4", 320, 240, 164, 1, 0),  # no pts in decord: index / fps
    "moviepy_fire2.mp4": ("h264", 1280, 720, 25, 1, 180),  # rotated, VFR
    "torchcodec_nasa_13013.mp4": ("h264", 480, 270, 390, 1, 0),  # two video streams
    "videollava_sample_demo_22.mp4": ("h264", 204, 360, 1090, 4, 0),  # 36 s portrait VFR
}


@pytest.mark.parametrize("name", sorted(ASSET_EXPECTATIONS))
def test_real_videos_decode_into_consistent_segments(assets: Path, name: str) -> None:
    codec, width, height, count, n_segments, rotation = ASSET_EXPECTATIONS[name]
    info, segments = decode_all(assets / name, frames_per_segment=4)
    assert (info.codec, info.width, info.height, info.num_frames, info.rotation) == (
        codec,
        width,
        height,
        count,
        rotation,
    )
    assert info.decoder == "decord" and info.fps > 0
    assert len(segments) == n_segments
    assert segments[0].start_s == 0 and segments[-1].end_s == pytest.approx(info.duration_s)
    for previous, segment in itertools.pairwise(segments):
        assert segment.start_s == previous.end_s
    for k, segment in enumerate(segments):
        assert segment.index == k
        assert segment.frames.shape == (4, SIZE, SIZE, 3) and segment.frames.dtype == np.uint8
        times = np.array(segment.timestamps_s)
        assert np.all(np.diff(times) >= 0)
        assert np.all((times >= segment.start_s) & (times <= segment.end_s))
        assert segment.frames.std() > 1  # real pictures, not blank buffers


def test_vp9_alt_ref_frames_decode_with_one_thread(assets: Path) -> None:
    info, segments = decode_all(assets / "gradio_video_sample.webm", frames_per_segment=8)
    frames = segments[0].frames.astype(np.float32)
    assert info.codec == "vp9" and 5 < frames.mean() < 40  # Earth at night: dark frames (mean ~10-20)
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.1  # and they change: the Earth turns


def test_dual_stream_file_uses_the_stream_decord_picks(assets: Path) -> None:
    decord_info, _ = decode_all(assets / "torchcodec_nasa_13013.mp4")
    pyav_info, _ = decode_all(assets / "torchcodec_nasa_13013.mp4", decoder="pyav")
    for info in (decord_info, pyav_info):
        assert (info.width, info.height, info.num_frames) == (480, 270, 390)
        assert info.fps == pytest.approx(29.97, abs=0.01) and info.duration_s == pytest.approx(13.01, abs=0.01)


def stored_frames(path: Path, timestamps: list[float]) -> np.ndarray:
    """PyAV's frames at the given times as stored in the file (not rotated): [N, H, W, 3]."""
    found = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            found[round(float(frame.pts * stream.time_base), 3)] = frame.to_ndarray(format="rgb24")
    return np.stack([found[round(t, 3)] for t in timestamps])


def test_rotated_phone_video_comes_out_upright(assets: Path) -> None:
    path = assets / "moviepy_fire2.mp4"
    info, (segment,) = decode_all(path, frames_per_segment=4)
    assert info.rotation == 180
    stored = stored_frames(path, segment.timestamps_s)
    upright = np.stack([resize_and_crop_uint8(np.rot90(f, 2), SIZE) for f in stored]).astype(np.int16)
    as_stored = np.stack([resize_and_crop_uint8(f, SIZE) for f in stored]).astype(np.int16)
    assert np.abs(segment.frames - upright).mean() < 1.0
    assert np.abs(segment.frames - as_stored).mean() > 20  # i.e. not upside down
    _, (by_pyav,) = decode_all(path, frames_per_segment=4, decoder="pyav")
    assert by_pyav.timestamps_s == pytest.approx(segment.timestamps_s, abs=1e-4)
    assert np.abs(by_pyav.frames.astype(np.int16) - segment.frames).mean() < 1.0


@pytest.mark.parametrize(("name", "clockwise"), [("rot90", 270), ("rot-90", 90)])
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_quarter_turn_rotation(clips: dict[str, Path], name: str, clockwise: int, decoder: str) -> None:
    info, (segment,) = decode_all(clips[name], decoder=decoder, frames_per_segment=2)
    assert (info.width, info.height, info.rotation) == (64, 96, clockwise)  # stored 96x64 landscape
    red = segment.frames[0, :, :, 0].astype(np.float32)  # the stored top half is red
    left, right = red[:, : SIZE // 2].mean(), red[:, SIZE // 2 :].mean()
    # A display matrix of +90° turns the picture counter-clockwise (the stored top goes left), -90° clockwise.
    assert (left > 200 and right < 50) if name == "rot90" else (right > 200 and left < 50)


# ---------------------------------------------------------------------------------------------------------
# Generated clips: timestamps match the pictures, decoders agree, fallbacks and errors


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_timestamps_match_the_decoded_pictures(clips: dict[str, Path], decoder: str) -> None:
    info, segments = decode_all(clips["h264"], decoder=decoder, segment_seconds=1.0, frames_per_segment=5)
    assert (info.num_frames, info.fps, info.codec, info.decoder) == (45, 15.0, "h264", decoder)
    assert info.duration_s == pytest.approx(3.0)
    assert [(s.start_s, s.end_s) for s in segments] == [(0, 1), (1, 2), (2, pytest.approx(3.0))]
    for segment in segments:
        expected = [round(t * 15) for t in segment.timestamps_s]
        assert frame_numbers(segment) == expected
        assert expected == [segment.index * 15 + i for i in (1, 4, 7, 10, 13)]


def test_decord_failure_on_the_first_frame_falls_back_to_pyav(clips: dict[str, Path]) -> None:
    info, (segment,) = decode_all(clips["rot90_small"], frames_per_segment=2)
    assert (info.decoder, info.width, info.height, info.rotation) == ("pyav", 48, 96, 270)
    red = segment.frames[0, :, :, 0].astype(np.float32)
    assert red[:, : SIZE // 2].mean() > 200 and red[:, SIZE // 2 :].mean() < 50
    with pytest.raises(UnsupportedMedia, match="decord cannot open"):
        decode_segments(clips["rot90_small"], decoder="decord")


def test_av1_goes_through_the_pyav_fallback(clips: dict[str, Path]) -> None:
    info, segments = decode_all(clips["av1"], segment_seconds=None, frames_per_segment=6)
    assert (info.decoder, info.codec, info.num_frames) == ("pyav", "av1", 45)
    (segment,) = segments
    assert frame_numbers(segment) == [round(t * 15) for t in segment.timestamps_s] == [3, 11, 18, 26, 33, 41]
    with pytest.raises(UnsupportedMedia, match="decord cannot open"):
        decode_segments(clips["av1"], decoder="decord")


def test_segments_are_produced_lazily(clips: dict[str, Path]) -> None:
    _, segments = decode_segments(clips["h264"], size=SIZE, segment_seconds=1.0)
    assert inspect.isgenerator(segments)
    assert next(segments).index == 0


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("empty", CorruptMedia, "empty file"),
        ("text", UnsupportedMedia, "not a recognised video container"),
        ("cut_moov", CorruptMedia, "damaged or truncated"),
        ("cut_faststart", CorruptMedia, "PyAV decoding failed"),
        ("audio", NoVideoStream, "no video stream"),
        ("missing", MissingMedia, "no such file"),
    ],
)
def test_bad_files_raise_the_right_decode_error(
    clips: dict[str, Path], tmp_path: Path, name: str, error: type[DecodeError], message: str
) -> None:
    path = clips.get(name, tmp_path / "missing.mp4")
    with pytest.raises(error, match=message) as caught:
        decode_all(path)  # file-level errors raise at open, damage further in while iterating
    assert isinstance(caught.value, DecodeError) and str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"max_bytes": 1000}, "max_bytes=1000"),
        ({"max_duration_s": 2.0}, "max_duration_s=2.0"),
        ({"max_pixels": 100}, "max_pixels=100"),
    ],
)
def test_guards_raise_too_large(clips: dict[str, Path], limit: dict[str, float], message: str) -> None:
    with pytest.raises(TooLarge, match=message):
        decode_segments(clips["h264"], **limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"frames_per_segment": 0}, {"segment_seconds": 0.0}, {"size": 0}, {"decoder": "ffmpeg"}]
)
def test_bad_arguments_raise_value_error(clips: dict[str, Path], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decode_segments(clips["h264"], **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Segmenting by shots

SHOTS = ShotSegmenting()
TICK = 1 / SHOTS.sample_fps  # a detected cut lies within one sample interval after the true one


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s at 15 fps with hard cuts at frames 50 and 107 (3.33 s and 7.13 s, between sampling ticks)."""
    return encode(tmp_path_factory.mktemp("shots") / "cuts.mp4", shot_frames([50, 107], 150))


def shot_of(frame: np.ndarray) -> int:
    """The index in SHOT_COLOURS of a decoded frame's colour (the moving bar covers a sliver of it)."""
    colour = np.median(frame.reshape(-1, 3), axis=0)
    return int(np.argmin([np.abs(colour - c).sum() for c in SHOT_COLOURS]))


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_shots_cut_a_video_at_its_known_cuts(cut_clip: Path, decoder: str) -> None:
    info, segments = decode_all(cut_clip, decoder=decoder, shots=SHOTS, frames_per_segment=4)
    assert info.segments == len(segments) == 3
    assert segments[0].start_s == 0 and segments[-1].end_s == pytest.approx(info.duration_s)
    for true_cut, (before, after) in zip([50 / 15, 107 / 15], itertools.pairwise(segments), strict=False):
        assert before.end_s == after.start_s and true_cut <= after.start_s <= true_cut + TICK
    for k, segment in enumerate(segments):  # every sampled frame is of its own shot
        assert [shot_of(frame) for frame in segment.frames] == [k] * 4
        assert all(segment.start_s <= t < segment.end_s for t in segment.timestamps_s)


def test_shots_merge_a_short_shot_and_split_a_long_one(tmp_path: Path) -> None:
    # Shots of 0.67 s (0-10), 1 s (10-25) and 9.3 s (25-165) at 15 fps: the two short ones become one clip.
    path = encode(tmp_path / "short_long.mp4", shot_frames([10, 25], 165))
    _, segments = decode_all(path, shots=ShotSegmenting(min_segment_seconds=1.5, max_segment_seconds=4.0))
    bounds = [(s.start_s, s.end_s) for s in segments]
    assert len(bounds) == 4 and 25 / 15 <= bounds[1][0] <= 25 / 15 + TICK  # 0-1.75, then three equal parts
    assert [round(end - start, 6) for start, end in bounds[1:]] == [round((11.0 - bounds[1][0]) / 3, 6)] * 3


@pytest.mark.parametrize("parts", [1, 3])
def test_decode_rows_carry_the_shot_boundaries(cut_clip: Path, tmp_path: Path, parts: int) -> None:
    config = PipelineConfig(
        str(cut_clip.parent), str(tmp_path / "out"), "bundled:tiny-synthetic", shots=SHOTS, frames_per_segment=2
    ).resolved()
    (source,) = list_sources(config.input_uri)
    item = source_row(source, config.config_key(), config.questions)
    tasks = split_items([item], None if parts == 1 else -(-item["source_size"] // parts))
    assert len(tasks) == parts  # each part detects the shots of the whole video, and decodes its share
    rows = [row for task in tasks for row in decode_rows(task, config.decoding, frame_size=SIZE)]
    _, segments = decode_all(cut_clip, shots=SHOTS, frames_per_segment=2)
    assert [(r["segment_index"], r["segment_start_s"], r["segment_end_s"]) for r in rows] == [
        (s.index, s.start_s, s.end_s) for s in segments
    ]
    assert [r[LAST_SEGMENT] for r in rows] == [False, False, True] and all(r["error_class"] is None for r in rows)


def test_shot_detection_is_skipped_for_the_first_frame_check(cut_clip: Path) -> None:
    info, (segment,) = decode_all(cut_clip, shots=SHOTS, first_frame_only=True)
    assert info.segments == 1 and segment.frames.shape == (1, SIZE, SIZE, 3)


def test_real_clips_without_cuts_are_one_shot(assets: Path) -> None:
    # A pancake tossed in one take, eye make-up in close-up, the Earth turning: no cuts, each shorter than 30 s.
    for name in ("decord_flipping_a_pancake.mkv", "mmaction2_test.avi", "gradio_video_sample.webm"):
        info, segments = decode_all(assets / name, shots=SHOTS, frames_per_segment=2)
        assert [(s.start_s, s.end_s) for s in segments] == [(0.0, info.duration_s)], name


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_the_nasa_clip_is_cut_where_its_camera_cuts(assets: Path, decoder: str) -> None:
    # The picture changes at once between frames 240 and 241 (8.01 s: the frame-to-frame score jumps from 2 to
    # 69), from the close-up of the lift to a wide shot; a dissolve from the wide cleanroom ends near 5.1 s.
    _, segments = decode_all(assets / "torchcodec_nasa_13013.mp4", decoder=decoder, shots=SHOTS)
    starts = [s.start_s for s in segments]
    assert any(8.0 <= t <= 8.01 + TICK for t in starts), starts
    assert any(5.0 <= t <= 5.3 for t in starts), starts
    assert all(SHOTS.min_segment_seconds <= s.end_s - s.start_s <= SHOTS.max_segment_seconds for s in segments)


def test_a_long_take_is_split_within_the_maximum(assets: Path) -> None:
    info, segments = decode_all(assets / "videollava_sample_demo_22.mp4", shots=SHOTS, frames_per_segment=2)
    assert info.duration_s > SHOTS.max_segment_seconds and len(segments) >= 2
    assert all(SHOTS.min_segment_seconds <= s.end_s - s.start_s <= SHOTS.max_segment_seconds for s in segments)


# ---------------------------------------------------------------------------------------------------------
# Local copies of remote objects


def test_local_paths_are_used_in_place(clips: dict[str, Path]) -> None:
    with open_local_copy(str(clips["h264"])) as path:
        assert path == str(clips["h264"])
    with open_local_copy(clips["h264"].as_uri()) as path:
        assert path == str(clips["h264"])
    with pytest.raises(MissingMedia), open_local_copy(str(clips["h264"]) + ".gone"):
        pass


@pytest.fixture
def s3(s3_server: str) -> Callable[[str], s3fs.S3FileSystem]:
    def make(bucket: str) -> s3fs.S3FileSystem:
        fs = s3fs.S3FileSystem(endpoint_url=s3_server, key=S3_KEY, secret=S3_SECRET, skip_instance_cache=True)
        fs.mkdir(bucket)
        return fs

    return make


def test_s3_objects_stream_into_a_temp_file(s3: Callable[[str], s3fs.S3FileSystem], assets: Path) -> None:
    fs = s3("decode-copy")
    source = assets / "videollava_sample_demo_22.mp4"
    fs.put_file(str(source), "decode-copy/in/clip.mp4")
    with open_local_copy("s3://decode-copy/in/clip.mp4", fs, chunk_bytes=256 * 1024) as path:
        assert path.endswith(".mp4") and Path(path).read_bytes() == source.read_bytes()
        info, segments = decode_segments(path, size=SIZE)
        assert info.num_frames == 1090 and next(segments).frames.shape == (8, SIZE, SIZE, 3)
    assert not os.path.exists(path)
    with pytest.raises(MissingMedia), open_local_copy("s3://decode-copy/in/none.mp4", fs):
        pass
    with (
        pytest.raises(TooLarge, match="max_bytes=1000"),
        open_local_copy("s3://decode-copy/in/clip.mp4", fs, max_bytes=1000),
    ):
        pass
