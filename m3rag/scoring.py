"""Scoring functions on encoded outputs, with FlagEmbedding's semantics (numpy only, no torch).

* dense: inner product of L2-normalised vectors (= cosine);
* lexical: ``sum over shared token ids of q_weight * d_weight`` -- never normalised (by design,
  FlagEmbedding issue #552);
* ColBERT: ``(1 / N_q) * sum_i max_j <q_i, d_j>`` over the query's rows (``</s>`` included).

The pairwise functions reproduce the reference bit for bit in fp32 (the lexical sum runs
sequentially in float32 in the query's key order, as ``compute_lexical_matching_score`` does). The
``*_scores`` functions score one query against many documents at once and are what the retriever
uses; they agree with the pairwise ones to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "colbert_score",
    "colbert_scores",
    "dense_scores",
    "lexical_matching_score",
    "lexical_scores",
]

FloatArray = npt.NDArray[np.float32]


def dense_scores(query_vecs: npt.ArrayLike, doc_vecs: npt.ArrayLike) -> FloatArray:
    """Inner products: ``[d]`` x ``[n, d]`` -> ``[n]``, or ``[m, d]`` x ``[n, d]`` -> ``[m, n]``."""
    q = np.asarray(query_vecs, dtype=np.float32)
    d = np.asarray(doc_vecs, dtype=np.float32)
    return np.asarray(q @ d.T, dtype=np.float32)


def lexical_matching_score(
    query_weights: Mapping[int, float], doc_weights: Mapping[int, float]
) -> float:
    """The BGE-M3 lexical matching score of two weight dicts.

    Sums ``query_weights[t] * doc_weights[t]`` over shared keys, in the query's key order, in
    float32 -- the accumulation FlagEmbedding's ``compute_lexical_matching_score`` performs on its
    float32 weights, so the result is bit-identical.

    Returns:
        The score (0.0 when no token is shared).
    """
    total = np.float32(0.0)
    for token, weight in query_weights.items():
        other = doc_weights.get(token)
        if other is not None:
            total = np.float32(total + np.float32(weight) * np.float32(other))
    return float(total)


def lexical_scores(
    query_weights: Mapping[int, float], docs_weights: Sequence[Mapping[int, float]]
) -> FloatArray:
    """Lexical matching scores of one query against many documents, vectorised.

    Args:
        query_weights: ``{token_id: weight}`` of the query.
        docs_weights: One ``{token_id: weight}`` per document.

    Returns:
        float32 ``[len(docs_weights)]``.
    """
    n = len(docs_weights)
    if n == 0 or not query_weights:
        return np.zeros(n, dtype=np.float32)
    q_ids = np.fromiter(query_weights.keys(), dtype=np.int64, count=len(query_weights))
    q_w = np.fromiter(query_weights.values(), dtype=np.float32, count=len(query_weights))
    sort = np.argsort(q_ids)
    q_ids, q_w = q_ids[sort], q_w[sort]
    sizes = np.fromiter((len(d) for d in docs_weights), dtype=np.int64, count=n)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(n, dtype=np.float32)
    d_ids = np.fromiter((k for d in docs_weights for k in d), dtype=np.int64, count=total)
    d_w = np.fromiter((v for d in docs_weights for v in d.values()), dtype=np.float32, count=total)
    owner = np.repeat(np.arange(n), sizes)
    pos = np.searchsorted(q_ids, d_ids)
    pos = np.minimum(pos, len(q_ids) - 1)
    hit = q_ids[pos] == d_ids
    contrib = q_w[pos[hit]] * d_w[hit]
    return np.bincount(owner[hit], weights=contrib, minlength=n).astype(np.float32)


def colbert_score(query_vecs: npt.ArrayLike, doc_vecs: npt.ArrayLike) -> float:
    """ColBERT MaxSim of one pair: mean over query rows of the best inner product with the doc.

    Args:
        query_vecs: float32 ``[t_q, d]``.
        doc_vecs: float32 ``[t_d, d]``.

    Returns:
        The score (0.0 for an empty query or document).
    """
    q = np.asarray(query_vecs, dtype=np.float32)
    d = np.asarray(doc_vecs, dtype=np.float32)
    if q.shape[0] == 0 or d.shape[0] == 0:
        return 0.0
    best = (q @ d.T).max(axis=1)
    return float(np.float32(best.sum(dtype=np.float32) / np.float32(q.shape[0])))


def colbert_scores(query_vecs: npt.ArrayLike, docs_vecs: Sequence[npt.ArrayLike]) -> FloatArray:
    """ColBERT MaxSim of one query against many documents, vectorised.

    All documents are concatenated into one ``[T, d]`` matrix, multiplied once by the query, and
    the per-document maxima taken with ``np.maximum.reduceat`` over the row offsets.

    Args:
        query_vecs: float32 ``[t_q, d]``.
        docs_vecs: One float32 ``[t_i, d]`` matrix per document.

    Returns:
        float32 ``[len(docs_vecs)]``; 0.0 for empty documents.
    """
    q = np.asarray(query_vecs, dtype=np.float32)
    n = len(docs_vecs)
    out = np.zeros(n, dtype=np.float32)
    if n == 0 or q.shape[0] == 0:
        return out
    mats = [np.asarray(m, dtype=np.float32) for m in docs_vecs]
    sizes = np.array([m.shape[0] for m in mats], dtype=np.int64)
    nonempty = np.flatnonzero(sizes > 0)
    if nonempty.size == 0:
        return out
    stacked = np.concatenate([mats[i] for i in nonempty], axis=0)
    sims = q @ stacked.T  # [t_q, T]
    offsets = np.concatenate(([0], np.cumsum(sizes[nonempty])[:-1]))
    best = np.maximum.reduceat(sims, offsets, axis=1)  # [t_q, n_nonempty]
    out[nonempty] = best.sum(axis=0, dtype=np.float32) / np.float32(q.shape[0])
    return out
