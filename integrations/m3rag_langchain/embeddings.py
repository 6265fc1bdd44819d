"""Dense BGE-M3 embeddings for any LangChain vector store."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from m3rag import M3Encoder
from m3rag.serve.client import RemoteEncoder
from m3rag_langchain._remote import Remote, remote_client
from m3rag_langchain._validation import check_text, check_texts

__all__ = ["M3Embeddings", "M3SparseEmbeddings"]


class _EncoderModel(BaseModel):
    """The encoder settings both LangChain embedding classes share; the model loads lazily."""

    # hide_input_in_errors: a ValidationError would otherwise print the arguments, api_key too
    model_config = ConfigDict(
        arbitrary_types_allowed=True,
        extra="forbid",
        protected_namespaces=(),
        hide_input_in_errors=True,
    )

    model_name_or_path: str = "BAAI/bge-m3"
    """Hub id or local folder of the checkpoint."""
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for [`m3rag.M3Encoder`][] (``device``, ``dtype``, ...)."""
    encoder: M3Encoder | None = Field(default=None, exclude=True)
    """An already loaded encoder to share (its model is used instead of loading another)."""
    base_url: str | None = None
    """An ``m3rag serve`` server to encode on (e.g. ``"http://127.0.0.1:8000"``) instead of a
    local model; the results are the same."""
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """The server's API key, held as a ``SecretStr`` and never shown in a repr or an error
    (default: the ``M3RAG_API_KEY`` environment variable)."""

    # each kept with the fields it was built from: a model_copy(update=...) builds its own
    _remote: Remote[RemoteEncoder] | None = PrivateAttr(default=None)
    _local: tuple[tuple[str, dict[str, Any]], M3Encoder] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> _EncoderModel:
        if self.base_url is not None:
            self._get_encoder()  # a bad base_url or key fails here (no request is sent)
        return self

    def _get_encoder(self) -> M3Encoder | RemoteEncoder:
        if self.base_url is not None:
            if self.encoder is not None or self.encoder_kwargs:
                msg = "give encoder=/encoder_kwargs= (in-process) or base_url= (a server), not both"
                raise ValueError(msg)
            self._remote = remote_client(self._remote, RemoteEncoder, self.base_url, self.api_key)
            return self._remote[1]
        if self.encoder is not None:
            return self.encoder
        fields = (self.model_name_or_path, dict(self.encoder_kwargs))
        if self._local is None or self._local[0] != fields:  # loaded at the first use
            self._local = (fields, M3Encoder(self.model_name_or_path, **self.encoder_kwargs))
        return self._local[1]


class M3Embeddings(_EncoderModel, Embeddings):
    """LangChain ``Embeddings`` over [`m3rag.M3Encoder`][m3rag.M3Encoder]'s dense head.

    Example:
        ```python
        from m3rag_langchain import M3Embeddings
        embeddings = M3Embeddings(model_name_or_path="BAAI/bge-m3")
        vector = embeddings.embed_query("What is BGE M3?")
        remote = M3Embeddings(base_url="http://127.0.0.1:8000")  # an `m3rag serve` server
        ```
    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Dense vectors of passages (truncated at the encoder's ``passage_max_length``)."""
        items = check_texts(texts)
        out = self._get_encoder().encode_corpus(items, dense=True, sparse=False, colbert=False)
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        return out.dense_vecs.tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        """Dense vector of a query (truncated at the encoder's ``query_max_length``)."""
        query = check_text(text, "text")
        out = self._get_encoder().encode_queries([query], dense=True, sparse=False, colbert=False)
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        return out.dense_vecs[0].tolist()  # type: ignore[no-any-return]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like [`embed_documents`][], in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Like [`embed_query`][], in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_query, text)


class M3SparseEmbeddings(_EncoderModel):
    """BGE-M3 lexical weights as ``dict[int, float]`` -- the sparse shape langchain-milvus uses.

    Pass it as the sparse embedding of LangChain's Milvus hybrid store (``BaseSparseEmbedding``
    duck type: ``embed_query`` / ``embed_documents`` returning ``{token_id: weight}``), or convert
    with [`to_qdrant`][] for Qdrant's ``SparseVector(indices, values)``.

    Example:
        ```python
        sparse = M3SparseEmbeddings(model_name_or_path="BAAI/bge-m3")
        sparse.embed_query("What is BGE M3?")   # {token_id: weight, ...}
        ```
    """

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Lexical weights of passages."""
        items = check_texts(texts)
        out = self._get_encoder().encode_corpus(items, dense=False, sparse=True, colbert=False)
        assert out.lexical_weights is not None  # noqa: S101 - sparse was requested
        return [dict(d) for d in out.lexical_weights]

    def embed_query(self, text: str) -> dict[int, float]:
        """Lexical weights of a query."""
        query = check_text(text, "text")
        out = self._get_encoder().encode_queries([query], dense=False, sparse=True, colbert=False)
        assert out.lexical_weights is not None  # noqa: S101 - sparse was requested
        return dict(out.lexical_weights[0])

    async def aembed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Like [`embed_documents`][], in a worker thread."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> dict[int, float]:
        """Like [`embed_query`][], in a worker thread."""
        return await asyncio.to_thread(self.embed_query, text)

    def as_milvus(self) -> Any:
        """This embedding as an `m3rag_langchain.milvus.M3MilvusSparseEmbedding`.

        Kept for existing code; construct that class (or `m3rag_langchain.qdrant`'s) directly.
        Needs ``pip install langchain-milvus``.
        """
        from m3rag_langchain.milvus import M3MilvusSparseEmbedding

        return M3MilvusSparseEmbedding(sparse=self)

    @staticmethod
    def to_qdrant(weights: dict[int, float]) -> tuple[list[int], list[float]]:
        """``(indices, values)`` for ``qdrant_client.models.SparseVector``."""
        return list(weights.keys()), list(weights.values())
