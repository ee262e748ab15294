"""The bad-input matrix: every kind of broken or unusual input ends as rows with a documented outcome.

Everything goes through the plain-function (no-Ray) path that the Ray stages run: `list_sources` /
`read_manifest` -> `source_row` -> `decode_rows` (one video -> segment rows, or error rows with `error_class`)
-> `Predictor` (segment rows -> result rows). The outcome of each case is one of: decoded rows, decoded rows
followed by one error row for the damage further in, or one error row for the whole video; never an uncaught
exception, a hang (each decode runs under a time limit) or a lost neighbour. All media are generated here.

Covered elsewhere and not repeated: the real rotated phone clip and the real two-stream clip
(`test_decode.py::test_rotated_phone_video_comes_out_upright`, `test_dual_stream_file_uses_the_stream_decord_picks`),
PyAV-versus-decord agreement, and the size and pixel guards (`test_decode.py::test_guards_raise_too_large`).
"""

from __future__ import annotations

import io
import itertools
import tempfile
import threading
import tracemalloc
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import pyarrow as pa
import pytest

import pipeline.stages.decode
import pipeline.stages.readers
import pipeline.stages.video
from pipeline.config import PipelineConfig
from pipeline.stages.decode import DecoderName, decode_rows, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.schema import LAST_SEGMENT
from pipeline.stages.sources import VideoSource, list_sources, make_video_id, read_manifest
from pipeline.stages.storage import open_local_copy
from pipeline.stages.video import Timeout, TooLarge
from sparsevlm.engine import VideoQAEngine
from sparsevlm.engine_types import PromptTooLong
from sparsevlm.tiny.loading import load_tiny
from tests.pipeline.media import encode

SIZE = 32  # model resolution of the decode-only cases (small keeps them fast)
TIME_LIMIT_S = 60.0  # generous: the machine is shared; a healthy case takes well under a second
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------
# Generated media


def noise(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Random frames: every frame compresses to about the same size, so a byte cut is a time cut."""
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def grey_levels(count: int, size: int = 32) -> np.ndarray:
    """Frame i is a flat grey of level 20 + 3 * (i % 70): the level survives lossy coding and names i."""
    levels = 20 + 3 * (np.arange(count) % 70)
    return np.broadcast_to(levels[:, None, None, None], (count, size, size, 3)).astype(np.uint8)


def write_audio(path: Path) -> Path:
    """Ten AAC frames of silence and nothing else."""
    with av.open(str(path), "w") as out:
        audio = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1024, Fraction(1, 16000)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def write_two_video_streams(path: Path) -> Path:
    """Stream 0: 64x48 red (what ffmpeg calls best); stream 1: 96x64 blue (what decord 0.6.0 opens)."""
    with av.open(str(path), "w") as out:
        streams = [out.add_stream("libx264", rate=15) for _ in range(2)]
        colours = [((48, 64), (255, 0, 0)), ((64, 96), (0, 0, 255))]
        for stream, ((h, w), _) in zip(streams, colours, strict=True):
            stream.width, stream.height, stream.pix_fmt, stream.options = w, h, "yuv420p", {"threads": "1"}
        for _ in range(15):
            for stream, ((h, w), rgb) in zip(streams, colours, strict=True):
                image = np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        for stream in streams:
            out.mux(stream.encode(None))
    return path


def flip_bytes_in_mdat(data: bytes) -> bytes:
    """Invert 2,000 bytes in the middle of the media data of a non-faststart MP4 (its index stays intact)."""
    start, end = data.find(b"mdat"), data.find(b"moov")
    assert 0 < start < end, "expected mdat before moov"
    middle = (start + end) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 2000]) + data[middle + 2000 :]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    good = encode(root / "good.mp4", noise(45), options={"preset": "ultrafast"})  # 3 s, moov last
    faststart = encode(root / "faststart.mp4", noise(45), container_options={"movflags": "faststart"})
    assert good.read_bytes().find(b"moov") > good.read_bytes().find(b"mdat")  # the cut below removes moov
    assert faststart.read_bytes().find(b"moov") < faststart.read_bytes().find(b"mdat")
    files = {
        "good": good,
        "zero_bytes": root / "zero.mp4",
        "text_as_mp4": root / "notes.mp4",
        "random_bytes": root / "random.mp4",
        "cut_before_moov": root / "cut_before_moov.mp4",
        "faststart_cut_to_a_third": root / "cut_faststart.mp4",
        "bytes_flipped_in_mdat": root / "flipped.mp4",
        "variable_frame_rate": encode(
            root / "vfr.mp4", noise(8), pts_ms=[0, 100, 150, 1000, 1033, 2000, 2900, 3020], options={"bf": "0"}
        ),
        "two_video_streams": write_two_video_streams(root / "two_streams.mp4"),
        "audio_only_m4a": write_audio(root / "audio.m4a"),
        "audio_only_mp4": write_audio(root / "audio.mp4"),
        "one_frame": encode(root / "one_frame.mp4", noise(1)),
        "rotated_phone": encode(root / "rotated.mp4", noise(10), rotation=90),
        "4k": encode(root / "uhd.mp4", noise(3, 2160, 3840), options={"preset": "ultrafast"}),
        "missing": root / "never_written.mp4",
    }
    files["zero_bytes"].write_bytes(b"")
    files["text_as_mp4"].write_text("not a video\n" * 100)
    files["random_bytes"].write_bytes(np.random.default_rng(1).bytes(50_000))
    files["cut_before_moov"].write_bytes(good.read_bytes()[: good.read_bytes().find(b"moov") - 4])
    files["faststart_cut_to_a_third"].write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 3])
    files["bytes_flipped_in_mdat"].write_bytes(flip_bytes_in_mdat(good.read_bytes()))
    if "libsvtav1" in av.codecs_available:
        files["av1"] = encode(root / "av1.mkv", noise(45, 64, 64), codec="libsvtav1", options={"preset": "12"})
    return files


# ---------------------------------------------------------------------------------------------------------
# Helpers


def finishes_within(seconds: float, work: Callable[[], T]) -> T:
    """Run `work` in a daemon thread; fail the test (instead of hanging the suite) if it takes too long."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # re-raised in the test's thread below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"did not finish within {seconds} s: a hang on bad input")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def make_config(root: Path, **changes: Any) -> PipelineConfig:
    settings: dict[str, Any] = {"segment_seconds": 1.0, "frames_per_segment": 2, "run_id": "bad-input", **changes}
    return PipelineConfig(input_uri=str(root), output_uri=str(root / "out"), model="unused", **settings).resolved()


def s3_input(root: Path, s3_server: str, input_uri: str) -> tuple[PipelineConfig, Any]:
    """A config that reads ``input_uri`` (``s3://bucket/prefix``) from the moto server, and its file system with
    the bucket made."""
    config = make_config(root, s3_endpoint_url=s3_server, s3_options={"key": S3_KEY, "secret": S3_SECRET})
    config = config.replace(input_uri=input_uri)
    fs = config.storage.fsspec(input_uri)
    fs.mkdir(input_uri.removeprefix("s3://").split("/")[0])
    return config, fs


def local_row(path: Path, config: PipelineConfig, questions: list[str] | None = None) -> dict[str, Any]:
    """The decode stage's work item for a local file (which need not exist or look like a video)."""
    stat = path.stat() if path.exists() else None
    size, mtime = (stat.st_size, stat.st_mtime) if stat else (None, None)
    source = VideoSource(str(path), size, None, mtime, make_video_id(str(path), size, None, mtime), questions or [])
    return source_row(source, config.config_key(), config.questions)


def decode(row: dict[str, Any], config: PipelineConfig, size: int = SIZE) -> list[dict[str, Any]]:
    return finishes_within(TIME_LIMIT_S, lambda: list(decode_rows(row, config.decoding, frame_size=size)))


def check_rows(rows: list[dict[str, Any]], frames_per_segment: int = 2, size: int = SIZE) -> list[tuple[Any, Any]]:
    """Check what every decode row must satisfy and return `[(segment_index, error_class)]`."""
    assert rows, "every video yields at least one row"
    assert [r[LAST_SEGMENT] for r in rows] == [False] * (len(rows) - 1) + [True]
    errors = [r for r in rows if r["error_class"] is not None]
    assert errors in ([], [rows[-1]]), "at most one error row, and it ends the video"
    for row in rows:
        if row["error_class"] is None:
            assert row["frames_shape"] == [frames_per_segment, size, size, 3]
            assert len(row["frames"]) == frames_per_segment * size * size * 3 and row["error_message"] is None
            ts = row["frame_timestamps_s"]
            assert ts == sorted(ts) and row["segment_start_s"] <= ts[0] and ts[-1] <= row["segment_end_s"]
        else:
            assert row["frames"] == b"" and row["frames_shape"] == [0] and row["frame_timestamps_s"] == []
            assert row["source_uri"] in row["error_message"]  # the message names the file
    indices = [r["segment_index"] for r in rows]
    if indices != [None]:
        assert indices == list(range(len(rows))), "segments are numbered in order, the error row next"
    return [(r["segment_index"], r["error_class"]) for r in rows]


# ---------------------------------------------------------------------------------------------------------
# The matrix: one file each, decoded with 1 s segments of 2 frames

OK3 = [(0, None), (1, None), (2, None)]
MATRIX = {
    # case: (expected [(segment_index, error_class)], why)
    "zero_bytes": ([(None, "CorruptMedia")], "checked before any decoder sees it"),
    "text_as_mp4": ([(None, "UnsupportedMedia")], "no container signature: not a video at all"),
    "random_bytes": ([(None, "UnsupportedMedia")], "no container signature"),
    "cut_before_moov": ([(None, "CorruptMedia")], "starts like MP4 but has no index: damaged"),
    # moov first, so the index survives and promises 3 s; only ~1 s of packets does. decord refuses the file,
    # PyAV plans and decodes that second, then fails on the partial packet after it.
    "faststart_cut_to_a_third": ([(0, None), (1, "CorruptMedia")], "what survives, then the damage"),
    # The damage sits near 1.5 s: segment 0 decodes, decord fails in segment 1, and decoding stops there.
    "bytes_flipped_in_mdat": ([(0, None), (1, "CorruptMedia")], "good segments, then the damage"),
    "variable_frame_rate": (OK3, "segments follow presentation times, not frame counts"),
    "two_video_streams": ([(0, None)], "decord opens the other stream: PyAV decodes ffmpeg's best one"),
    "audio_only_m4a": ([(None, "NoVideoStream")], "a container without video"),
    "audio_only_mp4": ([(None, "NoVideoStream")], "a container without video"),
    "one_frame": ([(0, None)], "one segment; the frame repeats to fill it"),
    "rotated_phone": ([(0, None)], "decoded upright (pictures checked in test_decode.py)"),
    "4k": ([(0, None)], "resized to model resolution, one segment in memory"),
    "av1": (OK3, "decord cannot decode AV1: PyAV fallback"),
    "missing": ([(None, "MissingMedia")], "a path that does not exist"),
}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_bad_input_matrix(media: dict[str, Path], tmp_path: Path, case: str) -> None:
    if case not in media:
        pytest.skip(f"this PyAV build cannot encode {case}")
    expected, why = MATRIX[case]
    config = make_config(tmp_path)
    rows = decode(local_row(media[case], config), config)
    assert check_rows(rows) == expected, why
    if expected[0][1] is None:
        assert rows[0]["codec"] and rows[0]["duration_s"] > 0


def test_matrix_details(media: dict[str, Path], tmp_path: Path) -> None:
    """What the ok cases of the matrix must also get right beyond their row pattern."""
    config = make_config(tmp_path)
    rows = {case: decode(local_row(media[case], config), config) for case in media if case in MATRIX and case != "4k"}
    vfr = rows["variable_frame_rate"]  # frames at 0, .1, .15 | 1.0, 1.033 | 2.0, 2.9, 3.02 s
    expected = [[0.0, 0.15], [1.0, 1.033], [2.0, 3.02]]  # centres of each segment's frames, by time
    assert [r["frame_timestamps_s"] for r in vfr] == [pytest.approx(ts, abs=1e-4) for ts in expected]
    assert vfr[-1]["segment_end_s"] == pytest.approx(3.02 + 0.12)  # last frame lasts a median interval
    (two,) = rows["two_video_streams"]
    frames = np.frombuffer(two["frames"], np.uint8).reshape(two["frames_shape"])
    assert (two["width"], two["height"]) == (64, 48) and frames[..., 0].mean() > 200 > frames[..., 2].mean()
    (one,) = rows["one_frame"]
    assert one["frame_timestamps_s"] == [0.0, 0.0] and one["duration_s"] == pytest.approx(1 / 15)
    (rotated,) = rows["rotated_phone"]
    assert (rotated["width"], rotated["height"]) == (48, 64)  # stored 64x48, shown as portrait
    kept, damage = rows["faststart_cut_to_a_third"]
    assert kept["duration_s"] == pytest.approx(1.0) and "PyAV decoding failed" in damage["error_message"]
    if "av1" in rows:
        assert rows["av1"][0]["codec"] == "av1"


def test_4k_frames_leave_at_model_resolution_with_bounded_memory(media: dict[str, Path], tmp_path: Path) -> None:
    config = make_config(tmp_path, frames_per_segment=8, segment_seconds=None)
    tracemalloc.start()
    try:
        (row,) = decode(local_row(media["4k"], config), config, size=224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (row["width"], row["height"], row["codec"]) == (3840, 2160, "h264")
    assert row["frames_shape"] == [8, 224, 224, 3] and len(row["frames"]) == 8 * 224 * 224 * 3
    # 3 distinct 3840x2160 RGB frames are 75 MB; the 8 planned frames repeat them and are resized one by one.
    assert peak < 200 * 2**20, f"numpy peak {peak / 2**20:.0f} MB while decoding three 4K frames"


def test_a_bad_file_between_two_good_ones_loses_no_neighbour(
    media: dict[str, Path], tmp_path: Path, engine: VideoQAEngine
) -> None:
    """One decode task runs its rows one after another (Ray's flat_map); the model stage gets them batched."""
    config = make_config(tmp_path, questions=("What is shown?",), max_new_tokens=2)
    block = [local_row(media[case], config) for case in ("good", "cut_before_moov", "one_frame")]
    rows = [r for row in block for r in decode(row, config, size=64)]
    assert [(r["source_uri"], r["segment_index"], r["error_class"]) for r in rows] == [
        (str(media["good"]), 0, None),
        (str(media["good"]), 1, None),
        (str(media["good"]), 2, None),
        (str(media["cut_before_moov"]), None, "CorruptMedia"),
        (str(media["one_frame"]), 0, None),
    ]
    results = Predictor(config.model_settings, config.answering, engine=engine)(pa.Table.from_pylist(rows)).to_pylist()
    summary = [(Path(r["source_uri"]).name, r["segment_index"], r["task"], r["status"]) for r in results]
    assert summary == [
        *[("good.mp4", k, task, "ok") for k in range(3) for task in ("caption", "qa")],
        ("cut_before_moov.mp4", None, "caption", "error"),
        ("one_frame.mp4", 0, "caption", "ok"),
        ("one_frame.mp4", 0, "qa", "ok"),
    ]


# ---------------------------------------------------------------------------------------------------------
# An hour of 32x32 video at 1 fps: 360 planned segments, decoded one at a time


@pytest.fixture(scope="module")
def hour_long(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hour")
    frames = grey_levels(3600)
    options = {"preset": "ultrafast", "g": "10"}  # short GOPs: each segment's seek decodes at most 10 frames
    return {ext: encode(root / f"hour.{ext}", frames, fps=1, options=options) for ext in ("mp4", "mkv")}


@pytest.mark.parametrize("ext", ["mp4", "mkv"])  # decord 0.6.0 reports no frame times for this Matroska file
def test_hour_long_video_is_segmented_and_decoded_lazily(
    hour_long: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    config = make_config(tmp_path, segment_seconds=10.0, frames_per_segment=8)
    resized = []
    original = pipeline.stages.readers.resize_and_crop_uint8

    def counting(frame: np.ndarray, size: int) -> np.ndarray:
        resized.append(1)
        return original(frame, size)

    monkeypatch.setattr(pipeline.stages.readers, "resize_and_crop_uint8", counting)
    rows = decode_rows(local_row(hour_long[ext], config), config.decoding, frame_size=SIZE)
    first = finishes_within(TIME_LIMIT_S, lambda: list(itertools.islice(rows, 3)))
    assert [(r["segment_index"], r["segment_start_s"], r["segment_end_s"]) for r in first] == [
        (0, 0.0, 10.0),
        (1, 10.0, 20.0),
        (2, 20.0, 30.0),
    ]
    assert first[0]["duration_s"] == 3600.0 and first[0]["fps"] == 1.0
    assert len(resized) <= 4 * 8  # three rows plus one segment of look-ahead, not 360 segments
    rest = finishes_within(TIME_LIMIT_S, lambda: list(rows))
    assert check_rows(first + rest, frames_per_segment=8) == [(k, None) for k in range(360)]
    last = rest[-1]
    assert (last["segment_start_s"], last["segment_end_s"]) == (3590.0, 3600.0)
    frames = np.frombuffer(last["frames"], np.uint8).reshape(last["frames_shape"]).astype(np.float32)
    decoded = [round((float(f.mean()) - 20) / 3) % 70 for f in frames]
    assert decoded == [int(t) % 70 for t in last["frame_timestamps_s"]]  # the pictures match their times


def test_hour_long_video_over_the_duration_guard_is_one_error_row(hour_long: dict[str, Path], tmp_path: Path) -> None:
    config = make_config(tmp_path, max_duration_s=1800.0)
    rows = decode(local_row(hour_long["mkv"], config), config)
    assert check_rows(rows) == [(None, "TooLarge")]
    assert "3600.0 s exceeds max_duration_s=1800.0" in rows[0]["error_message"]


# ---------------------------------------------------------------------------------------------------------
# Bounded decoding: a frame cap, a wall-clock limit, and a preflight that stops at the first frame


@pytest.mark.parametrize(("decoder", "counted"), [("decord", 3600), ("pyav", 101)])
def test_a_frame_cap_makes_one_too_large_row(
    hour_long: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str, counted: int
) -> None:
    config = make_config(tmp_path, max_frames=100)
    if decoder == "pyav":  # as for a file decord cannot open
        monkeypatch.setattr(pipeline.stages.readers, "DecordReader", _refusing_decord)
    rows = decode(local_row(hour_long["mp4"], config), config)
    assert check_rows(rows) == [(None, "TooLarge")]
    # PyAV counts packets as it demuxes and stops at the first one over the cap, holding no list of them.
    assert f"more than max_frames=100 frames ({counted})" in rows[0]["error_message"]


def _refusing_decord(*args: Any) -> None:
    raise RuntimeError("decord refuses (test)")


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_a_video_past_its_wall_clock_limit_ends_with_a_timeout_row(
    hour_long: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str
) -> None:
    """A clock that advances one second per reading: the limit falls inside the video, after good segments."""
    ticks = itertools.count()
    monkeypatch.setattr(pipeline.stages.video, "_clock", lambda: float(next(ticks)))
    if decoder == "pyav":
        monkeypatch.setattr(pipeline.stages.readers, "DecordReader", _refusing_decord)
    config = make_config(tmp_path, segment_seconds=10.0, max_decode_seconds=60.0)
    rows = decode(local_row(hour_long["mp4"], config), config)
    found = check_rows(rows)
    assert found[-1][1] == "Timeout" and 1 <= len(found) - 1 <= 60, found  # some segments, then the limit
    assert "wall-clock limit" in rows[-1]["error_message"] and "--max-decode-seconds" in rows[-1]["error_message"]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_the_first_frame_only_stops_at_the_first_decodable_frame(
    hour_long: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: DecoderName
) -> None:
    decoded = []
    original = pipeline.stages.readers.PyAVReader._small

    def counting(self: Any, frame: Any, size: int) -> np.ndarray:
        decoded.append(frame.pts)
        return original(self, frame, size)

    monkeypatch.setattr(pipeline.stages.readers.PyAVReader, "_small", counting)
    _, segments = pipeline.stages.decode.decode_segments(
        hour_long["mp4"], size=SIZE, first_frame_only=True, decoder=decoder
    )
    (segment,) = list(segments)
    assert segment.timestamps_s == [0.0] and segment.frames.shape == (1, SIZE, SIZE, 3)
    frame = segment.frames[0].astype(np.float32)
    assert round((float(frame.mean()) - 20) / 3) == 0  # the picture of frame 0 (grey level 20)
    assert len(decoded) <= (1 if decoder == "pyav" else 0)


def test_the_preflight_decodes_one_frame_not_half_the_video(
    hour_long: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the PyAV path (decoding forward only) the old choice, the middle frame, decoded 1,800 frames here."""
    from pipeline.run import _preflight

    positions = []
    original = pipeline.stages.readers.PyAVReader._position

    def counting(self: Any, frame: Any, count: int) -> int:
        positions.append(count)
        return original(self, frame, count)

    monkeypatch.setattr(pipeline.stages.readers, "DecordReader", _refusing_decord)
    monkeypatch.setattr(pipeline.stages.readers.PyAVReader, "_position", counting)
    config = make_config(tmp_path, preflight_videos=1)
    _preflight(config, [local_row(hour_long["mp4"], config)], SIZE)  # raises if nothing decodes
    assert len(positions) == 1


class GrownObject:
    """A filesystem whose object grew after its size was read: 100 bytes announced, 5,000 served."""

    def size(self, uri: str) -> int:
        return 100

    def open(self, uri: str, mode: str, block_size: int) -> io.BytesIO:
        return io.BytesIO(b"x" * 5000)


def test_a_local_copy_is_bounded_in_bytes_and_time(tmp_path: Path) -> None:
    too_big = open_local_copy("s3://b/a.mp4", GrownObject(), max_bytes=1000, chunk_bytes=256, tmp_dir=str(tmp_path))
    with pytest.raises(TooLarge, match=r"s3://b/a\.mp4: more than max_bytes=1000 bytes"), too_big:
        pass
    too_late = open_local_copy("s3://b/a.mp4", GrownObject(), deadline=-1.0, tmp_dir=str(tmp_path))
    with pytest.raises(Timeout, match="wall-clock limit"), too_late:
        pass
    assert list(tmp_path.iterdir()) == []  # no partial copy left behind


# ---------------------------------------------------------------------------------------------------------
# Sources: objects that vanish after listing, manifests naming odd things


def test_local_file_deleted_after_listing(media: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes(media["good"].read_bytes())
    config = make_config(folder)
    sources = list_sources(str(folder))
    (folder / "a.mp4").unlink()
    gone, kept = (decode(source_row(s, config.config_key(), config.questions), config) for s in sources)
    assert check_rows(gone) == [(None, "MissingMedia")] and "no such file" in gone[0]["error_message"]
    assert check_rows(kept) == OK3


def test_s3_object_deleted_after_listing(s3_server: str, media: dict[str, Path], tmp_path: Path) -> None:
    config, fs = s3_input(tmp_path, s3_server, "s3://bad-input-vanish/in")
    for name in ("a.mp4", "b.mp4"):
        fs.put_file(str(media["good"]), f"bad-input-vanish/in/{name}")
    sources = list_sources(config.input_uri, fs)
    fs.rm("bad-input-vanish/in/a.mp4")
    gone, kept = (decode(source_row(s, config.config_key(), config.questions), config) for s in sources)
    assert check_rows(gone) == [(None, "MissingMedia")] and "no such object" in gone[0]["error_message"]
    assert check_rows(kept) == OK3


def test_a_local_file_changed_after_listing_is_a_source_changed_row(media: dict[str, Path], tmp_path: Path) -> None:
    """Replaced, or written in place: the listed version's id never carries the new content."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("replaced.mp4", "grown.mp4", "kept.mp4"):
        (folder / name).write_bytes(media["good"].read_bytes())
    config = make_config(folder)
    sources = list_sources(str(folder))
    (folder / "new.mp4").write_bytes(media["good"].read_bytes() + b"\0")
    (folder / "new.mp4").replace(folder / "replaced.mp4")
    with (folder / "grown.mp4").open("ab") as f:
        f.write(b"\0" * 10)
    grown, kept, replaced = (decode(source_row(s, config.config_key(), config.questions), config) for s in sources)
    for rows in (grown, replaced):
        assert (
            check_rows(rows) == [(None, "SourceChanged")] and "changed after it was listed" in rows[0]["error_message"]
        )
        assert rows[0]["width"] is None  # nothing of the new version is recorded under the old id
    assert check_rows(kept) == OK3


def test_an_s3_object_overwritten_after_listing_is_a_source_changed_row(
    s3_server: str, media: dict[str, Path], tmp_path: Path
) -> None:
    config, fs = s3_input(tmp_path, s3_server, "s3://bad-input-changed/in")
    for name in ("a.mp4", "b.mp4"):
        fs.put_file(str(media["good"]), f"bad-input-changed/in/{name}")
    sources = list_sources(config.input_uri, fs)
    fs.pipe_file("bad-input-changed/in/a.mp4", media["good"].read_bytes() + b"\0")
    changed, kept = (decode(source_row(s, config.config_key(), config.questions), config) for s in sources)
    assert check_rows(changed) == [(None, "SourceChanged")] and "ETag" in changed[0]["error_message"]
    assert check_rows(kept) == OK3


def test_s3_keys_with_query_and_fragment_characters_are_read_literally(
    s3_server: str, media: dict[str, Path], tmp_path: Path
) -> None:
    """``?versionId=`` in a key is key text: s3fs alone would read the object ``names/x`` instead."""
    config, fs = s3_input(tmp_path, s3_server, "s3://bad-input-literal/names")
    fs.pipe_file("bad-input-literal/names/x", b"not the listed video")  # what a cut key would read
    for name in ("x?versionId=1.mp4", "a#b?c.mp4"):
        fs.put_file(str(media["good"]), f"bad-input-literal/names/{name}")
    sources = list_sources(config.input_uri, fs)
    assert [s.uri.rsplit("/", 1)[1] for s in sources] == ["a#b?c.mp4", "x?versionId=1.mp4"]
    for source in sources:
        assert check_rows(decode(source_row(source, config.config_key(), config.questions), config)) == OK3, source.uri


def test_an_undecodable_s3_object_is_named_by_its_uri(s3_server: str, tmp_path: Path) -> None:
    """Objects are decoded from a temporary local copy; the error row names the object, not the copy."""
    config, fs = s3_input(tmp_path, s3_server, "s3://bad-input-named/in")
    fs.pipe_file("bad-input-named/in/noise.mp4", np.random.default_rng(1).bytes(5000))
    (source,) = list_sources(config.input_uri, fs)
    (row,) = decode(source_row(source, config.config_key(), config.questions), config)
    assert row["error_class"] in ("CorruptMedia", "UnsupportedMedia")
    assert "s3://bad-input-named/in/noise.mp4" in row["error_message"], row["error_message"]
    assert tempfile.gettempdir() not in row["error_message"] and "decode-" not in row["error_message"]


def test_manifest_entries_are_not_filtered_by_extension(media: dict[str, Path], tmp_path: Path) -> None:
    """Manifest entries were chosen explicitly: whatever they name is opened and gets rows."""
    (tmp_path / "clip.dat").write_bytes(media["good"].read_bytes())  # a video under an odd extension
    (tmp_path / "notes.txt").write_text("a text file\n")
    with av.open(str(tmp_path / "photo.jpg"), "w", format="image2") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(noise(1)[0], format="rgb24")))
        out.mux(stream.encode(None))
    (tmp_path / "list.txt").write_text("clip.dat\nnotes.txt\nphoto.jpg\nmissing.mp4\n")
    config = make_config(tmp_path)
    sources = read_manifest(str(tmp_path / "list.txt"))
    found = {
        Path(s.uri).name: check_rows(decode(source_row(s, config.config_key(), config.questions), config))
        for s in sources
    }
    assert found == {
        "clip.dat": OK3,
        "notes.txt": [(None, "UnsupportedMedia")],
        "photo.jpg": [(0, None)],  # to ffmpeg an image is a one-frame video: captioned like one
        "missing.mp4": [(None, "MissingMedia")],  # kept by the manifest with size=None
    }


# ---------------------------------------------------------------------------------------------------------
# Questions: empty ones are refused or dropped where they enter; overlong ones are refused, never truncated


@pytest.fixture(scope="module")
def engine() -> VideoQAEngine:
    model, tokenizer, _ = load_tiny()  # context: 4096 positions (max_position_embeddings)
    return VideoQAEngine.from_model(model, tokenizer, "video-25")


LONG_QUESTION = "Is the square on the left? " * 800  # 8,000 tokens of the tiny tokenizer: over 4096


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_run_question_is_a_config_error(tmp_path: Path, question: str) -> None:
    with pytest.raises(ValueError, match="questions must be non-empty strings"):
        make_config(tmp_path, questions=("What is shown?", question))


def test_empty_manifest_questions_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "list.csv").write_text('uri,questions\na.mp4,"[""Why?"", """", ""  ""]"\n')
    (source,) = read_manifest(str(tmp_path / "list.csv"))
    assert source.questions == ["Why?"]


def test_overlong_run_question_stops_the_model_stage_at_start(tmp_path: Path, engine: VideoQAEngine) -> None:
    config = make_config(tmp_path, questions=(LONG_QUESTION,))
    with pytest.raises(PromptTooLong, match=r"context of 4096 tokens .*max_new_tokens=64; shorten it by at least"):
        Predictor(config.model_settings, config.answering, engine=engine)


def test_bad_manifest_questions_become_error_rows_and_spare_the_rest(
    media: dict[str, Path], tmp_path: Path, engine: VideoQAEngine
) -> None:
    config = make_config(tmp_path, questions=("What is shown?",), max_new_tokens=2)
    questions = [LONG_QUESTION, "Where is the <video> placeholder?", "What colour is it?"]
    rows = decode(local_row(media["one_frame"], config, questions), config, size=64)
    results = finishes_within(
        TIME_LIMIT_S,
        lambda: Predictor(config.model_settings, config.answering, engine=engine)(pa.Table.from_pylist(rows)),
    )
    found = [(r["question"], r["status"], r["error_class"]) for r in results.to_pylist()]
    assert [(q if len(q) < 100 else "long", s, e) for q, s, e in found] == [
        ("Describe the video.", "ok", None),
        ("What is shown?", "ok", None),
        ("long", "error", "PromptTooLong"),
        ("Where is the <video> placeholder?", "error", "PromptError"),
        ("What colour is it?", "ok", None),
    ]
    messages = results.column("error_message").to_pylist()
    assert "context of 4096 tokens" in messages[2] and "'<video>'" in messages[3]
