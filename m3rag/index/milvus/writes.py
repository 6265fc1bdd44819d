"""Staged writes of a MilvusStore: input checks, the rows sent at commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.errors import InvalidDocumentError
from m3rag.index.collection import content_hash
from m3rag.index.milvus._limits import (
    EMPTY_TOKEN,
    EMPTY_WEIGHT,
    FETCH,
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
)
from m3rag.index.milvus._server import Caller
from m3rag.index.milvus.colbert import ColbertSide
from m3rag.index.milvus_expr import ids_expr, type_tags
from m3rag.index.validation import assign_ids, metadata_json, normalise
from m3rag.types import Head

__all__ = ["Put", "main_row", "prepare", "send"]

_UPSERT = 256  # documents per upsert


@dataclass
class Put:
    """A staged document: what ``commit`` upserts."""

    text: str
    meta: dict[str, Any]
    meta_json: str
    dense: npt.NDArray[np.float32] | None
    sparse: dict[int, float] | None
    colbert: npt.NDArray[np.float32] | None


def prepare(
    texts_or_documents: Any, ids: Sequence[str] | None, metadata: Any
) -> tuple[list[str], list[str], list[str]]:
    """Texts, ids (generated where missing) and metadata JSON of a write, all checked.

    Raises:
        TypeError, ValueError: Malformed arguments.
        DuplicateIdError: An id repeats within the call.
        InvalidDocumentError: Empty text, text over 65,535 UTF-8 bytes, an id over 512, metadata
            JSON cannot hold.
    """
    texts, doc_ids, metas = normalise(texts_or_documents, ids, metadata)
    final = assign_ids(doc_ids)
    for j, (text, doc_id) in enumerate(zip(texts, final, strict=True)):
        if len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
            msg = f"ids[{j}] is longer than Milvus's {MAX_ID_BYTES} bytes; use a shorter id"
            raise InvalidDocumentError(msg)
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            msg = (
                f"document {j} (id {doc_id!r}) has more than {MAX_TEXT_BYTES} UTF-8 bytes, "
                "Milvus's largest VARCHAR; chunk it (m3rag.Chunker)"
            )
            raise InvalidDocumentError(msg)
    meta_json = [metadata_json(j, m) for j, m in enumerate(metas)]
    return texts, final, meta_json


def send(
    client: Any,
    call: Caller,
    name: str,
    side: ColbertSide | None,
    heads: Sequence[Head],
    puts: list[tuple[str, Put]],
    dels: list[str],
) -> None:
    """Write staged documents and deletions to collection ``name`` (and its side), then flush.

    Per batch the ColBERT chunks go first, then the main rows (whose ``ntok`` says how many
    chunks to read), then the chunks past a shorter version are deleted, so a reader never
    meets a main row whose chunks are missing.
    """
    for start in range(0, len(puts), _UPSERT):
        batch = puts[start : start + _UPSERT]
        trim = side.write([(i, p.colbert) for i, p in batch]) if side is not None else {}
        rows = [main_row(i, p, heads) for i, p in batch]
        call("upsert", lambda r=rows: client.upsert(name, r))  # type: ignore[misc]
        if side is not None:
            side.trim(trim)
    for start in range(0, len(dels), FETCH):
        chunk = dels[start : start + FETCH]
        call("delete", lambda c=chunk: client.delete(name, filter=ids_expr(c)))  # type: ignore[misc]
        if side is not None:
            side.delete(chunk)
    call("flush", lambda: client.flush(name))
    if side is not None:
        side.flush()


def main_row(doc_id: str, put: Put, heads: Sequence[Head]) -> dict[str, Any]:
    """The main collection's row of a staged document."""
    row: dict[str, Any] = {
        "id": doc_id,
        "text": put.text,
        "meta": put.meta,
        "mtypes": type_tags(put.meta),
        "hash": content_hash(put.text, put.meta_json),
        "ntok": 0 if put.colbert is None else len(put.colbert),
    }
    if "dense" in heads:
        row["dense"] = np.asarray(put.dense, dtype=np.float32).tolist()
    if "sparse" in heads:
        weights = {int(t): float(w) for t, w in (put.sparse or {}).items() if float(w) > 0}
        row["sparse"] = weights or {EMPTY_TOKEN: EMPTY_WEIGHT}
    return row
