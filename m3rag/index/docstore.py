"""Texts, ids and metadata of a collection in SQLite (stdlib), keyed by document ``key``.

Rows are only ever inserted (a delete or an upsert adds a tombstone in the manifest); a row is
visible when its key is below the manifest's ``next_key`` and not tombstoned, so rows written by
an interrupted commit are invisible and removed when the next writer opens.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.errors import IndexFormatError
from m3rag.index.filters import Filter, json_path, plain_field

__all__ = ["DocStore"]

_BOOLS = {"true": True, "false": False}  # json_type of a JSON bool -> its value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    gen INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_id ON docs(id);
CREATE INDEX IF NOT EXISTS docs_sha ON docs(sha256);
"""


class DocStore:
    """The SQLite side of a collection."""

    def __init__(self, path: Path, *, writable: bool, create: bool = False) -> None:
        self.path = path
        if writable:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if create:  # an existing store missing its table is damage, not a new store
                self._db.executescript(_SCHEMA)
        else:
            # a reader writes nothing: the writer leaves the file in rollback-journal mode when
            # it closes (no -wal/-shm to create), and on a read-only file system, where no
            # writer can come, the file is opened immutable
            immutable = "&immutable=1" if not os.access(path.parent, os.W_OK) else ""
            uri = f"{path.resolve().as_uri()}?mode=ro{immutable}"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        self._writable = writable

    def close(self) -> None:
        """Close the connection (a writer first leaves WAL mode, so readers create no files)."""
        if self._writable:
            with contextlib.suppress(sqlite3.Error):  # best effort: busy while readers read
                self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Report a failing read (a damaged or vanished database) as an ``IndexFormatError``."""
        try:
            yield
        except sqlite3.Error as exc:
            msg = (
                f"{self.path} cannot be read: {exc}; the collection is damaged: restore it from "
                "a backup or rebuild it"
            )
            raise IndexFormatError(msg) from exc

    def count_below(self, next_key: int) -> int:
        """Rows of committed keys (every committed key has exactly one row)."""
        with self._reading():
            row = self._db.execute("SELECT count(*) FROM docs WHERE key < ?", (next_key,))
            return int(row.fetchone()[0])

    def insert(self, rows: Sequence[tuple[int, str, str, str, int, str]]) -> None:
        """Insert ``(key, id, text, metadata_json, gen, sha256)`` rows in one transaction."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO docs (key, id, text, metadata, gen, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def drop_from(self, next_key: int) -> None:
        """Remove rows of uncommitted keys (recovery)."""
        with self._transaction():
            self._db.execute("DELETE FROM docs WHERE key >= ?", (next_key,))

    def _transaction(self) -> Any:
        db = self._db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type: object, *_: object) -> None:
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _keys_where(
        self, column: str, values: Sequence[str], next_key: int
    ) -> list[tuple[str, int]]:
        """``(value, key)`` rows of committed keys whose ``column`` is one of ``values``."""
        out: list[tuple[str, int]] = []
        with self._reading():
            for start in range(0, len(values), 900):  # SQLite's bound-parameter limit
                chunk = list(values[start : start + 900])
                marks = ",".join("?" * len(chunk))
                out.extend(
                    self._db.execute(
                        f"SELECT {column}, key FROM docs WHERE key < ? AND {column} IN ({marks})",  # noqa: S608 - fixed column names, placeholders
                        [next_key, *chunk],
                    ).fetchall()
                )
        return out

    def keys_for_ids(self, ids: Sequence[str], next_key: int) -> list[tuple[str, int]]:
        """``(id, key)`` rows of committed keys with these ids (tombstoned ones included)."""
        return self._keys_where("id", ids, next_key)

    def keys_for_hashes(self, hashes: Sequence[str], next_key: int) -> list[tuple[str, int]]:
        """``(sha256, key)`` rows of committed keys with these content hashes."""
        return self._keys_where("sha256", hashes, next_key)

    def rows(self, keys: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        """``key -> (id, text, metadata)`` for the given keys."""
        out: dict[int, tuple[str, str, dict[str, Any]]] = {}
        with self._reading():
            for start in range(0, len(keys), 900):
                chunk = [int(k) for k in keys[start : start + 900]]
                marks = ",".join("?" * len(chunk))
                for key, doc_id, text, meta in self._db.execute(
                    f"SELECT key, id, text, metadata FROM docs WHERE key IN ({marks})",  # noqa: S608
                    chunk,
                ):
                    out[int(key)] = (doc_id, text, json.loads(meta))
        return out

    def ids(self, keys: Sequence[int]) -> list[str]:
        """The ids of ``keys``, in order."""
        found: dict[int, str] = {}
        with self._reading():
            for start in range(0, len(keys), 900):
                chunk = [int(k) for k in keys[start : start + 900]]
                marks = ",".join("?" * len(chunk))
                for key, doc_id in self._db.execute(
                    f"SELECT key, id FROM docs WHERE key IN ({marks})",  # noqa: S608
                    chunk,
                ):
                    found[int(key)] = doc_id
        missing = [int(k) for k in keys if int(k) not in found]
        if missing:
            msg = f"{self.path} lacks the rows of keys {missing[:10]}: the collection is damaged"
            raise IndexFormatError(msg)
        return [found[int(k)] for k in keys]

    def matching(self, flt: Filter, next_key: int) -> npt.NDArray[np.int64]:
        """Keys (committed, tombstones not removed) whose metadata satisfies ``flt``."""
        cond, params = flt.to_sql()
        if len(params) > 30_000:  # SQLite's bound-parameter limit (32,766)
            msg = (
                f"the filter needs {len(params)} SQL parameters, more than SQLite takes; use "
                "fewer $in values (about 10,000 at most)"
            )
            raise ValueError(msg)
        with self._reading():
            rows = self._db.execute(
                f"SELECT key FROM docs WHERE key < ? AND {cond}",  # noqa: S608 - cond is built from placeholders
                [next_key, *params],
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def has_field(self, field: str, alive: npt.NDArray[np.bool_]) -> bool:
        """Whether a live committed row (``alive[key]``) has the metadata field.

        Stops at the first live row that has it, so a collection of chunks answers at once.
        """
        if not plain_field(field):
            return any(alive[k] for k, _ in self.field_values(field, len(alive)))
        path = json_path(field)
        with self._reading():
            rows = self._db.execute(
                "SELECT key FROM docs WHERE key < ? AND json_type(metadata, ?) IS NOT NULL",
                (len(alive), path),
            )
            return any(alive[int(key)] for (key,) in rows)

    def field_values(self, field: str, next_key: int) -> list[tuple[int, Any]]:
        """``(key, value)`` of a metadata field for committed rows that have it.

        JSON ``true`` and ``false`` come back as bools (SQLite reads them as 1 and 0, which
        would merge them with the ints); arrays and objects as their JSON text.
        """
        with self._reading():
            if plain_field(field):
                path = json_path(field)
                rows = self._db.execute(
                    "SELECT key, json_extract(metadata, ?), json_type(metadata, ?) FROM docs "
                    "WHERE key < ? AND json_type(metadata, ?) IS NOT NULL",
                    (path, path, next_key, path),
                ).fetchall()
            else:  # a name a JSON path cannot spell: match the decoded key itself
                rows = self._db.execute(
                    "SELECT docs.key, je.value, je.type FROM docs, json_each(docs.metadata) AS je "
                    "WHERE docs.key < ? AND je.key = ?",
                    (next_key, field),
                ).fetchall()
        return [(int(k), _BOOLS.get(t, v)) for k, v, t in rows]

    def all_ids(self, next_key: int) -> list[tuple[int, str]]:
        """``(key, id)`` of every committed row."""
        with self._reading():
            rows = self._db.execute("SELECT key, id FROM docs WHERE key < ?", (next_key,))
            return [(int(k), i) for k, i in rows.fetchall()]
