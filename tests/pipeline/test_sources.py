"""Listing videos from local folders, S3 prefixes (moto server) and manifests."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.stages.sources import (
    SourceError,
    VideoSource,
    check_scheme,
    list_sources,
    list_videos,
    make_video_id,
    read_manifest,
)

S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials


def sha1_id(uri: str, size: int | None, version: str) -> str:
    """The documented id, computed independently: sha1 of "uri\\nsize\\netag-or-mtime"."""
    return hashlib.sha1(f"{uri}\n{'' if size is None else size}\n{version}".encode()).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    files = {
        "a.mp4": b"a" * 10,
        "sub/b.MKV": b"b" * 20,
        "sub/deeper/c.webm": b"c" * 30,
        "notes.txt": b"not a video",
        ".hidden.mp4": b"x",
        ".cache/d.mp4": b"x",
        "e.mov": b"e" * 5,
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_local_folder_is_listed_recursively_filtered_and_sorted(folder: Path) -> None:
    sources = list_sources(str(folder))
    names = [os.path.relpath(s.uri, folder) for s in sources]
    assert names == ["a.mp4", "e.mov", "sub/b.MKV", "sub/deeper/c.webm"]  # sorted, case-insensitive ext
    a = sources[0]
    stat = (folder / "a.mp4").stat()
    assert (a.uri, a.size, a.etag, a.mtime) == (str(folder / "a.mp4"), 10, None, stat.st_mtime)
    assert a.video_id == sha1_id(str(folder / "a.mp4"), 10, f"{stat.st_mtime:.6f}")
    assert a.questions == [] and a.extra == {}
    assert [os.path.relpath(s.uri, folder) for s in list_videos(folder.as_uri(), extensions=["webm"])] == [
        "sub/deeper/c.webm"
    ]


def test_video_id_is_stable_and_changes_with_the_file(folder: Path) -> None:
    first = {s.uri: s.video_id for s in list_sources(str(folder))}
    assert first == {s.uri: s.video_id for s in list_sources(str(folder) + "/")}
    assert len(set(first.values())) == len(first)
    (folder / "a.mp4").write_bytes(b"a" * 11)
    changed = {s.uri: s.video_id for s in list_sources(str(folder))}
    assert changed[str(folder / "a.mp4")] != first[str(folder / "a.mp4")]
    assert {k: v for k, v in changed.items() if not k.endswith("a.mp4")} == {
        k: v for k, v in first.items() if not k.endswith("a.mp4")
    }


def test_a_single_file_and_an_empty_result(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (source,) = list_videos(str(folder / "a.mp4"))
    assert source.size == 10
    with caplog.at_level(logging.WARNING):
        assert list_videos(str(folder), extensions=["avi"]) == []
    assert "no videos" in caplog.text
    with pytest.raises(SourceError, match="no such file or folder"):
        list_videos(str(folder / "missing"))


@pytest.mark.parametrize("uri", ["http://example.com/a.mp4", "gs://bucket/prefix", "ftp://host/x.mkv"])
def test_other_schemes_are_rejected_with_the_fix(uri: str) -> None:
    with pytest.raises(SourceError, match=r"is not supported; use a local path, file://.*s3://"):
        list_sources(uri)
    assert check_scheme("/abs/path.mp4") == "" and check_scheme("s3://b/k") == "s3"


# ---------------------------------------------------------------------------------------------------------
# S3 (moto server on 127.0.0.1)


@pytest.fixture
def s3(s3_server: str) -> tuple[s3fs.S3FileSystem, str]:
    """A filesystem on the moto server and a fresh bucket with a few objects."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key=S3_KEY, secret=S3_SECRET, skip_instance_cache=True)
    bucket = f"videos-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    for key, data in {
        "in/x.mp4": b"1234",
        "in/deep/y.MKV": b"12345",
        "in/z.txt": b"1",
        "in/.tmp/w.mp4": b"1",
        "other/v.mp4": b"123",
    }.items():
        fs.pipe(f"{bucket}/{key}", data)
    return fs, bucket


def test_s3_prefix_is_listed_with_etags(s3: tuple[s3fs.S3FileSystem, str]) -> None:
    fs, bucket = s3
    sources = list_sources(f"s3://{bucket}/in/", fs)
    assert [s.uri for s in sources] == [f"s3://{bucket}/in/deep/y.MKV", f"s3://{bucket}/in/x.mp4"]
    x = sources[1]
    etag = fs.info(f"{bucket}/in/x.mp4")["ETag"].strip('"')
    assert (x.size, x.etag) == (4, etag) and etag == hashlib.md5(b"1234").hexdigest()
    assert x.mtime is not None and x.video_id == sha1_id(f"s3://{bucket}/in/x.mp4", 4, etag)
    assert [s.video_id for s in list_sources(f"s3://{bucket}/in", fs)] == [s.video_id for s in sources]
    fs.pipe(f"{bucket}/in/x.mp4", b"4321")  # same size, new content: new etag, new id
    assert list_sources(f"s3://{bucket}/in", fs)[1].video_id != x.video_id


def test_s3_parquet_manifest_with_relative_keys(s3: tuple[s3fs.S3FileSystem, str]) -> None:
    fs, bucket = s3
    table = pa.table({"uri": ["x.mp4", "../other/v.mp4"], "questions": [["Why?"], None]})
    with fs.open(f"{bucket}/in/manifest.parquet", "wb") as f:
        pq.write_table(table, f)
    sources = read_manifest(f"s3://{bucket}/in/manifest.parquet", fs, allow_prefixes=[f"s3://{bucket}/other"])
    assert [(s.uri, s.size, s.questions) for s in sources] == [
        (f"s3://{bucket}/in/x.mp4", 4, ["Why?"]),
        (f"s3://{bucket}/other/v.mp4", 3, []),
    ]


def test_an_s3_manifest_is_stat_ed_by_listing_its_folders(
    s3: tuple[s3fs.S3FileSystem, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same sources as one HEAD per entry, from LIST requests; an entry not listed is still HEAD-ed."""
    fs, bucket = s3
    fs.pipe({f"{bucket}/many/{i:03d}.mp4": str(i).encode() for i in range(40)})
    fs.pipe_file(f"{bucket}/many/list.txt", "".join(f"{i:03d}.mp4\n" for i in range(41)).encode())
    heads = []
    info = fs.info
    monkeypatch.setattr(fs, "info", lambda path, **kw: heads.append(path) or info(path, **kw))
    listed = read_manifest(f"s3://{bucket}/many/list.txt", fs)
    entries = [h for h in heads if not h.endswith("list.txt")]  # (opening the manifest reads its info)
    assert entries == [f"s3://{bucket}/many/040.mp4"]  # the one entry not listed, which does not exist
    heads.clear()
    monkeypatch.setattr("pipeline.stages.sources._LIST_FOLDERS", 0)
    assert read_manifest(f"s3://{bucket}/many/list.txt", fs) == listed
    assert len([h for h in heads if not h.endswith("list.txt")]) == 41
    assert [s.size for s in listed] == [len(str(i)) for i in range(40)] + [None]


# ---------------------------------------------------------------------------------------------------------
# Manifests


def test_text_manifest(folder: Path) -> None:
    manifest = folder / "list.txt"
    manifest.write_text(f"# the videos\n\na.mp4\n  sub/b.MKV  \n{folder / 'notes.txt'}\na.mp4\n")
    sources = list_sources(str(manifest))
    # relative to the manifest's folder; entries are not filtered by extension; duplicates dropped
    assert [s.uri for s in sources] == [str(folder / n) for n in ("a.mp4", "notes.txt", "sub/b.MKV")]
    assert sources[0] == list_videos(str(folder / "a.mp4"))[0]


def test_csv_manifest_with_questions_and_extra_columns(folder: Path) -> None:
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "uri,questions,license,priority\n"
        'a.mp4,"[""What happens?"", ""Who is there?""]",cc-by,2\n'
        "sub/b.MKV,Is it raining?,cc0,1\n"
        f"{folder / 'e.mov'},,,\n"
    )
    a, e, b = list_sources(str(manifest))
    assert a.questions == ["What happens?", "Who is there?"] and a.extra == {"license": "cc-by", "priority": 2}
    assert b.questions == ["Is it raining?"] and b.extra == {"license": "cc0", "priority": 1}
    assert e.questions == [] and e.extra == {"license": None, "priority": None}
    assert a.video_id == list_videos(str(folder / "a.mp4"))[0].video_id  # same file, same id


def test_parquet_manifest_trusts_given_size_and_etag(folder: Path) -> None:
    manifest = folder / "m.parquet"
    table = pa.table(
        {
            "uri": ["s3://archive/2024/clip.mp4", "a.mp4"],
            "questions": [["Q1", "Q2"], []],
            "size": [123, None],
            "etag": ['"abc"', None],
            "split": ["train", "val"],
        }
    )
    pq.write_table(table, manifest)
    a, clip = read_manifest(str(manifest), allow_prefixes=["s3://archive/"])  # S3 row not stat-ed: no filesystem
    assert (clip.uri, clip.size, clip.etag, clip.questions, clip.extra) == (
        "s3://archive/2024/clip.mp4",
        123,
        "abc",
        ["Q1", "Q2"],
        {"split": "train"},
    )
    assert clip.video_id == make_video_id("s3://archive/2024/clip.mp4", 123, "abc", None)
    assert (a.size, a.extra) == (10, {"split": "val"})


def test_manifest_entries_that_do_not_exist(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = folder / "some.txt"
    manifest.write_text("a.mp4\ngone.mp4\n")
    with caplog.at_level(logging.WARNING):
        a, gone = read_manifest(str(manifest))
    assert gone.size is None and gone.video_id == sha1_id(str(folder / "gone.mp4"), None, "")
    assert a.size == 10 and "do not exist" in caplog.text
    manifest.write_text("gone.mp4\nnone.mp4\n")
    with pytest.raises(SourceError, match="none of its 2 entries exist"):
        read_manifest(str(manifest))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.csv", "path\na.mp4\n", r"no 'uri' column \(columns: \['path'\]\)"),
        ("bad.csv", 'uri,questions\na.mp4,"[1, 2]"\n', "questions must be a list of strings"),
        ("bad.csv", 'uri,questions\na.mp4,"[oops"\n', "not a JSON array"),
        ("bad.csv", "uri,split\na.mp4,train\n,val\n", "row 2: uri must be a non-empty string, got None"),
        ("list.txt", "ftp://host/a.mp4\n", "scheme 'ftp' is not supported"),
    ],
)
def test_bad_manifests_name_the_problem(folder: Path, name: str, content: str, message: str) -> None:
    (folder / name).write_text(content)
    with pytest.raises(SourceError, match=message):
        read_manifest(str(folder / name))
    with pytest.raises(SourceError, match=r"unknown manifest type '\.json'"):
        read_manifest(str(folder / "m.json"))


def test_sources_are_plain_dataclasses() -> None:
    source = VideoSource("/v.mp4", 1, None, 2.0, "id")
    assert source.questions == [] and source.extra == {}
