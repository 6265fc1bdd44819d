"""The committed state a collection handle reads: one value, swapped whole at commit or refresh.

A reader sees exactly one committed generation until it calls ``refresh()``, and a writer sees
its own last commit: every search reads the manifest, the live-document mask, the dense
matrix, the tantivy searcher ... of one `Snapshot`. Loading the next one builds a new value and
swaps it in with one assignment, so a search running meanwhile keeps the old one whole, and a
load that fails leaves the handle on the snapshot it had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.errors import IndexFormatError
from m3rag.index.lexical import TermQueries

__all__ = ["Snapshot", "live_mask"]

_FIX = "the collection is damaged; restore it from a backup or rebuild it"


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One committed generation of a collection, as a handle reads it.

    Attributes:
        manifest: The committed manifest (read-only by convention: a new commit makes a new
            snapshot).
        alive: ``bool[next_key]``: which committed keys are live (not tombstoned).
        live: How many are (``alive.sum()``).
        searcher: The tantivy searcher of this generation (holds its segments while alive).
        num_docs: The documents tantivy holds in it: the live ones, and maybe a few it has not
            dropped yet (deleted, replaced) or a commit's in flight.
        terms: The BM25 term queries of the searcher (`TermQueries`).
        dense_matrix: The committed dense vectors ``[next_key, dim]`` (a memory map), if stored.
        dense_scan: Their int8 scan copy, if kept.
        ann_upto: Keys below this are in the ANN graph (the rest are searched exactly).
        has_field: ``has_metadata`` answers for this snapshot (a cache, filled as asked).
    """

    manifest: Mapping[str, Any]
    alive: npt.NDArray[np.bool_]
    live: int
    searcher: Any
    num_docs: int
    terms: TermQueries
    dense_matrix: Any
    dense_scan: Any
    ann_upto: int
    has_field: dict[str, bool] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Snapshot(generation={self.generation}, keys={len(self.alive)}, live={self.live})"

    @property
    def generation(self) -> int:
        """The committed generation."""
        return int(self.manifest["generation"])

    @property
    def next_key(self) -> int:
        """Committed keys are ``0 .. next_key - 1``."""
        return int(self.manifest["next_key"])

    def lengths(self) -> dict[str, int]:
        """Committed rows of the columns whose length is not ``next_key`` (``lengths``)."""
        return {k: int(v) for k, v in self.manifest.get("lengths", {}).items()}

    def with_manifest(self, manifest: Mapping[str, Any]) -> Snapshot:
        """This snapshot under a newer manifest: the commit point passed, the stores not reread.

        A writer holds this between writing the manifest and loading the next snapshot, so
        that whatever happens in between, its next commit follows the one made.
        """
        return replace(self, manifest=manifest)


def live_mask(tombstones: npt.ArrayLike, next_key: int, path: Path) -> npt.NDArray[np.bool_]:
    """``bool[next_key]``: the committed keys not named in ``tombstones`` (read from ``path``).

    A commit records each deleted or replaced key once, and only a committed one: a key outside
    ``[0, next_key)`` or named twice is damage, reported as an `IndexFormatError` (a negative
    key would silently hide a document from the end, a large one fail every search). The file
    carries no checksum, so a damaged key that still names another committed document once
    cannot be told from a deletion.
    """
    tomb = np.asarray(tombstones, dtype=np.int64)
    alive = np.ones(next_key, dtype=np.bool_)
    if len(tomb) == 0:
        return alive
    low, high = int(tomb.min()), int(tomb.max())
    if low < 0 or high >= next_key:
        bad = low if low < 0 else high
        msg = (
            f"{path} names document key {bad}, outside the {next_key} committed keys "
            f"[0, {next_key}): {_FIX}"
        )
        raise IndexFormatError(msg)
    alive[tomb] = False
    if next_key - int(np.count_nonzero(alive)) != len(tomb):
        msg = f"{path} names a document key twice (a deletion is recorded once): {_FIX}"
        raise IndexFormatError(msg)
    return alive
