"""List the videos a run should process: a local folder, an s3:// prefix, or a manifest file. No Ray here.

Every video gets a stable `video_id`: the hex SHA-1 of its URI, size and ETag (object storage) or
modification time (local files), so a changed file gets a new id and is processed again, while an unchanged
one keeps its id across runs and machines that see the same URI.

Manifests (chosen by extension):
- `.txt` / `.lst`: one URI per line; blank lines and lines starting with `#` are skipped.
- `.csv` / `.parquet`: a `uri` column; an optional `questions` column (Parquet: list<string>; CSV: a JSON
  array such as `["Who?", "Why?"]` or one plain question); optional `size`, `etag`, `mtime` columns, which,
  when present for a row, are trusted instead of stat-ing the object (one HEAD request per object on S3);
  every other column is carried along in `extra`.
Relative URIs in a manifest are resolved against the manifest's own folder. Folder listings are filtered by
extension; manifest entries are not (they were chosen explicitly, and object keys need not have one).

A manifest is confined to its own place: every entry must resolve inside the manifest's scheme, bucket and
folder (an S3 manifest cannot name a local file of the workers, and ``..`` cannot climb into another prefix or
bucket), unless an allowed prefix (``--allow-prefix``, ``PipelineConfig.allow_prefixes``) names more. An entry
outside is refused with a `SourceError` that names it and the flag, like an entry with a bad scheme.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.stages.storage import local_path

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS: tuple[str, ...] = ("mp4", "mkv", "webm", "avi", "mov", "m4v")
ALLOWED_SCHEMES: tuple[str, ...] = ("file", "s3")  # plus plain local paths
MANIFEST_FORMATS = {".txt": "lines", ".lst": "lines", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_STAT_COLUMNS = ("size", "etag", "mtime")
_STAT_THREADS = 32  # concurrent stat calls (S3 HEAD requests) while reading a manifest
_LIST_FOLDERS = 64  # an S3 manifest's entries in at most this many folders are stat-ed by listing them


class SourceError(ValueError):
    """The input location or manifest is unusable as given (bad scheme, missing column, nothing found)."""


@dataclass(frozen=True)
class VideoSource:
    """One video to process, with what is needed to identify it and to ask about it."""

    uri: str  # absolute local path or s3://bucket/key
    size: int | None  # bytes; None if the manifest names an object that does not exist
    etag: str | None  # object-storage ETag without quotes; None for local files
    mtime: float | None  # modification time, seconds since the epoch
    video_id: str
    questions: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def make_video_id(uri: str, size: int | None, etag: str | None, mtime: float | None) -> str:
    """Stable id of one version of one video: hex SHA-1 of (uri, size, etag or mtime)."""
    version = etag if etag else ("" if mtime is None else f"{mtime:.6f}")
    material = f"{uri}\n{'' if size is None else size}\n{version}"
    return hashlib.sha1(material.encode("utf-8")).hexdigest()


def check_scheme(uri: str) -> str:
    """Return the URI's scheme ("" for a local path) or raise `SourceError` if it is not allowed.

    URIs carrying a user name or password (``s3://KEY:SECRET@bucket/...``) are refused without repeating them:
    they would end up in every row's ``source_uri`` and in the run manifest.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    # user:password@bucket; an AWS secret may contain "/", which ends urlsplit's netloc before the "@"
    if "@" in parts.netloc or (scheme in ALLOWED_SCHEMES and ":" in parts.netloc and "@" in uri):
        raise SourceError(
            f"'{parts.scheme}://***@{uri.rpartition('@')[2]}': credentials in a URI are not accepted (they would be "
            "written into every row); pass them through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an "
            "instance role"
        )
    if scheme and scheme not in ALLOWED_SCHEMES:
        raise SourceError(
            f"{uri!r}: scheme {scheme!r} is not supported; use a local path, file://... or "
            f"s3://bucket/prefix (allowed: {', '.join(ALLOWED_SCHEMES)})"
        )
    return scheme


def list_sources(
    location: str,
    filesystem: Any = None,
    *,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    allow_prefixes: Sequence[str] = (),
) -> list[VideoSource]:
    """List videos from a folder, an s3:// prefix or a manifest file (by its extension).

    Args:
        location: Local folder, file:// or s3:// prefix, or a manifest (.txt/.lst/.csv/.parquet).
        filesystem: fsspec filesystem for s3:// (e.g. `s3fs.S3FileSystem(endpoint_url=...)`); default
            `fsspec.filesystem("s3")`, configured from the environment.
        extensions: Video extensions kept by folder listings (case-insensitive, without the dot).
        allow_prefixes: Prefixes a manifest may name besides its own folder (see `read_manifest`).

    Returns:
        The sources sorted by URI.
    """
    if posixpath.splitext(_path_part(location))[1].lower() in MANIFEST_FORMATS:
        return read_manifest(location, filesystem, allow_prefixes=allow_prefixes)
    return list_videos(location, filesystem, extensions=extensions)


def list_videos(
    location: str,
    filesystem: Any = None,
    *,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
) -> list[VideoSource]:
    """List the video files under a local folder or s3:// prefix (recursively), or one file.

    Hidden files and folders (names starting with ".") are skipped.

    Args:
        location: Local path, file:// URI or s3://bucket/prefix.
        filesystem: fsspec filesystem for s3:// (see `list_sources`).
        extensions: Extensions to keep (case-insensitive, without the dot).

    Returns:
        The sources sorted by URI.
    """
    wanted = {e.lower().lstrip(".") for e in extensions}
    if check_scheme(location) == "s3":
        fs = _s3(filesystem)
        prefix = location.rstrip("/")
        fs.invalidate_cache(prefix)  # a nightly driver may list the same prefix twice in one process
        found = fs.find(prefix, detail=True)
        sources = [
            _s3_source(f"s3://{key}", info)
            for key, info in found.items()
            if info.get("type", "file") == "file"
            and _extension(key) in wanted
            and not _hidden(key[len(_bare(prefix)) :])
        ]
    else:
        root = _local_path(location)
        if os.path.isfile(root):
            paths = [root]
        elif os.path.isdir(root):
            paths = []
            for folder, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # do not descend into hidden folders
                paths += [os.path.join(folder, name) for name in names if not name.startswith(".")]
        else:
            raise SourceError(f"{location!r}: no such file or folder")
        sources = [s for p in paths if _extension(p) in wanted and (s := _listed_local_source(p)) is not None]
    if not sources:
        logger.warning("no videos with extensions %s under %s", sorted(wanted), location)
    return sorted(sources, key=lambda s: s.uri)


def read_manifest(location: str, filesystem: Any = None, *, allow_prefixes: Sequence[str] = ()) -> list[VideoSource]:
    """Read a manifest (.txt/.lst lines, .csv or .parquet with a `uri` column) into sources.

    Entries that do not exist are kept with `size=None` (and logged), so that the decode stage records an
    error row for them; if none exists the manifest is assumed wrong and `SourceError` is raised.

    Args:
        location: Local path, file:// URI or s3:// URI of the manifest.
        filesystem: fsspec filesystem for s3:// (see `list_sources`).
        allow_prefixes: Local folders or s3://bucket/prefix locations that entries may name besides the
            manifest's own folder; an entry inside none of them raises `SourceError`.

    Returns:
        The sources sorted by URI (duplicates of a URI are dropped, the first kept).
    """
    scheme = check_scheme(location)
    suffix = posixpath.splitext(_path_part(location))[1].lower()
    kind = MANIFEST_FORMATS.get(suffix)
    if kind is None:
        raise SourceError(f"{location!r}: unknown manifest type {suffix!r}; use one of {sorted(MANIFEST_FORMATS)}")
    fs = _s3(filesystem) if scheme == "s3" else fsspec.filesystem("file")
    path = location if scheme == "s3" else _local_path(location)
    with fs.open(path, "rb") as f:
        if kind == "lines":
            lines = (line.strip() for line in f.read().decode("utf-8").splitlines())
            rows: list[dict[str, Any]] = [{"uri": line} for line in lines if line and not line.startswith("#")]
        else:
            if kind == "parquet":
                table = pq.read_table(f)
            else:  # empty cells are missing values, not empty strings
                table = pa_csv.read_csv(f, convert_options=pa_csv.ConvertOptions(strings_can_be_null=True))
            rows = _table_rows(table, location)
    base = location.rsplit("/", 1)[0] if scheme == "s3" else os.path.dirname(path)
    allowed = [_prefix(base), *(_prefix(p) for p in allow_prefixes)]
    entries: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for number, row in enumerate(rows, start=1):
        entry = row.pop("uri")
        if not isinstance(entry, str) or not entry.strip():
            raise SourceError(f"{location}: row {number}: uri must be a non-empty string, got {entry!r}")
        uri = _resolve(entry.strip(), base, scheme)
        _check_confined(uri, allowed, f"{location}: row {number} ({entry.strip()!r})")
        if uri in entries:
            logger.warning("%s: entry %d repeats %s; keeping the first", location, number, uri)
            continue
        entries[uri] = (row, _parse_questions(row.pop("questions", None), location, number))
    # S3 entries without stat columns: their folders' listings (1,000 keys per LIST request), then one HEAD
    # per entry not found there, many at once (20,000 entries took 152 s with one HEAD each, in turn).
    listed = _list_folders(
        [u for u, (row, _) in entries.items() if u.startswith("s3://") and not _stated(row)], filesystem
    )
    with ThreadPoolExecutor(max_workers=_STAT_THREADS) as pool:
        stat = pool.map(
            lambda item: _manifest_source(item[0], item[1][0], item[1][1], filesystem, listed), entries.items()
        )
        sources = {source.uri: source for source in stat}
    missing = [s.uri for s in sources.values() if s.size is None]
    if sources and len(missing) == len(sources):
        raise SourceError(f"{location}: none of its {len(missing)} entries exist (first: {missing[0]!r})")
    if missing:
        logger.warning("%s: %d entries do not exist, e.g. %s", location, len(missing), missing[:3])
    if not sources:
        logger.warning("%s lists no videos", location)
    return sorted(sources.values(), key=lambda s: s.uri)


# ---------------------------------------------------------------------------------------------------------


def _path_part(location: str) -> str:
    """The path of a location: a plain local path as it is, a URI's path (s3://, file://)."""
    return urlsplit(location).path if "://" in location else location


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.replace(os.sep, "/").split("/") if part)


def _bare(s3_uri: str) -> str:
    return s3_uri.removeprefix("s3://")


def _s3(filesystem: Any) -> Any:
    return filesystem if filesystem is not None else fsspec.filesystem("s3")


def _local_path(location: str) -> str:
    return local_path(location)


def _local_source(path: str) -> VideoSource:
    st = os.stat(path)
    return _versioned(path, st.st_size, None, st.st_mtime)


def _listed_local_source(path: str) -> VideoSource | None:
    """A listed file's source, or None (logged with its name) when it cannot be stat-ed: a dangling symlink,
    a symlink loop, a file deleted between the walk and the stat, no permission. One such entry never fails
    the listing of the rest."""
    try:
        return _local_source(path)
    except OSError as err:
        logger.warning("skipping %s: it cannot be read (%s)", path, err.strerror or type(err).__name__)
        return None


def _s3_source(uri: str, info: Mapping[str, Any]) -> VideoSource:
    size = int(info["size"])
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"') or None
    modified = info.get("LastModified")
    mtime = modified.timestamp() if modified is not None else None
    return _versioned(uri, size, etag, mtime)


def _resolve(uri: str, base: str, manifest_scheme: str) -> str:
    scheme = check_scheme(uri)
    if scheme == "s3":
        return uri
    if scheme == "file":
        return _local_path(uri)
    if manifest_scheme == "s3":
        return "s3://" + posixpath.normpath(posixpath.join(_bare(base), uri))
    return os.path.normpath(os.path.join(base, os.path.expanduser(uri)))


def _prefix(location: str) -> tuple[str, str]:
    """``(place, folder)`` of an allowed prefix: place is ``"local"`` or ``"s3://bucket"``, folder the path
    inside it without a trailing slash ("" for a whole bucket)."""
    if check_scheme(location) == "s3":
        bucket, _, key = _bare(location).partition("/")
        if not bucket:
            raise SourceError(f"{location!r}: an allowed prefix needs a bucket, e.g. s3://bucket/videos/")
        return f"s3://{bucket}", key.strip("/")
    return "local", _local_path(location).rstrip(os.sep) or os.sep


def _inside(path: str, folder: str, sep: str) -> bool:
    return folder in ("", sep) or path == folder or path.startswith(folder + sep)


def _check_confined(uri: str, allowed: Sequence[tuple[str, str]], where: str) -> None:
    """Raise `SourceError` unless ``uri`` (resolved) lies inside one of the allowed prefixes.

    An S3 key is checked as written and with its ``..`` and ``.`` segments collapsed: S3 itself reads keys
    literally, but a key must not reach another prefix on a store (or a later tool) that collapses them. A local
    path is checked as written and with its symlinks resolved (against the allowed folder's resolved path).
    """
    if uri.startswith("s3://"):
        bucket, _, key = _bare(uri).partition("/")
        place, sep = f"s3://{bucket}", "/"
        collapsed = posixpath.normpath(key) if key else key
        escapes = key.startswith("/") or collapsed == ".." or collapsed.startswith("../")
        forms = [key, collapsed]
    else:  # as written, and with its symlinks resolved: a link inside the folder must not read outside it
        place, sep, escapes, forms = "local", os.sep, False, [os.path.normpath(uri)]
    for allowed_place, folder in allowed:
        if allowed_place != place or escapes or not all(_inside(f, folder, sep) for f in forms):
            continue
        if place != "local" or _inside(_resolved(uri), _resolved(folder), sep):
            return
    shown = ", ".join(folder if p == "local" else f"{p}/{folder}" for p, folder in allowed)
    raise SourceError(
        f"{where}: {uri!r} is outside the manifest's own folder and the allowed prefixes ({shown}); a manifest "
        "reads only below its own folder unless --allow-prefix (PipelineConfig.allow_prefixes) names more, "
        f"e.g. --allow-prefix {_suggest(uri)}"
    )


def _resolved(path: str) -> str:
    """``path`` with its symlinks resolved; as written when it cannot name a file (a NUL byte)."""
    try:
        return os.path.realpath(path)
    except ValueError:
        return os.path.normpath(path)


def _suggest(uri: str) -> str:
    parent = uri.rsplit("/", 1)[0] if uri.startswith("s3://") else os.path.dirname(uri)
    return parent + ("/" if uri.startswith("s3://") else "")


def _table_rows(table: pa.Table, location: str) -> list[dict[str, Any]]:
    if "uri" not in table.column_names:
        raise SourceError(f"{location}: manifest has no 'uri' column (columns: {table.column_names})")
    return table.to_pylist()


def _parse_questions(value: Any, location: str, number: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [text] if text else []
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(f"{location}: row {number}: questions is not a JSON array: {text!r}") from err
    if not isinstance(value, Iterable) or not all(isinstance(q, str) for q in value):
        raise SourceError(f"{location}: row {number}: questions must be a list of strings, got {value!r}")
    return [q for q in value if q.strip()]


def _stated(row: Mapping[str, Any]) -> bool:
    """Whether a manifest row carries its own size and version (ETag or mtime), trusted instead of a stat."""
    return row.get("size") is not None and bool(row.get("etag") or row.get("mtime") is not None)


def _list_folders(uris: Sequence[str], filesystem: Any) -> dict[str, Mapping[str, Any]]:
    """Object details of the folders holding ``uris`` (S3), by URI; {} when they span too many folders."""
    folders = {uri.rsplit("/", 1)[0] for uri in uris}
    if not folders or len(folders) > _LIST_FOLDERS:
        return {}
    fs = _s3(filesystem)
    listed: dict[str, Mapping[str, Any]] = {}
    for folder in sorted(folders):
        try:
            infos = fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            continue
        listed.update({f"s3://{i['name']}": i for i in infos if i.get("type", "file") == "file"})
    return listed


def _manifest_source(
    uri: str, row: dict[str, Any], questions: list[str], filesystem: Any, listed: Mapping[str, Mapping[str, Any]]
) -> VideoSource:
    stated = _stated(row)
    given = {name: row.pop(name, None) for name in _STAT_COLUMNS}
    if stated:
        etag = str(given["etag"]).strip('"') if given["etag"] else None
        mtime = float(given["mtime"]) if given["mtime"] is not None else None
        return _versioned(uri, int(given["size"]), etag, mtime, questions, row)
    if uri in listed:
        stat = _s3_source(uri, listed[uri])
        return _versioned(uri, stat.size, stat.etag, stat.mtime, questions, row)
    try:
        stat = _s3_source(uri, _s3(filesystem).info(uri)) if uri.startswith("s3://") else _local_source(uri)
    except (FileNotFoundError, ValueError):  # ValueError: a local path with a NUL byte, which cannot exist
        return _versioned(uri, None, None, None, questions, row)
    return _versioned(uri, stat.size, stat.etag, stat.mtime, questions, row)


def _versioned(
    uri: str,
    size: int | None,
    etag: str | None,
    mtime: float | None,
    questions: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> VideoSource:
    video_id = make_video_id(uri, size, etag, mtime)
    return VideoSource(uri, size, etag, mtime, video_id, questions or [], extra or {})
