"""Optional approximate dense search: a usearch HNSW graph beside the exact matrix.

The graph is derived data. It is not part of the commit point: it is saved (new-then-rename)
after each commit, and a graph that is behind the manifest (a crash between the two, or an
older writer) is completed from the committed dense matrix when a writer opens; a reader
searches the keys the graph does not cover exactly. Scores returned to callers are always the
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


class AnnIndex:
    """An HNSW graph (inner product) over the dense vectors, keyed by document key.

    Args:
        folder: The collection folder.
        dim: Vector size.
        connectivity: HNSW ``M`` (edges per node).
        expansion_add: ``efConstruction``.
        expansion_search: ``efSearch``.
    """

    def __init__(
        self,
        folder: Path,
        dim: int,
        *,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
    ) -> None:
        usearch = require("usearch.index", extra="ann", purpose="the approximate dense index")
        self.path = folder / FILE
        self._index: Any = usearch.Index(
            ndim=dim,
            metric="ip",
            dtype="f32",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        if self.path.exists():
            self._index.load(str(self.path))

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: npt.NDArray[np.int64], vectors: npt.NDArray[Any]) -> None:
        """Insert vectors (in blocks, widened to float32)."""
        for start in range(0, len(keys), 65536):
            block = np.asarray(vectors[start : start + 65536], dtype=np.float32)
            self._index.add(np.asarray(keys[start : start + 65536], dtype=np.uint64), block)

    def save(self) -> None:
        """Persist new-then-rename."""
        tmp = self.path.with_name(f".{FILE}.tmp")
        self._index.save(str(tmp))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        fsync_dir(self.path.parent)

    def search(self, query: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.int64]:
        """Keys of the approximately nearest ``count`` vectors."""
        if len(self._index) == 0 or count <= 0:
            return np.zeros(0, dtype=np.int64)
        matches = self._index.search(np.asarray(query, dtype=np.float32), min(count, len(self)))
        return np.asarray(matches.keys, dtype=np.int64)
