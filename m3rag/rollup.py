"""Chunks and their parents: the chunk metadata contract, and the roll-up that reads it.

A long document is indexed as chunks ([`Chunker`][m3rag.Chunker]); each chunk is a document of its
own whose metadata says where it came from. `chunk_metadata` writes that metadata --
`m3rag.index_files`, the command line and the framework adapters all index through it --
and `roll_up` reads it back to rank parent documents by their chunks.

The contract, one key per fact:

========================  ==========================================================
``parent_id``             the parent document's id (``chunk.id`` is ``"{parent_id}#{n}"``)
``chunk``                 the chunk's position in its parent, from 0
``start``, ``end``        character offsets of the chunk in the parent's text
``doc_sha256``            hash of the parent's text and metadata (resume, replace)
``page_start``,           the first and last page (1-based) the chunk covers, for
``page_end``              documents read page by page (PDF)
``headings``              the heading path above the chunk's start (Markdown, HTML)
========================  ==========================================================

A parent document read from a PDF carries ``page_offsets`` (where each page starts in its text);
`chunk_metadata` turns them into each chunk's pages and leaves them out of the chunk.

The parent's own metadata (``source``, ``title``, ``lang``, ...) is copied into every chunk, so
filters on it apply to chunks.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from m3rag.results import Hit

if TYPE_CHECKING:
    from m3rag.chunking import Chunk

__all__ = [
    "CHUNK_FIELDS",
    "CHUNK_INDEX",
    "CONTENT_SHA",
    "END",
    "HEADINGS",
    "PAGE_END",
    "PAGE_OFFSETS",
    "PAGE_START",
    "PARENT_ID",
    "START",
    "Rollup",
    "chunk_metadata",
    "citation",
    "heading_path",
    "merge_neighbours",
    "roll_up",
]

PARENT_ID = "parent_id"
CHUNK_INDEX = "chunk"
START = "start"
END = "end"
CONTENT_SHA = "doc_sha256"
PAGE_START = "page_start"
PAGE_END = "page_end"
HEADINGS = "headings"
PAGE_OFFSETS = "page_offsets"
CHUNK_FIELDS = (PARENT_ID, CHUNK_INDEX, START, END, CONTENT_SHA, PAGE_START, PAGE_END, HEADINGS)
"""The metadata keys a chunk carries besides its parent's own metadata."""

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)

Rollup = Literal["max", "max_mean"]


def heading_path(text: str, offset: int) -> list[str]:
    """The Markdown heading path (``["Guide", "Setup"]``) in force at ``offset`` of ``text``.

    HTML documents are read with their ``<h1>``-``<h6>`` as Markdown headings, so this covers
    them too.
    """
    path: list[tuple[int, str]] = []
    for match in _HEADING.finditer(text, 0, offset + 1):
        if match.start() > offset:
            break
        level = len(match.group(1))
        path = [(lvl, title) for lvl, title in path if lvl < level]
        path.append((level, match.group(2).strip()))
    return [title for _, title in path]


def chunk_metadata(
    chunk: Chunk,
    parent_id: str,
    parent_metadata: Mapping[str, Any],
    *,
    sha256: str,
    parent_text: str | None = None,
) -> dict[str, Any]:
    """A chunk's metadata: its parent's, plus the fields of `CHUNK_FIELDS`.

    Args:
        chunk: The chunk (from [`Chunker`][m3rag.Chunker]).
        parent_id: The parent document's id.
        parent_metadata: The parent document's metadata, copied into the chunk's (but its
            ``page_offsets``, which become the chunk's ``page_start``/``page_end``).
        sha256: The parent's content hash (`m3rag.ingest.document_sha256`).
        parent_text: The parent's text, for the heading path (omitted without it).

    Raises:
        ValueError: The parent's ``page_offsets`` are not a sorted list of non-negative
            integers.
    """
    offsets = parent_metadata.get(PAGE_OFFSETS)
    if offsets is not None and not _sorted_offsets(offsets):
        shown = repr(offsets)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        msg = (
            f'"{PAGE_OFFSETS}" must be a sorted list of non-negative integers (where each page '
            f"starts in the text), got {shown}"
        )
        raise ValueError(msg)
    meta = {k: v for k, v in parent_metadata.items() if k != PAGE_OFFSETS}
    meta.update(
        {
            PARENT_ID: parent_id,
            CHUNK_INDEX: chunk.index,
            START: chunk.start,
            END: chunk.end,
            CONTENT_SHA: sha256,
        }
    )
    if offsets:
        meta[PAGE_START] = bisect.bisect_right(offsets, chunk.start)
        meta[PAGE_END] = bisect.bisect_right(offsets, max(chunk.start, chunk.end - 1))
    if parent_text is not None:
        path = heading_path(parent_text, chunk.start)
        if path:
            meta[HEADINGS] = path
    return meta


def _sorted_offsets(offsets: object) -> bool:
    """Whether ``offsets`` is a list (or tuple) of non-negative ints in non-decreasing order."""
    if not isinstance(offsets, (list, tuple)):
        return False
    if any(isinstance(o, bool) or not isinstance(o, int) or o < 0 for o in offsets):
        return False
    return all(a <= b for a, b in itertools.pairwise(offsets))


def citation(metadata: Mapping[str, Any], fallback: str) -> str:
    """``"report.pdf p. 12"``, ``"report.pdf pp. 3-4"``, ``"guide.md § Setup > Linux"``."""
    source = metadata.get("source")
    name = PurePath(str(source)).name if source else fallback
    first, last = metadata.get(PAGE_START), metadata.get(PAGE_END)
    if isinstance(first, int) and isinstance(last, int):
        return f"{name} p. {first}" if first == last else f"{name} pp. {first}-{last}"
    headings = metadata.get(HEADINGS)
    if isinstance(headings, list) and headings:
        return f"{name} § {' > '.join(str(h) for h in headings)}"
    return name


def merge_neighbours(chunks: Sequence[tuple[int, int, str]]) -> str:
    """Join consecutive chunks ``(start, end, text)`` of one parent without repeating overlaps.

    Chunks overlap by design; each one adds only what lies past the end of those before it.
    """
    ordered = sorted(chunks)
    if not ordered:
        return ""
    _, end, text = ordered[0]
    parts = [text]
    reached = end
    for a, b, piece in ordered[1:]:
        if b <= reached:
            continue
        skip = max(0, reached - a)
        gap = " " if a > reached else ""
        parts.append(gap + piece[skip:])
        reached = b
    return "".join(parts)


def roll_up(ranked: Sequence[Hit], how: Rollup = "max", *, alpha: float = 0.3) -> list[Hit]:
    """Group chunk hits by parent; each parent scores by its chunks, its best chunk as evidence.

    Args:
        ranked: Chunk hits sorted by fused score, best first.
        how: ``"max"`` (the best chunk's score) or ``"max_mean"`` (plus ``alpha`` times the mean
            of the parent's candidate chunks).
        alpha: The weight of the mean for ``"max_mean"``.

    Returns:
        One hit per parent (``id`` the parent id, ``chunk_id`` the evidence chunk, ``chunks`` how
        many of its chunks were candidates), best first; hits without a parent stand alone.
    """
    groups: dict[str, list[Hit]] = {}
    for hit in ranked:
        groups.setdefault(hit.parent_id or hit.id, []).append(hit)
    parents = []
    for parent, chunk_hits in groups.items():
        best = chunk_hits[0]  # ranked is sorted by fused score
        scores = [h.fused_score for h in chunk_hits]
        score = max(scores)
        if how == "max_mean":
            score += alpha * float(np.mean(scores))
        parents.append(
            Hit(
                id=parent,
                text=best.text,
                metadata=best.metadata,
                score=score,
                fused_score=score,
                rerank_score=None,
                paths=best.paths,
                parent_id=best.parent_id,
                chunk_id=best.id,
                chunks=len(chunk_hits),
                key=best.key,
            )
        )
    parents.sort(key=lambda h: (-h.fused_score, h.key))
    return parents
