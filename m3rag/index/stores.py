"""Dense, ColBERT and full-precision lexical stores over append-only memory-mapped columns.

All three are addressed by document ``key`` (the row number, assigned in insertion order).

* **Dense**: one ``[n, d]`` float32 or float16 matrix; exact inner-product top-k, computed in
  blocks so a float16 matrix is widened to float32 a block at a time (bounded memory).
* **ColBERT**: all token vectors of all documents in one ``[T, d]`` matrix plus ``(start, len)``
  offsets per document; float16 by default, or int8 with one float32 scale per token row
  (symmetric per-row quantisation, 4x smaller than float32 and 2x smaller than float16, as the
  compact tensor forms Vespa offers for ColBERT). MaxSim is computed for a candidate set only.
* **Lexical**: token ids (int32) and weights (float32) of every document, with offsets; used to
  rescore lexical candidates exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.index._files import Column

__all__ = ["ColbertStore", "DenseStore", "LexicalStore"]

_BLOCK = 65536


def topk(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` largest finite scores, best first (ties by index)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    vals = scores[finite]
    if k < finite.size:
        part = np.argpartition(-vals, k - 1)[:k]
        # include every index tied with the k-th score so the tie order is by key
        kth = vals[part].min()
        part = np.flatnonzero(vals >= kth)
    else:
        part = np.arange(finite.size)
    order = np.lexsort((finite[part], -vals[part]))[:k]
    return finite[part][order].astype(np.int64)


class DenseStore:
    """Dense vectors, ``[n, dim]`` float32 or float16."""

    def __init__(self, folder: Path, dim: int, dtype: str) -> None:
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.column = Column(folder / f"dense.{self.dtype.name}", self.dtype, dim)

    def append(self, vecs: npt.NDArray[np.float32]) -> None:
        """Append vectors (cast to the store dtype)."""
        self.column.append(np.asarray(vecs, dtype=np.float32).astype(self.dtype))

    def matrix(self, rows: int) -> npt.NDArray[Any]:
        """The committed matrix (memory-mapped)."""
        return self.column.read(rows)

    @staticmethod
    def search(
        matrix: npt.NDArray[Any],
        query: npt.NDArray[np.float32],
        k: int,
        mask: npt.NDArray[np.bool_],
        max_norm: float,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Exact top-``k`` inner products among the rows where ``mask`` holds.

        float32 matrices are scanned with BLAS directly. float16 matrices are scanned with
        torch's native half-precision matrix-vector product (numpy has no fast float16 path and
        widening the whole matrix costs more than the product); every row whose half-precision
        score is within a proven error bound of the ``k``-th is then rescored in float32, so the
        result is the exact top-``k`` of the stored vectors.
        """
        q = np.asarray(query, dtype=np.float32)
        if matrix.dtype == np.float32:
            scores = DenseStore.scores(matrix, q)
            scores[~mask] = -np.inf
            keys = topk(scores, k)
            return keys, scores[keys]
        approx = DenseStore._half_scores(matrix, q)
        approx[~mask] = -np.inf
        first = topk(approx, k)
        if len(first) == 0:
            return first, np.zeros(0, dtype=np.float32)
        # |approx - exact| <= |q| |d| 2**-8: half rounding of q (2**-11 relative), of the
        # result (2**-11 relative) and accumulation, with a wide safety factor.
        margin = float(np.linalg.norm(q)) * max_norm * 2.0**-8
        candidates = np.flatnonzero(approx >= approx[first[-1]] - 2 * margin)
        exact = DenseStore.scores_for(matrix, q, candidates)
        order = np.lexsort((candidates, -exact))[:k]
        return candidates[order].astype(np.int64), exact[order]

    @staticmethod
    def _half_scores(
        matrix: npt.NDArray[Any], q: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        import warnings

        import torch

        out = np.empty(matrix.shape[0], dtype=np.float32)
        tq = torch.tensor(q, dtype=torch.float16)
        with warnings.catch_warnings():
            # the memory map is read-only and torch warns about that; it only reads it
            warnings.simplefilter("ignore", UserWarning)
            for start in range(0, matrix.shape[0], 4 * _BLOCK):
                block = torch.from_numpy(np.asarray(matrix[start : start + 4 * _BLOCK]))
                out[start : start + block.shape[0]] = (block @ tq).float().numpy()
        return out

    @staticmethod
    def scores(matrix: npt.NDArray[Any], query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Inner products of every row with ``query``, block by block."""
        q = np.asarray(query, dtype=np.float32)
        out = np.empty(matrix.shape[0], dtype=np.float32)
        for start in range(0, matrix.shape[0], _BLOCK):
            block = np.asarray(matrix[start : start + _BLOCK], dtype=np.float32)
            out[start : start + len(block)] = block @ q
        return out

    @staticmethod
    def scores_for(
        matrix: npt.NDArray[Any], query: npt.NDArray[np.float32], keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Inner products of the given rows with ``query``."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.float32)
        rows = np.asarray(matrix[np.asarray(keys)], dtype=np.float32)
        return np.asarray(rows @ np.asarray(query, dtype=np.float32), dtype=np.float32)


class ColbertStore:
    """ColBERT token matrices of every document, float16 or int8 + per-row scale."""

    def __init__(self, folder: Path, dim: int, dtype: str) -> None:
        if dtype not in ("float32", "float16", "int8"):
            msg = f"colbert_dtype must be 'float32', 'float16' or 'int8', got {dtype!r}"
            raise ValueError(msg)
        self.dim = dim
        self.dtype = dtype
        self.vectors = Column(folder / f"colbert.{dtype}", np.dtype(dtype), dim)
        self.scales = Column(folder / "colbert.scale", np.float32) if dtype == "int8" else None
        self.offsets = Column(folder / "colbert.offsets", np.int64, 2)

    def encode(
        self, mats: Sequence[npt.NDArray[np.float32]], start: int
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32] | None, npt.NDArray[np.int64]]:
        """Stored forms of ``mats``: vectors, scales (int8 only) and ``(start, len)`` offsets."""
        lengths = np.array([m.shape[0] for m in mats], dtype=np.int64)
        starts = start + np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(mats) else lengths
        offsets = np.stack([starts, lengths], axis=1) if len(mats) else np.zeros((0, 2), np.int64)
        flat = (
            np.concatenate([np.asarray(m, np.float32) for m in mats], axis=0)
            if len(mats)
            else np.zeros((0, self.dim), np.float32)
        )
        if self.dtype in ("float32", "float16"):
            return flat.astype(self.dtype), None, offsets
        scale = np.abs(flat).max(axis=1) / 127.0 if len(flat) else np.zeros(0, np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8)
        return q, scale, offsets

    def append(self, mats: Sequence[npt.NDArray[np.float32]], start: int) -> int:
        """Append documents' matrices; returns the number of token rows written."""
        vectors, scales, offsets = self.encode(mats, start)
        self.vectors.append(vectors)
        if self.scales is not None and scales is not None:
            self.scales.append(scales)
        self.offsets.append(offsets)
        return len(vectors)

    def maxsim(
        self,
        query: npt.NDArray[np.float32],
        keys: npt.NDArray[np.int64],
        *,
        token_rows: int,
        docs: int,
    ) -> npt.NDArray[np.float32]:
        """ColBERT MaxSim of ``query`` [t_q, d] against the documents ``keys``.

        All candidate rows are gathered in one fancy index, widened to float32 with torch
        (numpy's float16 conversion is several times slower), multiplied by the query once, and
        reduced per document with ``np.maximum.reduceat``.
        """
        import torch

        keys = np.asarray(keys, dtype=np.int64)
        out = np.zeros(len(keys), dtype=np.float32)
        q = np.asarray(query, dtype=np.float32)
        if len(keys) == 0 or q.shape[0] == 0:
            return out
        offsets = self.offsets.read(docs)[keys]
        lengths = offsets[:, 1]
        nonempty = np.flatnonzero(lengths > 0)
        if nonempty.size == 0:
            return out
        starts, lens = offsets[nonempty, 0], lengths[nonempty]
        total = int(lens.sum())
        seg = np.concatenate(([0], np.cumsum(lens)[:-1]))
        rows = np.repeat(starts - seg, lens) + np.arange(total)
        block = torch.from_numpy(np.ascontiguousarray(self.vectors.read(token_rows)[rows])).float()
        if self.scales is not None:
            block *= torch.from_numpy(np.ascontiguousarray(self.scales.read(token_rows)[rows]))[
                :, None
            ]
        sims = (torch.from_numpy(q.copy()) @ block.T).numpy()  # [t_q, total]
        best = np.maximum.reduceat(sims, seg, axis=1)
        out[nonempty] = best.sum(axis=0, dtype=np.float32) / np.float32(q.shape[0])
        return out

    def matrices(
        self, keys: npt.NDArray[np.int64], *, token_rows: int, docs: int
    ) -> list[npt.NDArray[np.float32]]:
        """The stored (dequantised) matrices of ``keys``."""
        offsets = self.offsets.read(docs)[np.asarray(keys)]
        vectors = self.vectors.read(token_rows)
        scales = self.scales.read(token_rows) if self.scales is not None else None
        out = []
        for start, length in offsets.tolist():
            block = np.asarray(vectors[start : start + length], dtype=np.float32)
            if scales is not None:
                block = block * scales[start : start + length, None]
            out.append(block)
        return out


class LexicalStore:
    """Full-precision lexical weights of every document."""

    def __init__(self, folder: Path) -> None:
        self.ids = Column(folder / "lexical.ids", np.int32)
        self.weights = Column(folder / "lexical.weights", np.float32)
        self.offsets = Column(folder / "lexical.offsets", np.int64, 2)

    def append(self, dicts: Sequence[Mapping[int, float]], start: int) -> int:
        """Append documents' weights; returns the number of (id, weight) entries written."""
        lengths = np.array([len(d) for d in dicts], dtype=np.int64)
        starts = start + np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(dicts) else lengths
        total = int(lengths.sum())
        ids = np.fromiter((k for d in dicts for k in d), dtype=np.int32, count=total)
        weights = np.fromiter((v for d in dicts for v in d.values()), dtype=np.float32, count=total)
        self.ids.append(ids)
        self.weights.append(weights)
        self.offsets.append(
            np.stack([starts, lengths], axis=1) if len(dicts) else np.zeros((0, 2), np.int64)
        )
        return total

    def dicts(
        self, keys: npt.NDArray[np.int64], *, entries: int, docs: int
    ) -> list[dict[int, float]]:
        """The stored weight dicts of ``keys``."""
        offsets = self.offsets.read(docs)[np.asarray(keys)]
        ids = self.ids.read(entries)
        weights = self.weights.read(entries)
        return [
            dict(zip(ids[s : s + n].tolist(), weights[s : s + n].tolist(), strict=True))
            for s, n in offsets.tolist()
        ]

    def scores(
        self,
        query: Mapping[int, float],
        keys: npt.NDArray[np.int64],
        *,
        entries: int,
        docs: int,
    ) -> npt.NDArray[np.float32]:
        """Exact lexical matching scores of ``query`` against ``keys``, vectorised."""
        n = len(keys)
        if n == 0 or not query:
            return np.zeros(n, dtype=np.float32)
        offsets = self.offsets.read(docs)[np.asarray(keys)]
        ids = self.ids.read(entries)
        weights = self.weights.read(entries)
        q_ids = np.fromiter(query.keys(), dtype=np.int64, count=len(query))
        q_w = np.fromiter(query.values(), dtype=np.float32, count=len(query))
        order = np.argsort(q_ids)
        q_ids, q_w = q_ids[order], q_w[order]
        lengths = offsets[:, 1]
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(n, dtype=np.float32)
        # gather every candidate's entries at once
        index = np.repeat(offsets[:, 0] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        index = index + np.arange(total)
        d_ids = np.asarray(ids[index], dtype=np.int64)
        d_w = np.asarray(weights[index], dtype=np.float32)
        owner = np.repeat(np.arange(n), lengths)
        pos = np.minimum(np.searchsorted(q_ids, d_ids), len(q_ids) - 1)
        hit = q_ids[pos] == d_ids
        contrib = q_w[pos[hit]] * d_w[hit]
        return np.bincount(owner[hit], weights=contrib, minlength=n).astype(np.float32)
