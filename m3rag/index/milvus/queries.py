"""Query checks and row decoding of a MilvusStore's reads (no server calls)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.index.collection import _token_problem, _weight_problem
from m3rag.index.milvus._limits import EMPTY_TOKEN

__all__ = ["check_field", "colbert_query", "dense_query", "lexical_of", "lexical_query"]


def dense_query(query: npt.ArrayLike, dim: int | None) -> npt.NDArray[np.float32]:
    """A dense query vector, checked: ``dim`` finite float32 values."""
    try:
        with np.errstate(all="ignore"):
            q = np.asarray(query, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        msg = f"the dense query must be a vector of {dim} floats: {exc}"
        raise ValueError(msg) from exc
    if q.shape[0] != dim:
        msg = f"query vector has {q.shape[0]} dimensions, the store {dim}"
        raise ValueError(msg)
    if not np.isfinite(q).all():
        msg = "the dense query vector contains NaN or infinity (as float32); pass finite values"
        raise ValueError(msg)
    return q


def lexical_query(query: Mapping[int, float], vocab_size: int) -> dict[int, float]:
    """A lexical query, checked: token ids below ``vocab_size``, finite weights."""
    if not isinstance(query, Mapping):
        msg = f"the lexical query must be a dict of token id -> weight, got {query!r:.80}"
        raise TypeError(msg)
    out: dict[int, float] = {}
    for token, weight in query.items():
        problem = _token_problem(token, vocab_size) or _weight_problem(weight)
        if problem:
            msg = f"the lexical query is invalid: {problem}"
            raise ValueError(msg)
        out[int(token)] = float(weight)
    return out


def colbert_query(query: npt.ArrayLike, colbert_dim: int | None) -> npt.NDArray[np.float32]:
    """A ColBERT query matrix, checked: ``[t, colbert_dim]`` finite float32 values."""
    try:
        with np.errstate(all="ignore"):
            q = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        msg = f"the ColBERT query must be a [t, {colbert_dim}] array: {exc}"
        raise ValueError(msg) from exc
    if q.ndim != 2 or q.shape[1] != colbert_dim:
        msg = f"the ColBERT query has shape {q.shape}, expected [t, {colbert_dim}]"
        raise ValueError(msg)
    if not np.isfinite(q).all():
        msg = "the ColBERT query contains NaN or infinity (as float32); pass finite values"
        raise ValueError(msg)
    return q


def lexical_of(row: Mapping[str, Any] | None) -> dict[int, float]:
    """The lexical weights of a fetched row (the empty-vector stand-in removed)."""
    if row is None:
        return {}
    sparse = row.get("sparse") or {}
    return {int(t): float(w) for t, w in sparse.items() if int(t) != EMPTY_TOKEN}


def check_field(field: object) -> None:
    """Refuse a metadata field name that is not a non-empty string."""
    if not isinstance(field, str) or not field:
        msg = f"field must be a non-empty string, got {field!r}"
        raise TypeError(msg)
