"""LangChain components for m3rag (install with ``pip install "m3rag[langchain]"``)."""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    msg = 'm3rag_langchain requires LangChain: pip install "m3rag[langchain]"'
    raise ImportError(msg) from exc

from m3rag_langchain.document_compressors import M3Reranker
from m3rag_langchain.embeddings import M3Embeddings, M3SparseEmbeddings
from m3rag_langchain.retrievers import M3Retriever
from m3rag_langchain.vectorstores import M3VectorStore

__all__ = ["M3Embeddings", "M3SparseEmbeddings", "M3Retriever", "M3Reranker", "M3VectorStore"]
