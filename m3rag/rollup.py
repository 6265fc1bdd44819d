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
========================  ==========================================================

The parent's own metadata (``source``, ``title``, ``lang``, ...) is copied into every chunk, so
filters on it apply to chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    "PARENT_ID",
    "START",
    "Rollup",
    "chunk_metadata",
    "roll_up",
]

PARENT_ID = "parent_id"
CHUNK_INDEX = "chunk"
START = "start"
END = "end"
CONTENT_SHA = "doc_sha256"
CHUNK_FIELDS = (PARENT_ID, CHUNK_INDEX, START, END, CONTENT_SHA)
"""The metadata keys a chunk carries besides its parent's own metadata."""

Rollup = Literal["max", "max_mean"]


def chunk_metadata(
    chunk: Chunk, parent_id: str, parent_metadata: Mapping[str, Any], *, sha256: str
) -> dict[str, Any]:
    """A chunk's metadata: its parent's, plus the fields of `CHUNK_FIELDS`.

    Args:
        chunk: The chunk (from [`Chunker`][m3rag.Chunker]).
        parent_id: The parent document's id.
        parent_metadata: The parent document's metadata, copied into the chunk's.
        sha256: The parent's content hash (`m3rag.ingest.document_sha256`).
    """
    return {
        **parent_metadata,
        PARENT_ID: parent_id,
        CHUNK_INDEX: chunk.index,
        START: chunk.start,
        END: chunk.end,
        CONTENT_SHA: sha256,
    }


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
