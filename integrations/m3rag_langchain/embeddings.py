"""Dense BGE-M3 embeddings for any LangChain vector store."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from m3rag import M3Encoder

__all__ = ["M3Embeddings"]


class M3Embeddings(BaseModel, Embeddings):
    """LangChain ``Embeddings`` over :class:`m3rag.M3Encoder`'s dense head.

    Example:
        ```python
        from m3rag_langchain import M3Embeddings
        embeddings = M3Embeddings(model_name_or_path="BAAI/bge-m3")
        vector = embeddings.embed_query("What is BGE M3?")
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model_name_or_path: str = "BAAI/bge-m3"
    """Hub id or local folder of the checkpoint."""
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for :class:`m3rag.M3Encoder` (``device``, ``dtype``, ...)."""
    encoder: M3Encoder | None = Field(default=None, exclude=True)
    """An already loaded encoder to share (its model is used instead of loading another)."""

    _encoder: M3Encoder | None = PrivateAttr(default=None)

    def _get_encoder(self) -> M3Encoder:
        if self.encoder is not None:
            return self.encoder
        if self._encoder is None:
            self._encoder = M3Encoder(self.model_name_or_path, **self.encoder_kwargs)
        return self._encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Dense vectors of passages (truncated at the encoder's ``passage_max_length``)."""
        out = self._get_encoder().encode_corpus(texts, dense=True, sparse=False, colbert=False)
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        return out.dense_vecs.tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        """Dense vector of a query (truncated at the encoder's ``query_max_length``)."""
        out = self._get_encoder().encode_queries([text], dense=True, sparse=False, colbert=False)
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        return out.dense_vecs[0].tolist()  # type: ignore[no-any-return]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_query, text)
