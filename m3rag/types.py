"""Small immutable value objects shared across m3rag.

Nothing here imports torch: an [`M3Output`][] is plain numpy, so it can be produced on a GPU box
and consumed (indexed, scored) anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["HEADS", "Document", "Head", "M3Output"]

Head = Literal["dense", "sparse", "colbert"]
"""The three native BGE-M3 heads: ``dense`` (CLS), ``sparse`` (lexical weights), ``colbert``."""

HEADS: tuple[Head, ...] = ("dense", "sparse", "colbert")

FloatArray = npt.NDArray[np.float32]


def _readonly(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    if array.flags.writeable:
        array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class M3Output:
    """What one encoder call returns: the requested heads for ``n`` texts, in input order.

    Heads that were not requested are ``None`` (they were not computed). Arrays are read-only.

    Attributes:
        dense_vecs: float32 ``[n, d]``, L2-normalised sentence vectors (CLS for BGE-M3, or the
            pooling a dense-only checkpoint declares), or ``None``.
        lexical_weights: one ``dict[token_id, weight]`` per text: the maximum
            ``relu(sparse_linear)`` weight of each token id, special tokens and zero weights
            dropped, keys in order of first occurrence (as FlagEmbedding), or ``None``.
        colbert_vecs: one float32 ``[t_i, d]`` matrix per text: the L2-normalised ColBERT
            vectors of every token after ``<s>`` (including ``</s>``), or ``None``.
        token_counts: int64 ``[n]``, the number of tokens each text was encoded with, specials
            included, after truncation.
        truncated: bool ``[n]``, which texts were longer than the maximum length and cut.
    """

    dense_vecs: FloatArray | None
    lexical_weights: list[dict[int, float]] | None
    colbert_vecs: list[FloatArray] | None
    token_counts: npt.NDArray[np.int64] = field(repr=False)
    truncated: npt.NDArray[np.bool_] = field(repr=False)

    def __post_init__(self) -> None:
        n = len(self.token_counts)
        if len(self.truncated) != n:
            msg = f"truncated has {len(self.truncated)} entries for {n} texts"
            raise ValueError(msg)
        if self.dense_vecs is not None:
            if self.dense_vecs.ndim != 2 or self.dense_vecs.shape[0] != n:
                msg = f"dense_vecs must be [n={n}, d], got shape {self.dense_vecs.shape}"
                raise ValueError(msg)
            _readonly(self.dense_vecs)
        if self.lexical_weights is not None and len(self.lexical_weights) != n:
            msg = f"lexical_weights has {len(self.lexical_weights)} entries for {n} texts"
            raise ValueError(msg)
        if self.colbert_vecs is not None:
            if len(self.colbert_vecs) != n:
                msg = f"colbert_vecs has {len(self.colbert_vecs)} entries for {n} texts"
                raise ValueError(msg)
            for matrix in self.colbert_vecs:
                _readonly(matrix)
        _readonly(self.token_counts)
        _readonly(self.truncated)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        *,
        dense_vecs: FloatArray | None = None,
        lexical_weights: Sequence[dict[int, float]] | None = None,
        colbert_vecs: Sequence[FloatArray] | None = None,
        token_counts: Sequence[int] | npt.NDArray[np.int64] | None = None,
        truncated: Sequence[bool] | npt.NDArray[np.bool_] | None = None,
    ) -> M3Output:
        """Build an output from precomputed representations (e.g. loaded from elsewhere).

        Missing ``token_counts`` are derived from the ColBERT rows (``t_i + 1``) when present,
        else set to 0; missing ``truncated`` flags are all ``False``.

        Raises:
            ValueError: If no head is given, or the heads disagree on the number of texts.
        """
        sizes = {len(x) for x in (dense_vecs, lexical_weights, colbert_vecs) if x is not None}
        if not sizes:
            msg = "M3Output.build needs at least one of dense_vecs, lexical_weights, colbert_vecs"
            raise ValueError(msg)
        if len(sizes) != 1:
            msg = f"the heads disagree on the number of texts: {sorted(sizes)}"
            raise ValueError(msg)
        n = sizes.pop()
        dense = None if dense_vecs is None else np.ascontiguousarray(dense_vecs, dtype=np.float32)
        colbert = (
            None
            if colbert_vecs is None
            else [np.ascontiguousarray(m, dtype=np.float32) for m in colbert_vecs]
        )
        lexical = (
            None
            if lexical_weights is None
            else [{int(k): float(v) for k, v in d.items()} for d in lexical_weights]
        )
        if token_counts is None:
            counts = (
                np.array([m.shape[0] + 1 for m in colbert], dtype=np.int64)
                if colbert is not None
                else np.zeros(n, dtype=np.int64)
            )
        else:
            counts = np.asarray(token_counts, dtype=np.int64).copy()
        flags = (
            np.zeros(n, dtype=np.bool_)
            if truncated is None
            else np.asarray(truncated, dtype=np.bool_).copy()
        )
        return cls(dense, lexical, colbert, counts, flags)

    @classmethod
    def concat(cls, outputs: Iterable[M3Output]) -> M3Output:
        """Concatenate outputs that carry the same heads, in order.

        Raises:
            ValueError: If ``outputs`` is empty or the outputs carry different heads.
        """
        parts = list(outputs)
        if not parts:
            msg = "M3Output.concat needs at least one output"
            raise ValueError(msg)
        heads = parts[0].heads
        if any(p.heads != heads for p in parts):
            msg = f"cannot concatenate outputs with different heads: {[p.heads for p in parts]}"
            raise ValueError(msg)
        dense = (
            None
            if parts[0].dense_vecs is None
            else np.concatenate([p.dense_vecs for p in parts if p.dense_vecs is not None])
        )
        lexical = (
            None
            if parts[0].lexical_weights is None
            else [d for p in parts for d in (p.lexical_weights or [])]
        )
        colbert = (
            None
            if parts[0].colbert_vecs is None
            else [m for p in parts for m in (p.colbert_vecs or [])]
        )
        counts = np.concatenate([p.token_counts for p in parts])
        flags = np.concatenate([p.truncated for p in parts])
        return cls(dense, lexical, colbert, counts, flags)

    # -- access -------------------------------------------------------------------------------

    @property
    def heads(self) -> tuple[Head, ...]:
        """The heads this output carries, in the order ``dense``, ``sparse``, ``colbert``."""
        present = (
            self.dense_vecs is not None,
            self.lexical_weights is not None,
            self.colbert_vecs is not None,
        )
        return tuple(h for h, p in zip(HEADS, present, strict=False) if p)

    @property
    def dim(self) -> int | None:
        """The dense dimension, or ``None`` when no dense vectors were computed."""
        return None if self.dense_vecs is None else int(self.dense_vecs.shape[1])

    @property
    def truncated_indices(self) -> list[int]:
        """Indices of the texts that were cut at the maximum length."""
        return [int(i) for i in np.flatnonzero(self.truncated)]

    def __len__(self) -> int:
        return len(self.token_counts)

    def __getitem__(self, index: int | slice | Sequence[int] | npt.NDArray[np.integer]) -> M3Output:
        """Select texts; always returns an [`M3Output`][] (one text for an int index)."""
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                msg = f"index {i} out of range for an M3Output of {n} texts"
                raise IndexError(msg)
            idx = np.array([i % n], dtype=np.int64)
        elif isinstance(index, slice):
            idx = np.arange(n, dtype=np.int64)[index]
        else:
            idx = np.asarray(index, dtype=np.int64)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                msg = f"index out of range for an M3Output of {n} texts"
                raise IndexError(msg)
            idx = idx % max(n, 1)
        positions = idx.tolist()
        return M3Output(
            None if self.dense_vecs is None else self.dense_vecs[idx].copy(),
            None
            if self.lexical_weights is None
            else [dict(self.lexical_weights[i]) for i in positions],
            None if self.colbert_vecs is None else [self.colbert_vecs[i] for i in positions],
            self.token_counts[idx].copy(),
            self.truncated[idx].copy(),
        )

    def __repr__(self) -> str:
        parts = [f"n={len(self)}", f"heads={list(self.heads)}"]
        if self.dim is not None:
            parts.append(f"dim={self.dim}")
        if self.truncated.any():
            parts.append(f"truncated={self.truncated_indices}")
        return f"M3Output({', '.join(parts)})"


@dataclass(frozen=True)
class Document:
    """A document to index, or one read back from a collection.

    Attributes:
        text: The text (non-empty when indexed).
        id: The caller's id; ``None`` lets the collection assign one.
        metadata: JSON-serialisable fields, usable in filters.
    """

    text: str
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __repr__(self) -> str:
        return f"Document(id={self.id!r}, text={self.text!r:.60}, metadata={dict(self.metadata)!r})"
