"""BGE-M3 lexical weights as a langchain-milvus sparse embedding (``pip install langchain-milvus``).

langchain-milvus recognises a sparse embedding by its base class, so a duck type is not enough:
``Milvus(embedding_function=[M3Embeddings(...), M3MilvusSparseEmbedding(...)])`` takes this one
as it is and builds the sparse field, index and search itself.

langchain-milvus indexes sparse fields with ``drop_ratio_build=0.2`` by default: the smallest
fifth of each document's weights is dropped, so scores are no longer BGE-M3's lexical matching
score, and milvus-lite refuses it outright.
``Milvus(..., **M3MilvusSparseEmbedding.exact_params())``
keeps every weight (the dense field gets FLAT/IP, BGE-M3's vectors being normalised).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
except ImportError as exc:  # pragma: no cover - exercised without the package installed
    msg = "m3rag_langchain.milvus needs langchain-milvus: pip install langchain-milvus"
    raise ImportError(msg) from exc

from m3rag_langchain.embeddings import M3SparseEmbeddings

if TYPE_CHECKING:
    from m3rag import M3Encoder

__all__ = ["M3MilvusSparseEmbedding"]


class M3MilvusSparseEmbedding(BaseSparseEmbedding):
    """BGE-M3 lexical weights as a langchain-milvus ``BaseSparseEmbedding``.

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

    @staticmethod
    def exact_params(dense_index: str = "FLAT") -> dict[str, list[dict[str, Any]]]:
        """``index_params`` and ``search_params`` for ``Milvus(...)`` that drop no weight.

        For ``embedding_function=[dense, sparse]`` in that order.
        """
        return {
            "index_params": [
                {"index_type": dense_index, "metric_type": "IP"},
                {
                    "index_type": "SPARSE_INVERTED_INDEX",
                    "metric_type": "IP",
                    "params": {"drop_ratio_build": 0.0},
                },
            ],
            "search_params": [
                {"metric_type": "IP"},
                {"metric_type": "IP", "params": {"drop_ratio_search": 0.0}},
            ],
        }

    def embed_query(self, query: str) -> dict[int, float]:
        """``{token_id: weight}`` of the query."""
        return self.sparse.embed_query(query)

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """``{token_id: weight}`` per text."""
        return self.sparse.embed_documents(texts)


def shared_sparse(
    sparse: M3SparseEmbeddings | None, encoder: M3Encoder | None, kwargs: dict[str, Any]
) -> M3SparseEmbeddings:
    """The given sparse embeddings, or new ones on ``encoder`` / ``kwargs``."""
    if sparse is None:
        return M3SparseEmbeddings(encoder=encoder, **kwargs)
    if not isinstance(sparse, M3SparseEmbeddings):
        msg = f"sparse must be M3SparseEmbeddings, got {type(sparse).__name__}"
        raise TypeError(msg)
    return sparse
