"""BGE-M3 lexical weights as a langchain-qdrant sparse embedding (``pip install langchain-qdrant``).

``QdrantVectorStore(..., embedding=M3Embeddings(...), sparse_embedding=M3QdrantSparseEmbeddings(
...), retrieval_mode=RetrievalMode.HYBRID)`` takes it as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from langchain_qdrant import SparseEmbeddings, SparseVector
except ImportError as exc:  # pragma: no cover - exercised without the package installed
    msg = "m3rag_langchain.qdrant needs langchain-qdrant: pip install langchain-qdrant"
    raise ImportError(msg) from exc

from m3rag_langchain.embeddings import M3SparseEmbeddings
from m3rag_langchain.milvus import shared_sparse

if TYPE_CHECKING:
    from m3rag import M3Encoder

__all__ = ["M3QdrantSparseEmbeddings"]


class M3QdrantSparseEmbeddings(SparseEmbeddings):
    """BGE-M3 lexical weights as a langchain-qdrant ``SparseEmbeddings``.

    Args:
        sparse: The [`M3SparseEmbeddings`][m3rag_langchain.M3SparseEmbeddings] to use; else one
            is built from ``encoder`` (share it with the dense embeddings) or ``**kwargs``.
        encoder: An [`M3Encoder`][m3rag.M3Encoder].
        **kwargs: [`M3SparseEmbeddings`][m3rag_langchain.M3SparseEmbeddings] options.
    """

    def __init__(
        self,
        sparse: M3SparseEmbeddings | None = None,
        *,
        encoder: M3Encoder | None = None,
        **kwargs: Any,
    ) -> None:
        self.sparse = shared_sparse(sparse, encoder, kwargs)

    def embed_query(self, text: str) -> SparseVector:
        """The query's weights as ``SparseVector(indices, values)``."""
        return _vector(self.sparse.embed_query(text))

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        """Each text's weights as ``SparseVector(indices, values)``."""
        return [_vector(w) for w in self.sparse.embed_documents(texts)]


def _vector(weights: dict[int, float]) -> SparseVector:
    return SparseVector(indices=list(weights), values=list(weights.values()))
