"""An in-memory impact table of the most frequent lexical tokens, for exact top-k at scale.

In a BGE-M3 collection a handful of tokens occur in a large share of the passages. Their
posting lists dominate the cost of a lexical query in tantivy (at a million passages, the eight
commonest tokens of a query hold about nine in ten of its postings), and their contribution
cannot simply be skipped: their weights are as large as anyone's. This table keeps, for the
``head`` tokens (those in at least ``1/64`` of the documents, at most 256 of them), one byte per
document: the token's weight quantised to 255 steps of ``max_weight / 255``. A query's head
part is then a few vectorised passes over ``n`` bytes per token, and tantivy is left with the
short posting lists of the rest.

The table is derived from the full-precision lexical store, never persisted, built on the first
lexical query of a large enough collection and extended as commits add documents, so it needs no
durability of its own. Its error is bounded (``|w - code * scale| <= scale / 2`` per token), and
the collection rescores candidates exactly and proves nothing outside them can enter the top
``k`` (see ``Collection.search_lexical``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.index._files import read_rows

__all__ = ["HeadImpacts"]

MIN_DOCS = 50_000
"""Below this many documents tantivy alone is fast enough and no table is built."""
HEAD_FRACTION = 1 / 64
"""A token is in the head when at least this share of the documents holds it."""
MAX_TOKENS = 256
"""At most this many head tokens (the most frequent), so the table stays ``256 n`` bytes."""
TAIL_DEPTH = 1024
"""The least number of tail candidates tantivy returns first (deepened 4x while the bound
needs it); see `tail_depth`."""
MAX_TAIL_DEPTH = 4096
"""The most tail candidates asked for first: a collection of ``256 * 4096`` documents or more."""
RESCORE_CAP = 4096
"""Rescore up to this many documents exactly before deepening the tail list instead.

At 1M passages, deepening the list from 1024 to 4096 (about 1.5 ms more in tantivy) cut the
documents that the bound could not rule out from 5-15k to 1-3k, and the exact top-100 from
17.7 to 12.4 ms p50."""

_CHUNK = 32_768  # documents per read: ~2M entries, ~60 MB of temporaries


def tail_depth(docs: int, k: int) -> int:
    """How many tail candidates to ask tantivy for first.

    One per 256 documents, between `TAIL_DEPTH` and `MAX_TAIL_DEPTH`, and at
    least ``16 k``.
    """
    return max(16 * k, min(MAX_TAIL_DEPTH, max(TAIL_DEPTH, docs // 256)))


class HeadImpacts:
    """One quantised weight per (head token, document); see the module docstring.

    Args:
        tokens: The head token ids, sorted.
        scales: Per head token, the quantisation step (``max weight / 255``).
    """

    def __init__(self, tokens: npt.NDArray[np.int64], scales: npt.NDArray[np.float64]) -> None:
        self.tokens = tokens
        self.scales = scales
        self._row = {int(t): i for i, t in enumerate(tokens.tolist())}
        self._codes = np.zeros((len(tokens), 0), dtype=np.uint8)
        self.docs = 0

    def __contains__(self, token: object) -> bool:
        return token in self._row

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def choose(cls, ids: Any, weights: Any, offsets: Any, docs: int) -> HeadImpacts | None:
        """The head of the first ``docs`` documents' weights, filled; None if it has no head.

        ``ids`` and ``weights`` are the lexical store's columns (or arrays) of all entries,
        ``offsets`` its ``(start, length)`` per document; they are read a chunk of documents
        at a time, so the pass needs little memory beyond the table itself.
        """
        if docs < MIN_DOCS:
            return None
        counts = np.zeros(0, dtype=np.int64)
        peaks = np.zeros(0, dtype=np.float64)
        for chunk, w, _ in _chunks(ids, weights, offsets, 0, docs):
            size = int(chunk.max(initial=-1)) + 1
            if size > len(counts):
                counts = np.pad(counts, (0, size - len(counts)))
                peaks = np.pad(peaks, (0, size - len(peaks)))
            # each token occurs at most once per document, so entries count documents
            found = np.bincount(chunk)
            counts[: len(found)] += found
            np.maximum.at(peaks, chunk, w)
        eligible = np.flatnonzero(counts >= docs * HEAD_FRACTION)
        if eligible.size == 0:
            return None
        top = eligible[np.argsort(-counts[eligible], kind="stable")[:MAX_TOKENS]]
        tokens = np.sort(top).astype(np.int64)
        table = cls(tokens, np.maximum(peaks[tokens], np.finfo(np.float32).tiny) / 255.0)
        if not table.extend(ids, weights, offsets, docs):  # pragma: no cover - peaks fit
            return None
        return table

    def extend(self, ids: Any, weights: Any, offsets: Any, docs: int) -> bool:
        """Fill the table for documents ``[self.docs, docs)``.

        Returns False (the table unchanged) when a new weight exceeds a token's range, so
        the caller chooses a new head.
        """
        if docs <= self.docs:
            return True
        lut = np.full(int(self.tokens.max()) + 1, -1, dtype=np.int32)
        lut[self.tokens] = np.arange(len(self.tokens), dtype=np.int32)
        new = np.zeros((len(self.tokens), docs - self.docs), dtype=np.uint8)
        for chunk, w, owner in _chunks(ids, weights, offsets, self.docs, docs):
            rows = np.full(len(chunk), -1, dtype=np.int32)
            inside = chunk < len(lut)
            rows[inside] = lut[chunk[inside]]
            hit = np.flatnonzero(rows >= 0)
            if hit.size == 0:
                continue
            row = rows[hit]
            code = np.rint(w[hit] / self.scales[row])
            if (code > 255).any():
                return False
            new[row, owner[hit] - self.docs] = code.astype(np.uint8)
        if self.docs == 0:
            self._codes = new
        else:
            self._codes = np.concatenate([self._codes[:, : self.docs], new], axis=1)
        self.docs = docs
        return True

    def scores(
        self, query: Mapping[int, float], docs: int
    ) -> tuple[npt.NDArray[np.float32], float]:
        """Approximate head scores of documents ``[0, docs)`` and their error bound.

        ``|approx - sum_head q_t w_t| <= sum_head q_t scale_t / 2``, plus the float32
        rounding of the sum (at most ``len(query) * 2**-23`` of the largest possible score).
        """
        import torch

        out = torch.zeros(docs, dtype=torch.float32)
        error, peak = 0.0, 0.0
        codes = torch.from_numpy(self._codes)
        for token, weight in query.items():
            row = self._row[int(token)]
            step = float(weight) * float(self.scales[row])
            out.add_(codes[row, :docs], alpha=step)
            error += step / 2
            peak += step * 255
        result: npt.NDArray[np.float32] = out.numpy()
        return result, error + len(query) * 2.0**-23 * peak


def _chunks(
    ids: Any, weights: Any, offsets: Any, first: int, last: int
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]]:
    """``(token ids, weights, owning documents)`` of documents ``[first, last)``, in chunks."""
    for begin in range(first, last, _CHUNK):
        end = min(last, begin + _CHUNK)
        spans = np.asarray(read_rows(offsets, begin, end), dtype=np.int64)
        lengths = spans[:, 1]
        start = int(spans[0, 0])
        stop = start + int(lengths.sum())
        if stop == start:
            continue
        chunk = np.asarray(read_rows(ids, start, stop), dtype=np.int64)
        w = np.asarray(read_rows(weights, start, stop), dtype=np.float64)
        owner = np.repeat(np.arange(begin, end, dtype=np.int64), lengths)
        yield chunk, w, owner


def head_of(
    query: Mapping[int, float], table: HeadImpacts
) -> tuple[dict[int, float], dict[int, float]]:
    """Split query weights into the head (in ``table``) and the tail."""
    head = {t: w for t, w in query.items() if t in table}
    tail = {t: w for t, w in query.items() if t not in table}
    return head, tail
