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

import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.errors import IndexFormatError
from m3rag.index._files import Column, gather_rows

__all__ = [
    "COLBERT_DTYPES",
    "ColbertStore",
    "DenseScan",
    "DenseStore",
    "LexicalStore",
    "check_offsets",
    "quantise_rows",
    "scan_width",
]

_BLOCK = 65536
# MaxSim gathers, widens and multiplies the candidates' token rows a block at a time; a block of
# 4 MiB of float32 rows (1024 rows of 1024 floats) stays in cache from the gather to the product.
# The 8192 rows it took at every width before (32 MiB at 1024) ran 1.4-1.6x slower in float32
# over 100 candidates of ~200 rows, at widths 1024 and 384 (benchmarks/bench_maxsim_blocks.py).
_MAXSIM_BLOCK_BYTES = 4 << 20
_COLBERT_APPEND = 512  # documents encoded per write
_BUFFERS = threading.local()
_TORCH_TOPK = 65536


def topk(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` largest finite scores, best first (ties by index)."""
    top = top_values(scores, k)
    if len(top) == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.flatnonzero(scores >= top.min())  # every index tied with the k-th
    part = part[np.isfinite(scores[part])]
    order = np.lexsort((part, -scores[part]))[:k]
    return part[order].astype(np.int64)


def top_values(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    """The ``k`` largest finite values of ``scores`` (fewer if fewer are finite), unordered."""
    if k <= 0 or scores.size == 0:
        return np.zeros(0, dtype=np.float32)
    if scores.size > _TORCH_TOPK and k < scores.size // 8:
        # torch's top-k finds the k-th value several times faster than a partition
        import torch

        vals: npt.NDArray[np.float32] = torch.topk(
            torch.from_numpy(scores), k, sorted=False
        ).values.numpy()
    elif k < scores.size:
        vals = np.partition(scores, scores.size - k)[scores.size - k :]
    else:
        vals = scores
    if np.isnan(vals).any() or np.isposinf(vals).any():
        # NaN and +inf rank above every finite value: take the top among the finite ones
        return top_values(scores[np.isfinite(scores)], k)
    return np.asarray(vals[np.isfinite(vals)], dtype=np.float32)


def check_offsets(offsets: Column, docs: int, total: int, first: int = 0) -> None:
    """Check the ``(start, len)`` rows of documents ``first .. docs - 1`` as written.

    A store appends each document's rows after the previous document's, so the offsets
    tile the data: the first starts at 0, each starts where the previous ends, the last ends
    at ``total`` (the data rows the manifest counts). Rows below ``first`` were checked when
    an earlier snapshot was loaded (the files are append-only), so a commit checks only its
    own. One vectorised pass at load time: searches then index the data unchecked.

    Raises:
        IndexFormatError: An offset out of place (naming the file and the document key).
    """
    if first >= docs:
        return
    low = max(first - 1, 0)  # the last row checked before: where the next must start
    rows = np.asarray(offsets.read(docs)[low:], dtype=np.int64)
    starts, lengths = rows[:, 0], rows[:, 1]
    inside = (starts >= 0) & (starts <= total) & (lengths >= 0) & (lengths <= total)
    if inside.all():  # no overflow below: every value is within [0, total]
        ends = starts + lengths
        follows = np.ones(len(rows), dtype=np.bool_)
        follows[1:] = starts[1:] == ends[:-1]
        follows[0] = low > 0 or starts[0] == 0
        if follows.all() and int(ends[-1]) == total:
            return
        bad = int(np.argmin(follows)) if not follows.all() else len(rows) - 1
    else:
        bad = int(np.argmin(inside))
    start, length = rows[bad].tolist()
    msg = (
        f"{offsets.path} is damaged: document key {low + bad} has offset (start {start}, "
        f"length {length}), which does not follow the previous document within the {total} "
        "committed rows of its data; restore the collection from a backup or rebuild it"
    )
    raise IndexFormatError(msg)


def _buffer(name: str, dtype: Any, rows: int, dim: int) -> Any:
    """A per-thread reusable ``[rows, dim]`` torch buffer (grown as needed, never shrunk)."""
    import torch

    key = (name, dtype, dim)
    cache: dict[Any, Any] = getattr(_BUFFERS, "cache", None) or {}
    _BUFFERS.cache = cache
    buf = cache.get(key)
    if buf is None or buf.shape[0] < rows:
        buf = torch.empty((max(rows, 1024), dim), dtype=dtype)
        cache[key] = buf
    return buf[:rows]


def maxsim_block_rows(dim: int) -> int:
    """Token rows MaxSim handles at a time at width ``dim``.

    ``_MAXSIM_BLOCK_BYTES`` of float32 rows, in multiples of 256 (at least 256).
    """
    return max(256, _MAXSIM_BLOCK_BYTES // (4 * dim) // 256 * 256)


def _matvec(rows: npt.NDArray[np.float32], q: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``rows @ q`` in float32, with torch once torch is loaded.

    numpy's OpenBLAS threads spin for a while after each call; when the next call is one of
    torch's (the dense scan, MaxSim) the two thread pools fight over the cores, which slowed
    the 1M-row scan from 32 to ~70 ms. Staying in torch keeps one pool busy.
    """
    if "torch" in sys.modules:
        import torch

        # torch warns about read-only arrays (a caller's frozen query, a memory map)
        rows = rows if rows.flags.writeable else rows.copy()
        q = q if q.flags.writeable else q.copy()
        out: npt.NDArray[np.float32] = torch.mv(torch.from_numpy(rows), torch.from_numpy(q)).numpy()
        return out
    return np.asarray(rows @ q, dtype=np.float32)


_HALF_SAFE = 2.0**14  # a quarter of float16's largest value, 65504


def _half_fits(q: npt.NDArray[np.float32], max_norm: float) -> bool:
    """Whether a float16 scan of ``q`` stays finite: ``|q|`` and every ``|q . d|`` in range.

    A query the half-precision product would overflow (1e5 is infinity as float16) would
    score every row NaN or infinite, and the search answer nothing: such a query is scanned
    in float32 instead.
    """
    with np.errstate(all="ignore"):
        qn = float(np.linalg.norm(q))
    return qn < _HALF_SAFE and qn * max_norm < _HALF_SAFE


def _int8_kernel() -> bool:
    """Whether torch has the int8-weight matrix kernel the scan uses."""
    import torch

    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def _bf16_ceil(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The smallest bfloat16-representable float32 values >= ``values`` (positive, finite)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    up = (bits.astype(np.uint64) + 0xFFFF) & 0xFFFF0000
    return up.astype(np.uint32).view(np.float32)


def scan_width(dim: int) -> int:
    """Row width of the int8 scan copy: ``dim`` zero-padded to a multiple of 16.

    The int8 kernel reads rows in blocks of 16 and reads past the row end otherwise.
    """
    return -(-dim // 16) * 16


def quantise_rows(
    rows: npt.NDArray[Any], width: int | None = None
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric per-row int8 codes (zero-padded to ``width``) and ``(scale, residual)``.

    The scale is rounded up to a bfloat16 value so the scan kernel applies it exactly and
    every code stays within [-127, 127]; the residual norm is measured against the stored
    row in float64 and rounded up, so it is a true bound.
    """
    x = np.asarray(rows, dtype=np.float32)
    width = x.shape[1] if width is None else width
    peak = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
    scale = _bf16_ceil(np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)))
    codes = np.zeros((len(x), width), dtype=np.int8)
    codes[:, : x.shape[1]] = np.clip(np.rint(x / scale[:, None]), -127, 127)
    residual = x.astype(np.float64) - codes[:, : x.shape[1]].astype(np.float64) * scale[:, None]
    norm = np.linalg.norm(residual, axis=1) * (1 + 2.0**-20)
    meta = np.stack([scale, np.nextafter(norm.astype(np.float32), np.float32(np.inf))], axis=1)
    return codes, meta.astype(np.float32)


class DenseScan:
    """A committed int8 scan copy of a dense matrix (codes ``[n, width]``, meta ``[n, 2]``)."""

    # bfloat16 keeps 8 significant bits: round to nearest is within 2**-8 relative
    _UNIT = 2.0**-8

    def __init__(self, codes: npt.NDArray[np.int8], meta: npt.NDArray[np.float32]) -> None:
        self.meta = meta
        self.codes = codes
        self.width = codes.shape[1]
        self.max_residual = float(meta[:, 1].max(initial=0.0))
        self._tensors: tuple[Any, Any] | None = None  # torch loads on the first search

    def available(self) -> bool:
        """Whether torch has the int8-weight kernel (an older torch scans the stored rows)."""
        return _int8_kernel()

    def _torch(self) -> tuple[Any, Any]:
        if self._tensors is None:
            import torch

            with warnings.catch_warnings():
                # the memory map is read-only and torch warns about that; the kernel reads it
                warnings.simplefilter("ignore", UserWarning)
                codes = torch.from_numpy(self.codes)
            scales = torch.from_numpy(np.ascontiguousarray(self.meta[:, 0])).to(torch.bfloat16)
            self._tensors = (codes, scales)
        return self._tensors

    def approx(self, q: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Approximate scores of every row: int8 rows times the bfloat16-rounded query."""
        import torch

        if len(self.meta) == 0:
            return np.zeros(0, np.float32)
        padded = np.zeros((1, self.width), dtype=np.float32)
        padded[0, : q.shape[0]] = q
        tq = torch.from_numpy(padded).to(torch.bfloat16)
        codes, scales = self._torch()
        out = torch.ops.aten._weight_int8pack_mm(tq, codes, scales)
        approx: npt.NDArray[np.float32] = out.reshape(-1).float().numpy()
        return approx

    def error_bound(self, q: npt.NDArray[np.float32], max_norm: float) -> tuple[float, float]:
        """``(base, c)`` with ``|approx - exact| <= base + c |approx|`` for every row.

        ``base = |q| r + (|q - bf16(q)| + 2**-12 |q|) (|d| + r)``: the quantisation residual
        by Cauchy-Schwarz (``r`` the largest residual norm, ``|d|`` the largest row norm),
        the query's actual bfloat16 rounding error, and float32 accumulation with room to
        spare; ``c = 1.01 * 2**-8`` covers rounding the result to bfloat16.
        """
        import torch

        q64 = q.astype(np.float64)
        rounded = torch.from_numpy(q.copy()).to(torch.bfloat16).double().numpy()
        qn = float(np.linalg.norm(q64))
        dn = float(np.linalg.norm(q64 - rounded))
        r = self.max_residual
        # the recorded norm is of the vectors as given; float16 storage may round it up
        rows = max_norm * (1 + 2.0**-10) + r
        return qn * r + (dn + 2.0**-12 * qn) * rows, 1.01 * self._UNIT

    def threshold(
        self, q: npt.NDArray[np.float32], top: npt.NDArray[np.float32], max_norm: float
    ) -> float:
        """The approximate score a row needs to possibly belong to the exact top ``k``.

        ``top`` are the approximate scores of the approximate top ``k``. With the
        `error_bound` ``(base, c)``, the ``k``-th exact score is at least
        ``T = min(top - base - c |top|)``, so a row with ``approx + base + c |approx| < T``
        cannot be in the top ``k``; the returned value solves the equality for ``approx``
        (the left side increases with ``approx``).
        """
        base, c = self.error_bound(q, max_norm)
        t64 = top.astype(np.float64)
        t = float(np.min(t64 - base - c * np.abs(t64))) - base
        solved = t / (1 + c) if t >= 0 else t / (1 - c)
        return solved - abs(solved) * 1e-9 - 1e-30


class DenseStore:
    """Dense vectors, ``[n, dim]`` float32 or float16, with an optional int8 scan copy.

    The scan copy (``scan="int8"``) holds every row quantised symmetrically to int8 with one
    scale per row (a bfloat16-representable value, so the scan kernel applies it exactly) and
    the Euclidean norm of the row's quantisation residual. It halves the bytes an exact search
    reads from a float16 matrix; the residual norms bound the error, so the result stays exact.
    """

    def __init__(self, folder: Path, dim: int, dtype: str, *, scan: str | None = None) -> None:
        if scan not in (None, "int8"):
            msg = f"dense_scan must be 'int8' or None, got {scan!r}"
            raise ValueError(msg)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.column = Column(folder / f"dense.{self.dtype.name}", self.dtype, dim)
        self.scan = scan
        self.scan_column = (
            Column(folder / "dense.scan.int8", np.int8, scan_width(dim)) if scan else None
        )
        # per row: the scale and the residual norm ||row - scale * int8_row||
        self.scan_meta = Column(folder / "dense.scan.meta", np.float32, 2) if scan else None

    def columns(self) -> list[Column]:
        """Every column with one row per document."""
        return [c for c in (self.column, self.scan_column, self.scan_meta) if c is not None]

    def append(self, vecs: npt.NDArray[np.float32]) -> None:
        """Append vectors (cast to the store dtype), and their scan rows."""
        stored = np.asarray(vecs, dtype=np.float32).astype(self.dtype)
        self.column.append(stored)
        if self.scan_column is not None and self.scan_meta is not None:
            quantised, meta = quantise_rows(stored, scan_width(self.dim))
            self.scan_column.append(quantised)
            self.scan_meta.append(meta)

    def matrix(self, rows: int) -> npt.NDArray[Any]:
        """The committed matrix (memory-mapped)."""
        return self.column.read(rows)

    def scan_view(self, rows: int) -> DenseScan | None:
        """The committed int8 scan copy, ready for `search`, or None without one."""
        if self.scan_column is None or self.scan_meta is None:
            return None
        return DenseScan(self.scan_column.read(rows), self.scan_meta.read(rows))

    @staticmethod
    def search(
        matrix: npt.NDArray[Any],
        query: npt.NDArray[np.float32],
        k: int,
        mask: npt.NDArray[np.bool_] | None,
        max_norm: float,
        scan: DenseScan | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Exact top-``k`` inner products among the rows where ``mask`` holds (None: all).

        With an int8 scan copy, the int8 rows are scanned (torch's int8-weight kernel,
        bfloat16 query) and every row whose approximate score is within a proven error bound
        of the ``k``-th is rescored from the stored matrix. Otherwise float32 matrices are
        scanned with BLAS directly and float16 matrices with torch's native half-precision
        matrix-vector product (with the same bounded rescoring). Either way the result is the
        exact top-``k`` of the stored vectors.
        """
        q = np.asarray(query, dtype=np.float32)
        use_scan = scan is not None and len(scan.meta) == matrix.shape[0] and scan.available()
        if use_scan:
            assert scan is not None  # noqa: S101 - checked above
            approx = scan.approx(q)
        elif matrix.dtype == np.float32 or not _half_fits(q, max_norm):
            scores = DenseStore.scores(matrix, q)
            if mask is not None and not mask.all():
                scores[~mask] = -np.inf
            keys = topk(scores, k)
            return keys, scores[keys]
        else:
            approx = DenseStore._half_scores(matrix, q)
        if mask is not None and not mask.all():  # building ~mask costs ms at 1M rows
            approx[~mask] = -np.inf
        top = top_values(approx, k)  # only the values matter here, not which rows
        if len(top) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if use_scan:
            assert scan is not None  # noqa: S101
            threshold = scan.threshold(q, top, max_norm)
        else:
            # |approx - exact| <= |q| |d| 2**-8: half rounding of q (2**-11 relative), of the
            # result (2**-11 relative) and accumulation, with a wide safety factor; a row can
            # only be in the top k if approx >= approx[kth] - 2 * bound
            bound = float(np.linalg.norm(q)) * max_norm * 2.0**-8
            threshold = float(top.min()) - 2 * bound
        candidates = np.flatnonzero(approx >= threshold)  # finite: masked rows are -inf
        exact = DenseStore.scores_for(matrix, q, candidates)
        order = np.lexsort((candidates, -exact))[:k]
        return candidates[order].astype(np.int64), exact[order]

    @staticmethod
    def _half_scores(
        matrix: npt.NDArray[Any], q: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
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
        rows = np.asarray(gather_rows(matrix, keys), dtype=np.float32)
        return _matvec(rows, np.asarray(query, dtype=np.float32))


COLBERT_DTYPES = ("float16", "float32", "bfloat16", "int8")
"""Storage forms of ColBERT vectors (``bfloat16`` is kept as raw 16-bit patterns)."""


class ColbertStore:
    """ColBERT token matrices of every document: float16/float32/bfloat16, or int8 + scale."""

    def __init__(self, folder: Path, dim: int, dtype: str) -> None:
        if dtype not in COLBERT_DTYPES:
            msg = f"colbert_dtype must be one of {list(COLBERT_DTYPES)}, got {dtype!r}"
            raise ValueError(msg)
        self.dim = dim
        self.dtype = dtype
        # numpy has no bfloat16: its bit patterns are stored as int16 and viewed by torch
        stored = np.dtype(np.int16) if dtype == "bfloat16" else np.dtype(dtype)
        self.vectors = Column(folder / f"colbert.{dtype}", stored, dim)
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
        if self.dtype == "bfloat16":
            import torch

            bits = torch.from_numpy(flat).to(torch.bfloat16).view(torch.int16).numpy()
            return bits, None, offsets
        scale = np.abs(flat).max(axis=1) / 127.0 if len(flat) else np.zeros(0, np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8)
        return q, scale, offsets

    def append(self, mats: Sequence[npt.NDArray[np.float32]], start: int) -> int:
        """Append documents' matrices; returns the number of token rows written.

        Documents are encoded ``_COLBERT_APPEND`` at a time: encoding a whole commit at once
        held three or four float32 copies of all its token vectors (2 GB for 10k passages of
        16 x 1024).
        """
        written = 0
        for first in range(0, len(mats), _COLBERT_APPEND):
            vectors, scales, offsets = self.encode(
                mats[first : first + _COLBERT_APPEND], start + written
            )
            self.vectors.append(vectors)
            if self.scales is not None and scales is not None:
                self.scales.append(scales)
            self.offsets.append(offsets)
            written += len(vectors)
        return written

    def maxsim(
        self,
        query: npt.NDArray[np.float32],
        keys: npt.NDArray[np.int64],
        *,
        token_rows: int,
        docs: int,
        precision: str = "float32",
    ) -> npt.NDArray[np.float32]:
        """ColBERT MaxSim of ``query`` [t_q, d] against the documents ``keys``.

        The candidates' token rows are gathered with torch (``index_select`` into a reused
        per-thread buffer: fresh 40 MB allocations cost more in page faults than the work),
        widened a block of rows at a time, multiplied by the query and reduced per document.

        ``precision="float32"`` widens the stored rows exactly and multiplies in float32
        (the reference computation on the stored values). ``"bfloat16"`` rounds the query and
        the rows to bfloat16 and keeps bfloat16 similarities (each within ``3 * 2**-8 |q| |d|``
        of float32, 0.012 for unit vectors; several times faster on CPUs with bfloat16 dot
        products).
        """
        import torch

        if precision not in ("float32", "bfloat16"):
            msg = f"precision must be 'float32' or 'bfloat16', got {precision!r}"
            raise ValueError(msg)
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
        rows = torch.from_numpy(np.repeat(starts - seg, lens) + np.arange(total))
        with warnings.catch_warnings():
            # the memory map is read-only and torch warns about that; it is only read
            warnings.simplefilter("ignore", UserWarning)
            vectors = torch.from_numpy(self.vectors.read(token_rows))
            if self.dtype == "bfloat16":
                vectors = vectors.view(torch.bfloat16)
            scales = (
                torch.from_numpy(self.scales.read(token_rows)) if self.scales is not None else None
            )
        compute = torch.bfloat16 if precision == "bfloat16" else torch.float32
        tq = torch.from_numpy(q.copy()).to(compute)
        sims = torch.empty((q.shape[0], total), dtype=compute)  # [t_q, rows]
        block = maxsim_block_rows(self.dim)
        for begin in range(0, total, block):
            end = min(total, begin + block)
            picked = _buffer("gather", vectors.dtype, end - begin, self.dim)
            torch.index_select(vectors, 0, rows[begin:end], out=picked)
            if vectors.dtype == compute:
                wide = picked
            elif vectors.dtype == torch.float16 and compute == torch.bfloat16:
                # torch converts float16 -> bfloat16 element by element; via float32 both
                # conversions are vectorised and it is twice as fast (and exact)
                wide32 = _buffer("wide", torch.float32, end - begin, self.dim)
                wide32.copy_(picked)
                wide = _buffer("narrow", compute, end - begin, self.dim)
                wide.copy_(wide32)
            else:
                wide = _buffer("wide", compute, end - begin, self.dim)
                wide.copy_(picked)
            if scales is not None:
                wide.mul_(scales[rows[begin:end]].to(compute)[:, None])
            # [t_q, d] x [d, rows]: the orientation oneDNN's bfloat16 kernel is fastest in
            sims[:, begin:end] = torch.mm(tq, wide.T)
        best = np.maximum.reduceat(sims.float().numpy(), seg, axis=1)  # [t_q, docs]
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
            if self.dtype == "bfloat16":
                raw = np.asarray(vectors[start : start + length]).view(np.uint16)
                block = (raw.astype(np.uint32) << 16).view(np.float32)
            else:
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
        # a dense lookup table of the query's weights (0 elsewhere) beats a sorted search; it
        # spans the candidates' ids only (a query id past them matches nothing, and sizing the
        # table by it would allocate up to 8 GB)
        size = int(d_ids.max()) + 1
        inside = q_ids < size
        table = np.zeros(size, dtype=np.float32)
        table[q_ids[inside]] = q_w[inside]
        # weights are finite float32s, so a score past float32 (a weight of 1e38 in a query
        # and a document) is +inf, its float32 value, not a warning
        with np.errstate(over="ignore"):
            contrib = table[d_ids] * d_w
            return np.bincount(owner, weights=contrib, minlength=n).astype(np.float32)
