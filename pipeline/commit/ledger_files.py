"""Files under one output prefix as the ledger writes them: atomic writes, Arrow IPC tables, tolerant deletes.

One pyarrow filesystem (``LocalFileSystem``, or ``PyFileSystem(FSSpecHandler(s3fs))``) and a base path. An
object store publishes an object only when its upload completes; a local file is written under a hidden
temporary name (``.<name>.<hex>.tmp``, which no reader's glob matches) and renamed into place.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["PARTITION", "PrefixFiles", "fsspec_of"]

# A hive partition folder the pipeline writes part files into (``dt=2026-11-22``): one path component, never
# "..", "/" or a leading "_"/"." (readers skip those). PipelineConfig.partition is checked against it, and the
# reconcile looks for the pipeline's own part files only at the prefix and in folders of this form.
PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*=[A-Za-z0-9][A-Za-z0-9_.:-]*")

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class PrefixFiles:
    """Reads, atomic writes and deletes below ``base`` on ``filesystem``.

    Args:
        filesystem: a pyarrow filesystem.
        base: the output prefix as a path of that filesystem (``bucket/prefix`` on S3).
    """

    def __init__(self, filesystem: pafs.FileSystem, base: str) -> None:
        self.fs = filesystem
        self.base = base.rstrip("/")
        self.local = isinstance(filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def list_files(self, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """The files (not folders) under ``folder``, none if it does not exist."""
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=recursive))
        return [i for i in infos if i.type == pafs.FileType.File]

    # -- writing ------------------------------------------------------------------------------------------

    def write_parquet(self, table: pa.Table, path: str) -> None:
        self._atomically(path, lambda target: pq.write_table(table, target, filesystem=self.fs, compression="zstd"))

    def write_arrow(self, table: pa.Table, path: str) -> None:
        """An Arrow IPC file: internal tables are never ``.parquet``, so no results glob matches them."""

        def write(target: str) -> None:
            with (
                self.fs.open_output_stream(target) as sink,
                pa.ipc.new_file(sink, table.schema, options=_IPC_OPTIONS) as w,
            ):
                w.write_table(table)

        self._atomically(path, write)

    def write_bytes(self, data: bytes, path: str) -> None:
        def write(target: str) -> None:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

        self._atomically(path, write)

    def _atomically(self, path: str, write: Callable[[str], None]) -> None:
        if not self.local:
            write(path)
            return
        folder, name = posixpath.split(path)
        self.fs.create_dir(folder, recursive=True)
        tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            write(tmp)
            self.fs.move(tmp, path)
        finally:
            self.delete_file(tmp)

    # -- reading ------------------------------------------------------------------------------------------

    def read_arrow(self, path: str) -> pa.Table:
        with self.fs.open_input_file(path) as f:
            return pa.ipc.open_file(f).read_all()

    def read_files(self, paths: list[str]) -> dict[str, bytes]:
        """The contents of those of ``paths`` that exist, by path (on s3fs, many requests at once)."""
        fsspec_fs = fsspec_of(self.fs)
        if fsspec_fs is not None and paths:
            found = fsspec_fs.cat(paths, on_error="omit")
            return {p: found[p] for p in paths if p in found}
        contents = {}
        for path in paths:
            with contextlib.suppress(FileNotFoundError), self.fs.open_input_stream(path) as f:
                contents[path] = f.read()
        return contents

    # -- deleting -----------------------------------------------------------------------------------------

    def delete_file(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def delete_files(self, paths: list[str]) -> None:
        """Delete files, ignoring missing ones (on s3fs, one DeleteObjects request per 1,000 keys)."""
        fsspec_fs = fsspec_of(self.fs)
        if fsspec_fs is not None and paths:
            with contextlib.suppress(FileNotFoundError):  # some were gone: delete the rest one by one below
                fsspec_fs.rm(paths)
                return
        for path in paths:
            self.delete_file(path)

    def delete_dir(self, path: str) -> None:
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            with contextlib.suppress(FileNotFoundError):  # another task removed it first
                self.fs.delete_dir(path)


def fsspec_of(filesystem: pafs.FileSystem) -> Any:
    """The fsspec filesystem (s3fs) behind a ``PyFileSystem(FSSpecHandler(...))``, else None."""
    handler = getattr(filesystem, "handler", None)
    return handler.fs if isinstance(handler, pafs.FSSpecHandler) else None
