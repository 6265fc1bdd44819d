"""Durable file primitives: atomic JSON replace, append-only typed columns, the writer lock.

Every store of a collection is append-only between commits, and the manifest records how many
committed items each holds. Bytes past the committed length (a crash mid-append) are invisible
to readers and cut off when the next writer opens, so a crash at any instant loses nothing that
was committed and exposes nothing that was not.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.errors import CollectionLockedError, IndexFormatError

__all__ = ["Column", "WriterLock", "atomic_write_json", "fsync_dir", "read_rows"]


def fsync_dir(folder: Path) -> None:
    """Persist a directory entry (a rename or a new file) on POSIX file systems."""
    if os.name != "posix":  # pragma: no cover - directory fsync is a POSIX notion
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` new-then-rename, with fsync of file and folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(payload, indent=1, sort_keys=True).encode("utf-8")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


class Column:
    """An append-only file of fixed-width rows of one numpy dtype, memory-mapped for reading.

    Args:
        path: The file.
        dtype: Row element dtype.
        width: Elements per row (1 for scalars).
    """

    def __init__(self, path: Path, dtype: npt.DTypeLike, width: int = 1) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.width = width
        self._row_bytes = self.dtype.itemsize * width
        self._cached: tuple[int, npt.NDArray[Any]] | None = None

    def rows_on_disk(self) -> int:
        """Complete rows currently in the file (committed or not)."""
        try:
            return self.path.stat().st_size // self._row_bytes
        except FileNotFoundError:
            return 0

    def append(self, data: npt.NDArray[Any]) -> None:
        """Append rows and fsync; readers see them once a manifest counts them."""
        arr = np.ascontiguousarray(data, dtype=self.dtype)
        if self.width > 1 and (arr.ndim != 2 or arr.shape[1] != self.width):
            msg = f"{self.path.name}: expected rows of width {self.width}, got shape {arr.shape}"
            raise ValueError(msg)
        with self.path.open("ab") as fh:
            fh.write(arr.tobytes())
            fh.flush()
            os.fsync(fh.fileno())

    def truncate(self, rows: int) -> None:
        """Cut the file back to ``rows`` rows (recovery of an interrupted append)."""
        self._cached = None
        size = rows * self._row_bytes
        if not self.path.exists():
            if rows:
                msg = f"{self.path} is missing but the manifest counts {rows} committed rows"
                raise IndexFormatError(msg)
            self.path.touch()
            return
        if self.path.stat().st_size < size:
            msg = (
                f"{self.path} holds {self.rows_on_disk()} rows but the manifest counts {rows} "
                "committed rows: the collection is damaged"
            )
            raise IndexFormatError(msg)
        if self.path.stat().st_size != size:
            with self.path.open("r+b") as fh:
                fh.truncate(size)
                fh.flush()
                os.fsync(fh.fileno())

    def read(self, rows: int) -> npt.NDArray[Any]:
        """A read-only memory map of the first ``rows`` rows (empty array for 0)."""
        shape: tuple[int, ...] = (rows, self.width) if self.width > 1 else (rows,)
        if rows == 0:
            return np.zeros(shape, dtype=self.dtype)
        if self._cached is not None and self._cached[0] == rows:
            return self._cached[1]  # a map of committed rows never changes: reuse it
        available = self.rows_on_disk()
        if available < rows:
            msg = (
                f"{self.path} holds {available} rows but the manifest counts {rows}: "
                "the collection is damaged"
            )
            raise IndexFormatError(msg)
        mapped: npt.NDArray[Any] = np.memmap(self.path, dtype=self.dtype, mode="r", shape=shape)
        self._cached = (rows, mapped)
        return mapped


def read_rows(source: Any, start: int, stop: int) -> npt.NDArray[Any]:
    """Rows ``[start, stop)`` of a `Column` (read from the file, not mapped) or array.

    A pass over a whole column through its memory map leaves every page mapped, and counted
    in the process's resident memory, until the map goes; plain reads leave them in the page
    cache only.
    """
    if not isinstance(source, Column):
        return np.asarray(source[start:stop])
    count = max(0, stop - start)
    with source.path.open("rb") as fh:
        fh.seek(start * source._row_bytes)
        data = np.fromfile(fh, dtype=source.dtype, count=count * source.width)
    return data.reshape(-1, source.width) if source.width > 1 else data


SMALL_MAP_BYTES = 32 << 20
"""Maps up to this size are gathered through the map: all of it mapped costs little resident
memory, and a read per row costs more than the page faults (10k 1024-d float16 rows)."""


def gather_rows(array: npt.NDArray[Any], keys: npt.ArrayLike) -> npt.NDArray[Any]:
    """Rows ``keys`` of ``array``, read with ``pread`` when it is a large whole memory map.

    A memory map as `Column.read` returns, larger than `SMALL_MAP_BYTES`, is read
    from its file instead of through the map. Touching scattered rows through a map leaves
    whole page-cache folios mapped (about 300 KB per row touched on the machine we measured),
    counted in the process's resident memory until the map goes: a few thousand rescored rows
    per query map most of a float16 matrix within a few dozen queries. Plain reads leave the
    pages in the page cache only.
    """
    idx = np.asarray(keys, dtype=np.int64).reshape(-1)
    if not _whole_map(array) or len(idx) == 0 or array.nbytes <= SMALL_MAP_BYTES:
        return np.asarray(array[idx])
    mapped: np.memmap[Any, Any] = array  # type: ignore[assignment]
    rows = mapped.shape[0]
    if int(idx.min()) < -rows or int(idx.max()) >= rows:
        msg = f"row index out of range for {rows} rows"
        raise IndexError(msg)
    idx = np.where(idx < 0, idx + rows, idx)
    out = np.empty((len(idx), *mapped.shape[1:]), dtype=mapped.dtype)
    row_bytes = out.itemsize * (out.size // len(idx))
    if row_bytes == 0:
        return out
    # rows in file order, one read per run of consecutive rows (a contiguous range is one read)
    in_order = bool(np.all(idx[1:] >= idx[:-1]))
    order = None if in_order else np.argsort(idx, kind="stable")
    ordered = idx if order is None else idx[order]
    cuts = np.flatnonzero(np.diff(ordered) != 1) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    stops = np.concatenate((cuts, [len(ordered)])).tolist()
    buf = out if order is None else np.empty_like(out)
    flat = memoryview(buf.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    base = int(mapped.offset)
    fd = os.open(str(mapped.filename), os.O_RDONLY)
    try:
        for a, b in zip(starts, stops, strict=True):
            lo, hi = a * row_bytes, b * row_bytes
            offset = base + int(ordered[a]) * row_bytes
            while lo < hi:  # a read may return less than asked (large ranges)
                got = os.preadv(fd, [flat[lo:hi]], offset)
                if got <= 0:
                    msg = f"{mapped.filename} ended inside row {int(ordered[a])}"
                    raise OSError(msg)
                lo, offset = lo + got, offset + got
    finally:
        os.close(fd)
    if order is not None:
        out[order] = buf
    return out


def _whole_map(array: npt.NDArray[Any]) -> bool:
    """Whether ``array`` is a whole, contiguous memory map of a file (not a view of one)."""
    return (
        isinstance(array, np.memmap)
        and isinstance(array.filename, (str, os.PathLike))
        and array.base is getattr(array, "_mmap", None)
        and bool(array.flags.c_contiguous)
    )


class WriterLock:
    """An exclusive, non-blocking lock on ``folder/LOCK``: one writer per collection.

    The lock is held by an open file descriptor (``fcntl.flock``), so it is released by the
    operating system when the process dies, even by SIGKILL.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise [`CollectionLockedError`][m3rag.errors.CollectionLockedError]."""
        import fcntl  # POSIX only; imported here so the module loads everywhere

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            msg = (
                f"{self.path.parent} is open for writing by another process (pid in "
                f"{self.path.name}); open it read-only with Collection.open(path, "
                "read_only=True), or close the other writer"
            )
            raise CollectionLockedError(msg) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None
