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

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HeadImpacts"]

MIN_DOCS = 50_000
"""Below this many documents tantivy alone is fast enough and no table is built."""
HEAD_FRACTION = 1 / 64
"""A token is in the head when at least this share of the documents holds it."""
MAX_TOKENS = 256
"""At most this many head tokens (the most frequent), so the table stays ``256 n`` bytes."""
TAIL_DEPTH = 1024
"""How many tail candidates tantivy returns first (deepened 4x while the bound needs it)."""
RESCORE_CAP = 16_384
"""Rescore up to this many documents exactly before deepening the tail list instead."""
_CHUNK = 131_072


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
        self.lock = threading.Lock()

    def __contains__(self, token: object) -> bool:
        return token in self._row

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def choose(
        cls,
        ids: npt.NDArray[np.int32],
        weights: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        docs: int,
    ) -> HeadImpacts | None:
        """The head of the first ``docs`` documents' weights, filled; None if it has no head."""
        if docs < MIN_DOCS:
            return None
        end = _entries_end(offsets, docs)
        counts = np.zeros(0, dtype=np.int64)
        peaks = np.zeros(0, dtype=np.float64)
        for start in range(0, end, _CHUNK * 64):
            chunk = np.asarray(ids[start : min(end, start + _CHUNK * 64)], dtype=np.int64)
            w = np.asarray(weights[start : start + len(chunk)], dtype=np.float64)
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

    def extend(
        self,
        ids: npt.NDArray[np.int32],
        weights: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        docs: int,
    ) -> bool:
        """Fill the table for documents ``[self.docs, docs)``.

        Returns False (the table unchanged) when a new weight exceeds a token's range, so
        the caller chooses a new head.
        """
        if docs <= self.docs:
            return True
        begin = int(offsets[self.docs, 0]) if self.docs < len(offsets) else 0
        end = _entries_end(offsets, docs)
        lut = np.full(int(self.tokens.max()) + 1, -1, dtype=np.int32)
        lut[self.tokens] = np.arange(len(self.tokens), dtype=np.int32)
        new = np.zeros((len(self.tokens), docs - self.docs), dtype=np.uint8)
        lengths = np.asarray(offsets[self.docs : docs, 1], dtype=np.int64)
        owner_all = np.repeat(np.arange(docs - self.docs, dtype=np.int32), lengths)
        for start in range(begin, end, _CHUNK * 64):
            stop = min(end, start + _CHUNK * 64)
            chunk = np.asarray(ids[start:stop], dtype=np.int64)
            inside = chunk < len(lut)
            rows = np.full(len(chunk), -1, dtype=np.int32)
            rows[inside] = lut[chunk[inside]]
            hit = np.flatnonzero(rows >= 0)
            if hit.size == 0:
                continue
            w = np.asarray(weights[start:stop], dtype=np.float64)[hit]
            row = rows[hit]
            code = np.rint(w / self.scales[row])
            if (code > 255).any():
                return False
            new[row, owner_all[start - begin + hit]] = code.astype(np.uint8)
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


def _entries_end(offsets: npt.NDArray[np.int64], docs: int) -> int:
    if docs == 0:
        return 0
    last = offsets[docs - 1]
    return int(last[0] + last[1])


def head_of(query: Mapping[int, float], table: Any) -> tuple[dict[int, float], dict[int, float]]:
    """Split query weights into the head (in ``table``) and the tail."""
    head = {t: w for t, w in query.items() if t in table}
    tail = {t: w for t, w in query.items() if t not in table}
    return head, tail
