"""One encoder pass for a LlamaIndex ingestion: what `M3Embedding` computed, `M3VectorStore` reuses.

``VectorStoreIndex`` embeds nodes with its embed model, then hands them to the vector store. An
`M3Embedding` on a local encoder computes every head of the encoder in its pass (the heads are
small layers on the same hidden states, so they cost little) and keeps the rows here, keyed by
the encoder and the exact text it embedded; `M3VectorStore.add` takes them from here instead of
running the model again. The cache is bounded in bytes (the oldest rows go first); a miss only
costs a second pass, never a different result.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from m3rag import M3Output

__all__ = ["recall", "remember"]

MAX_BYTES = 256 * 2**20
_LOCK = threading.Lock()
_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[str, tuple[M3Output, int]]] = (
    weakref.WeakKeyDictionary()
)


def _size(row: M3Output) -> int:
    size = 0 if row.dense_vecs is None else row.dense_vecs.nbytes
    if row.colbert_vecs is not None:
        size += sum(m.nbytes for m in row.colbert_vecs)
    if row.lexical_weights is not None:
        size += 16 * sum(len(w) for w in row.lexical_weights)
    return size


def remember(encoder: Any, texts: Sequence[str], output: M3Output) -> None:
    """Keep each text's row of ``output`` (one encoder pass over ``texts``)."""
    with _LOCK:
        rows = _CACHE.setdefault(encoder, OrderedDict())
        for i, text in enumerate(texts):
            row = output[i]
            rows[text] = (row, _size(row))
            rows.move_to_end(text)
        total = sum(size for _, size in rows.values())
        while rows and total > MAX_BYTES:
            _, (_, size) = rows.popitem(last=False)
            total -= size


def recall(encoder: Any, texts: Sequence[str], heads: Sequence[str]) -> M3Output | None:
    """The rows of ``texts`` with every one of ``heads``, if all are kept; else ``None``."""
    with _LOCK:
        rows = _CACHE.get(encoder)
        if rows is None or not texts:
            return None
        found = [rows.get(t) for t in texts]
    if any(f is None or not set(heads) <= set(f[0].heads) for f in found):
        return None
    return M3Output.concat([f[0] for f in found if f is not None])
