"""Exact top-``k`` by the BGE-M3 lexical matching score, over tantivy and the impact table.

tantivy ranks documents by their *quantised* lexical score (the bit-plane query of
`m3rag.index.lexical`); the exact score comes from the full-precision weights in the lexical
store. `search` widens tantivy's candidate list until the quantisation error bound proves that
no document outside it can reach the exact top ``k``. On large collections the few tokens most
documents hold (the *head*) are scored from an in-memory impact table instead (`HeadImpacts`,
kept per collection by `ImpactCache`), and tantivy only walks the short posting lists of the
rest (`search_split`).

Everything here reads one snapshot (`LexicalView`) and returns ``(keys, scores)``, best first;
the collection checks the query and turns them into `Hits`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.index import impacts
from m3rag.index.filters import Filter
from m3rag.index.impacts import HeadImpacts, head_of
from m3rag.index.lexical import LexicalIndex
from m3rag.index.stores import LexicalStore, topk

__all__ = ["RESTRICT_MAX", "ImpactCache", "LexicalView", "restriction", "search", "search_split"]

RESTRICT_MAX = 50_000
"""A filter allowing at most this many documents restricts tantivy's query to their keys."""

Result = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]


def _empty() -> Result:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)


@dataclass(frozen=True)
class LexicalView:
    """What the lexical search reads of one snapshot of a collection.

    Attributes:
        tantivy: The collection's tantivy index.
        searcher: The snapshot's tantivy searcher.
        store: The full-precision lexical weights.
        entries: Committed entries of the lexical store.
        docs: Committed keys (``next_key``).
        max_bit: The highest bit plane any document weight sets.
        max_error: The largest quantisation error of any document weight.
    """

    tantivy: LexicalIndex
    searcher: Any
    store: LexicalStore
    entries: int
    docs: int
    max_bit: int
    max_error: float

    def exact(
        self, weights: Mapping[int, float], keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Exact lexical scores of ``weights`` for the documents ``keys``."""
        return self.store.scores(weights, keys, entries=self.entries, docs=self.docs)


def restriction(mask: npt.NDArray[np.bool_], flt: Filter | None) -> npt.NDArray[np.int64] | None:
    """Keys to restrict a tantivy query to, when a filter is selective enough."""
    if flt is None:
        return None
    allowed = np.flatnonzero(mask)
    return allowed if len(allowed) <= RESTRICT_MAX else None


def search(
    view: LexicalView,
    weights: dict[int, float],
    k: int,
    mask: npt.NDArray[np.bool_],
    restrict: npt.NDArray[np.int64] | None,
    table: HeadImpacts | None,
) -> Result:
    """Exact top-``k`` of the positive query ``weights`` among the documents ``mask`` allows.

    Candidates come from the bit-plane query, best quantised score first, and are rescored
    with the full-precision weights. The candidate set widens until the ``k``-th exact score
    beats the last candidate's quantised score plus the quantisation error bound
    ``sum(q) * max_error`` (so no document outside can enter), or until every matching
    document has been seen. With an impact table holding some of the query's tokens,
    `search_split` instead.
    """
    if table is not None:
        head, tail = head_of(weights, table)
        if head:
            return search_split(view, table, weights, head, tail, k, mask, restrict)
    tquery = view.tantivy.lexical_query(weights, max_bit=view.max_bit)
    bound = sum(weights.values()) * view.max_error * (1 + 1e-4) + 1e-6
    limit = max(4 * k, 64)
    while True:
        keys, approx = view.tantivy.search(view.searcher, tquery, limit, restrict)
        exhausted = len(keys) < limit
        visible = keys[(keys < len(mask))]
        visible = visible[mask[visible]]
        exact = view.exact(weights, visible)
        order = np.lexsort((visible, -exact))[:k]
        if exhausted:
            break
        if len(order) == k and exact[order[-1]] > float(approx[-1]) + bound:
            break
        limit *= 4
    return visible[order], exact[order]


def search_split(
    view: LexicalView,
    table: HeadImpacts,
    weights: dict[int, float],
    head: dict[int, float],
    tail: dict[int, float],
    k: int,
    mask: npt.NDArray[np.bool_],
    restrict: npt.NDArray[np.int64] | None,
) -> Result:
    """Exact lexical top-``k`` with the head tokens scored from the impact table.

    Every document gets an approximate head score from the table; tantivy returns the
    ``depth`` documents with the best approximate tail score (tail tokens only), so every
    other document's tail score is at most the last of them (``tail_last``; zero once
    tantivy has returned every match). The best ``k`` by the combined approximation are
    rescored exactly; the ``k``-th of those, ``L``, is a lower bound of the true ``k``-th.
    A document can only be in the top ``k`` if its upper bound, approximate head (+ tail
    if listed, else ``tail_last``) + the quantisation bounds of both, reaches ``L``: all
    of those are rescored exactly. If there are too many, the tail list deepens.
    """
    n = len(mask)
    approx_head, head_error = table.scores(head, n)
    if not mask.all():
        approx_head[~mask] = -np.inf
    tail_query = view.tantivy.lexical_query(tail, max_bit=view.max_bit) if tail else None
    margin = (head_error + sum(tail.values()) * view.max_error) * (1 + 1e-4) + 1e-6
    depth = impacts.tail_depth(n, k)
    while True:
        tail_keys = np.zeros(0, np.int64)
        tail_approx = np.zeros(0, np.float32)
        tail_last = 0.0
        if tail_query is not None:
            tail_keys, tail_approx = view.tantivy.search(view.searcher, tail_query, depth, restrict)
            if len(tail_keys) == depth:
                tail_last = float(tail_approx[-1])
            listed = tail_keys < n
            tail_keys, tail_approx = tail_keys[listed], tail_approx[listed]
            listed = mask[tail_keys]
            tail_keys, tail_approx = tail_keys[listed], tail_approx[listed]
        combined = approx_head.copy()
        combined[tail_keys] += tail_approx
        first = topk(combined, k)
        if len(first) == 0:
            return _empty()
        exact = view.exact(weights, first)
        lower = float(np.sort(exact)[-k]) if len(first) == k else -np.inf
        # upper bounds: unlisted documents may still hold up to tail_last of tail score
        combined[tail_keys] -= tail_last
        need = np.flatnonzero(combined + (tail_last + margin) >= lower)
        need = need[mask[need]]
        if len(need) <= max(64 * k, impacts.RESCORE_CAP) or tail_last == 0.0:
            break
        depth *= 4
    exact = view.exact(weights, need)
    # only documents sharing a token with the query are results
    matched = exact > 0
    need, exact = need[matched], exact[matched]
    order = np.lexsort((need, -exact))[:k]
    return need[order], exact[order]


class ImpactCache:
    """A collection's impact table of the head tokens, built or extended to each snapshot.

    Shared by the snapshots of one collection handle: a commit extends the table with the
    documents it added instead of building it again, and a new head is chosen once the
    collection has doubled (the frequent tokens may have changed) or shrunk.
    """

    def __init__(self) -> None:
        self._table: HeadImpacts | None = None
        self._docs = -1  # the snapshot size the table was made for
        self._lock = threading.Lock()

    def table(self, store: LexicalStore, n: int) -> HeadImpacts | None:
        """The table for a snapshot of ``n`` committed keys (``None``: no head worth one)."""
        if self._docs == n:
            return self._table
        with self._lock:
            table = self._table
            if self._docs == n:
                return table
            # the columns themselves: the table reads them a chunk at a time, unmapped
            ids, lweights, offsets = store.ids, store.weights, store.offsets
            if (
                table is None
                or table.docs < n // 2
                or n < table.docs
                or not table.extend(ids, lweights, offsets, n)
            ):
                table = HeadImpacts.choose(ids, lweights, offsets, n)
            self._table = table
            self._docs = n  # also when there is no head: not chosen again until n moves
            return table
