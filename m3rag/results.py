"""Explainable search results: every hit carries its per-path raw score, normalised score and rank.

Like Vespa's match-features: a hit says why it is where it is. ``SearchResults`` is a sequence of
[`Hit`][] (iterate, index, slice, unpack) with ``ids`` / ``scores`` shortcuts and a readable
table as its ``str``. [`Hits`][m3rag.Hits] is what one path's search returns: ids, scores and
the store's keys, before fusion.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, overload

import numpy as np
import numpy.typing as npt

__all__ = ["Hit", "Hits", "PathScore", "SearchResults"]


@dataclass(frozen=True)
class PathScore:
    """One path's view of a hit.

    Attributes:
        raw: The path's own score (inner product, lexical matching score, MaxSim, BM25).
        normalized: The score after the fusion's normalisation (equal to ``raw`` for ``none``).
        rank: 1-based rank of the hit among the candidates on this path (ties share a rank).
        recalled: Whether this path's own top-k recall brought the candidate in.
    """

    raw: float
    normalized: float
    rank: int
    recalled: bool = False


@dataclass(frozen=True)
class Hit:
    """One retrieved document (or chunk), with the scores that placed it.

    Attributes:
        id: Document id (the chunk's id when chunks are returned).
        text: The text (the best chunk's text when rolled up to a parent document).
        metadata: The document's metadata.
        score: The final score: the reranker's when a reranker ran, else the fused score.
        fused_score: The fusion's score.
        rerank_score: The cross-encoder's score, if a reranker ran on this hit.
        paths: Per path, its `PathScore`.
        parent_id: The parent document of a chunk (from ``metadata["parent_id"]``), if any.
        chunk_id: The evidence chunk's id when hits are rolled up to parent documents.
        chunks: How many of the parent's chunks were candidates (roll-up only).
        spans: ``(start, end)`` of every query term in ``text`` (see `m3rag.highlight`).
        context: With ``expand=n``: the evidence with its ``n`` neighbouring chunks on each
            side, joined without repeating their overlaps (small-to-big retrieval); else
            ``None``.
    """

    id: str
    text: str
    metadata: Mapping[str, Any]
    score: float
    fused_score: float
    rerank_score: float | None
    paths: Mapping[str, PathScore]
    parent_id: str | None = None
    chunk_id: str | None = None
    chunks: int = 1
    key: int = field(default=-1, repr=False, compare=False)
    spans: tuple[tuple[int, int], ...] = field(default=(), repr=False)
    context: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("metadata", "paths"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    @property
    def start(self) -> int | None:
        """Character offset of the evidence in its source document (chunks), else ``None``."""
        value = self.metadata.get("start")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def end(self) -> int | None:
        """Character offset one past the evidence's end in its source document, else ``None``."""
        value = self.metadata.get("end")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def citation(self) -> str:
        """Where the evidence is, for a person: ``"report.pdf p. 12"``, ``"guide.md § Setup"``.

        The source's file name (else the document id), then the pages of a PDF chunk or the
        heading path of a Markdown/HTML chunk, when the chunk metadata has them.
        """
        from m3rag.rollup import citation

        return citation(self.metadata, self.parent_id or self.id)

    def explain(self) -> str:
        """One line per path: raw score, normalised score, rank."""
        lines = [f"{self.id}: score {self.score:.4f} (fused {self.fused_score:.4f})"]
        if self.rerank_score is not None:
            lines.append(f"  rerank   {self.rerank_score:+.4f}")
        for path, ps in self.paths.items():
            star = "*" if ps.recalled else " "
            lines.append(
                f" {star}{path:<8} raw {ps.raw:.4f}  norm {ps.normalized:.4f}  rank {ps.rank}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class SearchResults(Sequence[Hit]):
    """The hits of one query, best first.

    Attributes:
        query: The query text.
        hits: The hits.
        paths: The paths that scored the candidates, in display order.
        candidates: How many candidates recall produced.
    """

    query: str
    hits: tuple[Hit, ...]
    paths: tuple[str, ...] = ()
    candidates: int = 0

    def __len__(self) -> int:
        return len(self.hits)

    @overload
    def __getitem__(self, index: int) -> Hit: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Hit]: ...
    def __getitem__(self, index: int | slice) -> Hit | Sequence[Hit]:
        return self.hits[index]

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    @property
    def ids(self) -> list[str]:
        """Hit ids, best first."""
        return [h.id for h in self.hits]

    @property
    def scores(self) -> list[float]:
        """Final scores, best first."""
        return [h.score for h in self.hits]

    def to_table(self, *, width: int = 48) -> str:
        """A plain-text table: rank, id, score, per-path raw score (rank), text snippet."""
        head = ["#", "id", "score", *self.paths, "text"]
        rows = []
        for i, h in enumerate(self.hits, 1):
            cells = [str(i), h.id, f"{h.score:.4f}"]
            for p in self.paths:
                ps = h.paths.get(p)
                cells.append("-" if ps is None else f"{ps.raw:.3f} ({ps.rank})")
            snippet = " ".join(h.text.split())
            cells.append(snippet[: width - 1] + "…" if len(snippet) > width else snippet)
            rows.append(cells)
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

        out = [f"query: {self.query!r} ({self.candidates} candidates)", line(head)]
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(r) for r in rows)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_table()


@dataclass(frozen=True)
class Hits:
    """Search results of one path, best first.

    Attributes:
        ids: Document ids.
        scores: float32 scores.
        keys: Internal document keys (rows of the stores), for rescoring.
    """

    ids: list[str]
    scores: npt.NDArray[np.float32]
    keys: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(zip(self.ids, self.scores.tolist(), strict=True))
