"""Optional approximate dense search: a usearch HNSW graph beside the exact matrix.

The graph is derived data. It is not part of the commit point: it is saved (new-then-rename)
when it has grown by a quarter (at least 65,536 vectors) since it was last saved, and when the
writer closes, so a long ingest of many small commits does not rewrite the whole graph each
time. A graph that is behind the manifest (a crash, a writer still ingesting, or an older
writer) is completed from the committed dense matrix when a writer opens; a reader searches
the keys the graph does not cover exactly. Scores returned to callers are always the
exact inner products recomputed from the matrix; only the candidate set is approximate.
Install with ``pip install "m3rag[ann]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag._optional import require
from m3rag.index._files import fsync_dir

__all__ = ["AnnIndex"]

FILE = "dense.usearch"
DTYPES = ("f32", "f16", "i8")
"""Vector storage inside the graph: ``f16`` is the default for new collections (half the
memory of ``f32`` and twice the build speed, same recall on our benchmarks); ``i8`` is the
fastest and least precise. Search results are rescored exactly either way."""
SAVE_MIN = 65_536  # vectors added since the last save before a commit saves the graph again


def check_dtype(dtype: object) -> str:
    """``dtype`` if it is one of `DTYPES`, else a ``ValueError`` naming them."""
    if dtype not in DTYPES:
        msg = f"ann dtype must be one of {list(DTYPES)}, got {dtype!r}"
        raise ValueError(msg)
    return str(dtype)


class AnnIndex:
    """An HNSW graph (inner product) over the dense vectors, keyed by document key.

    Args:
        folder: The collection folder.
        dim: Vector size.
        connectivity: HNSW ``M`` (edges per node).
        expansion_add: ``efConstruction``.
        expansion_search: ``efSearch``.
        dtype: How the graph stores vectors, one of `DTYPES` (collections made before
            this option hold ``f32``).
    """

    def __init__(
        self,
        folder: Path,
        dim: int,
        *,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        dtype: str = "f32",
    ) -> None:
        self.dtype = check_dtype(dtype)
        usearch = require("usearch.index", extra="ann", purpose="the approximate dense index")
        self.path = folder / FILE
        self._index: Any = usearch.Index(
            ndim=dim,
            metric="ip",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        if self.path.exists():
            self._index.load(str(self.path))
        self._saved = len(self._index)  # vectors in the file on disk

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: npt.NDArray[np.int64], vectors: npt.NDArray[Any]) -> None:
        """Insert vectors (in blocks, widened to float32)."""
        for start in range(0, len(keys), 65536):
            block = np.asarray(vectors[start : start + 65536], dtype=np.float32)
            self._index.add(np.asarray(keys[start : start + 65536], dtype=np.uint64), block)

    @property
    def unsaved(self) -> int:
        """Vectors added since the graph was last saved."""
        return len(self._index) - self._saved

    def save_due(self) -> bool:
        """Whether enough was added since the last save to save now (see the module notes)."""
        return self.unsaved >= max(SAVE_MIN, self._saved // 4)

    def save(self) -> None:
        """Persist new-then-rename."""
        tmp = self.path.with_name(f".{FILE}.tmp")
        self._index.save(str(tmp))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        fsync_dir(self.path.parent)
        self._saved = len(self._index)

    def search(self, query: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.int64]:
        """Keys of the approximately nearest ``count`` vectors."""
        if len(self._index) == 0 or count <= 0:
            return np.zeros(0, dtype=np.int64)
        # one query needs no thread pool; a pool left spinning would fight torch's threads
        matches = self._index.search(
            np.asarray(query, dtype=np.float32), min(count, len(self)), threads=1
        )
        return np.asarray(matches.keys, dtype=np.int64)
