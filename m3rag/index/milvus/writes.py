"""Staged writes of a MilvusStore: input checks, the rows sent at commit."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.errors import DuplicateIdError, EmbeddingMismatchError, InvalidDocumentError
from m3rag.index.collection import (
    _finite32,
    _metadata_json,
    _token_problem,
    _utf8,
    _weight_problem,
    content_hash,
)
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
from m3rag.types import Document, Head, M3Output

__all__ = ["Put", "check_embeddings", "main_row", "prepare", "send"]

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
    texts, doc_ids, metas = _normalise(texts_or_documents, ids, metadata)
    final = [i if i is not None else uuid.uuid4().hex for i in doc_ids]
    dupes = sorted(i for i, n in Counter(final).items() if n > 1)
    if dupes:
        msg = f"ids repeat within one call: {dupes[:10]}"
        raise DuplicateIdError(msg)
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
    meta_json = [_metadata_json(j, m) for j, m in enumerate(metas)]
    return texts, final, meta_json


def check_embeddings(
    embeddings: M3Output,
    ids: Sequence[str],
    *,
    heads: Sequence[Head],
    dim: int | None,
    colbert_dim: int | None,
    vocab_size: int,
) -> M3Output:
    """``embeddings`` of the documents ``ids``, checked against the store's heads and sizes.

    Raises:
        EmbeddingMismatchError: Count, heads, sizes or values do not fit.
    """
    n = len(ids)
    if not isinstance(embeddings, M3Output):
        msg = f"embeddings must be an M3Output, got {type(embeddings).__name__}"
        raise TypeError(msg)
    if len(embeddings) != n:
        msg = f"embeddings hold {len(embeddings)} texts for {n} documents"
        raise EmbeddingMismatchError(msg)
    missing = [h for h in heads if h not in embeddings.heads]
    if missing:
        msg = f"embeddings lack the heads {missing} this store holds ({list(heads)})"
        raise EmbeddingMismatchError(msg)

    def bad(i: int, head: str, problem: str) -> EmbeddingMismatchError:
        return EmbeddingMismatchError(
            f"embeddings of document {i} (id {ids[i]!r}), {head} head: {problem}; "
            "nothing was staged"
        )

    if "dense" in heads and embeddings.dense_vecs is not None:
        if embeddings.dim != dim:
            msg = f"dense vectors have {embeddings.dim} dimensions, the store {dim}"
            raise EmbeddingMismatchError(msg)
        rows = ~_finite32(embeddings.dense_vecs).all(axis=1)
        if rows.any():
            raise bad(int(np.flatnonzero(rows)[0]), "dense", "NaN or infinity (as float32)")
    if "colbert" in heads and embeddings.colbert_vecs is not None:
        for i, m in enumerate(embeddings.colbert_vecs):
            if not isinstance(m, np.ndarray) or m.ndim != 2 or m.shape[1] != colbert_dim:
                shape = getattr(m, "shape", None)
                raise bad(i, "colbert", f"shape {shape}, expected [t, {colbert_dim}]")
            if not _finite32(m).all():
                raise bad(i, "colbert", "NaN or infinity (as float32)")
    if "sparse" in heads and embeddings.lexical_weights is not None:
        for i, d in enumerate(embeddings.lexical_weights):
            if not isinstance(d, Mapping):
                raise bad(i, "sparse", f"a {type(d).__name__}, expected a dict")
            for token, weight in d.items():
                problem = _token_problem(token, vocab_size) or _weight_problem(weight)
                if problem:
                    raise bad(i, "sparse", problem)
    return embeddings


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


def _normalise(
    texts_or_documents: Any,
    ids: Sequence[str] | None,
    metadata: Any,
) -> tuple[list[str], list[str | None], list[Mapping[str, Any]]]:
    """Texts, ids and metadata of a write, validated as `Collection.add` validates them."""
    if isinstance(texts_or_documents, (str, Document)):
        items: list[Any] = [texts_or_documents]
    elif isinstance(texts_or_documents, Iterable) and not isinstance(
        texts_or_documents, (bytes, Mapping)
    ):
        items = list(texts_or_documents)
    else:
        msg = (
            "texts_or_documents must be a string, a Document, or a list of them, "
            f"got {type(texts_or_documents).__name__}"
        )
        raise TypeError(msg)
    n = len(items)
    if ids is not None and (isinstance(ids, str) or len(ids) != n):
        got = 1 if isinstance(ids, str) else len(ids)
        msg = f"ids must be a list with one id per document ({n}), got {got}"
        raise ValueError(msg)
    if metadata is None:
        metas: list[Any] = [None] * n
    elif isinstance(metadata, Mapping):
        metas = [metadata] * n
    else:
        metas = list(metadata)
        if len(metas) != n:
            msg = f"metadata must have one entry per document ({n}), got {len(metas)}"
            raise ValueError(msg)
    for i, entry in enumerate(metas):
        if entry is not None and not isinstance(entry, Mapping):
            msg = f"metadata[{i}] must be a dict (or None), got {type(entry).__name__}"
            raise TypeError(msg)
    texts: list[str] = []
    out_ids: list[str | None] = []
    out_meta: list[Mapping[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            text, doc_id, meta = item.text, item.id, dict(item.metadata)
            if ids is not None and ids[i] is not None:
                doc_id = ids[i]
            if metas[i] is not None:
                meta = {**meta, **dict(metas[i])}
        elif isinstance(item, str):
            text = item
            doc_id = ids[i] if ids is not None else None
            meta = dict(metas[i] or {})
        else:
            msg = (
                f"texts_or_documents[{i}] must be a string or a Document, got {type(item).__name__}"
            )
            raise TypeError(msg)
        if not isinstance(text, str) or not text.strip():
            msg = f"document {i} has empty text; empty documents cannot be indexed"
            raise InvalidDocumentError(msg)
        if not _utf8(text):
            msg = f"document {i} has text that is not valid Unicode (a lone surrogate)"
            raise InvalidDocumentError(msg)
        if doc_id is not None and (not isinstance(doc_id, str) or not doc_id):
            msg = f"ids[{i}] must be a non-empty string, got {doc_id!r}"
            raise TypeError(msg)
        if doc_id is not None and not _utf8(doc_id):
            msg = f"ids[{i}] = {doc_id!r} is not valid Unicode (a lone surrogate)"
            raise InvalidDocumentError(msg)
        texts.append(text)
        out_ids.append(doc_id)
        out_meta.append(meta)
    return texts, out_ids, out_meta
