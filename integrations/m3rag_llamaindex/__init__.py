"""LlamaIndex components for m3rag (install with ``pip install "m3rag[llamaindex]"``)."""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    msg = 'm3rag_llamaindex requires LlamaIndex: pip install "m3rag[llamaindex]"'
    raise ImportError(msg) from exc

from m3rag_llamaindex.embeddings import M3Embedding, M3SparseEmbedding
from m3rag_llamaindex.postprocessors import M3Reranker
from m3rag_llamaindex.retrievers import M3Retriever, to_m3rag_filter
from m3rag_llamaindex.vector_stores import M3VectorStore

__all__ = [
    "M3Embedding",
    "M3SparseEmbedding",
    "M3Retriever",
    "M3Reranker",
    "M3VectorStore",
    "to_m3rag_filter",
]
