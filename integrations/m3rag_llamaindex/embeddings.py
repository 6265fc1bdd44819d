"""Dense BGE-M3 embeddings for LlamaIndex, batched for real."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.embeddings import BaseEmbedding

from m3rag import M3Encoder
from m3rag.serve.client import RemoteEncoder
from m3rag_llamaindex._passes import remember
from m3rag_llamaindex._validation import check_text, check_texts, loaded_name

__all__ = ["M3Embedding", "M3SparseEmbedding"]


_DEFAULT_MODEL = "BAAI/bge-m3"


def _encoder(
    model_name: str | None,
    encoder: M3Encoder | None,
    encoder_kwargs: dict[str, Any] | None,
    base_url: str | None,
    api_key: str | None,
) -> tuple[str, M3Encoder | RemoteEncoder]:
    """The model name that identifies the encoder, and the encoder (or a server's client).

    The name is what LlamaIndex hashes for its ``IngestionCache`` (through ``to_dict``), so it
    is the encoder's own ``model_name_or_path``, or the server's URL: two different models never
    share an entry.
    """
    if base_url is not None:
        if encoder is not None or encoder_kwargs:
            msg = "give encoder=/encoder_kwargs= (in-process) or base_url= (a server), not both"
            raise ValueError(msg)
        return model_name or base_url, RemoteEncoder(base_url, api_key=api_key)
    if encoder is not None:
        return loaded_name(model_name, "model_name", encoder, "encoder"), encoder
    name = model_name or _DEFAULT_MODEL
    return name, M3Encoder(name, **(encoder_kwargs or {}))


class M3Embedding(BaseEmbedding):
    """LlamaIndex ``BaseEmbedding`` over [`m3rag.M3Encoder`][m3rag.M3Encoder]'s dense head.

    ``_get_text_embeddings`` encodes a whole batch in one call (LlamaIndex's default loops one
    text at a time), and the async methods run in a worker thread.

    ``model_name`` is the encoder's ``model_name_or_path`` with ``encoder=``, the server's URL with
    ``base_url=`` (unless given), else the checkpoint to load (default ``"BAAI/bge-m3"``):
    LlamaIndex's ``IngestionCache`` tells models apart by it. ``to_dict`` keeps ``base_url``,
    never the API key, so ``from_dict`` gives the same embedding back.

    Example:
        ```python
        from m3rag_llamaindex import M3Embedding
        embed_model = M3Embedding(model_name="BAAI/bge-m3", embed_batch_size=64)
        remote = M3Embedding(base_url="http://127.0.0.1:8000")  # an `m3rag serve` server
        ```
    """

    base_url: str | None = Field(
        default=None, description="The m3rag serve server encoding instead of a local model."
    )

    _encoder: M3Encoder | RemoteEncoder = PrivateAttr()

    def __init__(
        self,
        model_name: str | None = None,
        *,
        encoder: M3Encoder | None = None,
        embed_batch_size: int = 64,
        encoder_kwargs: dict[str, Any] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        name, client = _encoder(model_name, encoder, encoder_kwargs, base_url, api_key)
        super().__init__(  # type: ignore[call-arg]  # base_url: a field of ours
            model_name=name, embed_batch_size=embed_batch_size, base_url=base_url, **kwargs
        )
        self._encoder = client

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this class under."""
        return "M3Embedding"

    def get_text_embedding_batch(
        self,
        texts: list[str],
        show_progress: bool = False,  # noqa: FBT001, FBT002 - LlamaIndex's signature
        **kwargs: Any,
    ) -> list[list[float]]:
        """LlamaIndex's batching, refusing a bare string (it would embed each character)."""
        return super().get_text_embedding_batch(check_texts(texts), show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self,
        texts: list[str],
        show_progress: bool = False,  # noqa: FBT001, FBT002 - LlamaIndex's signature
        **kwargs: Any,
    ) -> list[list[float]]:
        """Like [`get_text_embedding_batch`][], asynchronously."""
        return await super().aget_text_embedding_batch(check_texts(texts), show_progress, **kwargs)

    def _dense(self, texts: list[str], *, query: bool) -> list[list[float]]:
        texts = check_texts(texts)
        if not query and isinstance(self._encoder, M3Encoder):
            # every head in the same pass, kept for M3VectorStore.add (see _passes)
            out = self._encoder.encode_corpus(texts)
            remember(self._encoder, texts, out)
        else:
            encode = self._encoder.encode_queries if query else self._encoder.encode_corpus
            out = encode(texts, dense=True, sparse=False, colbert=False)
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        return out.dense_vecs.tolist()  # type: ignore[no-any-return]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._dense([check_text(query, "query")], query=True)[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._dense([check_text(text, "text")], query=False)[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        # LlamaIndex's default calls the sync method inline, blocking the event loop
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._dense(texts, query=False)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class M3SparseEmbedding(BaseSparseEmbedding):
    """LlamaIndex ``BaseSparseEmbedding``: BGE-M3 lexical weights as ``{token_id: weight}``.

    Batches for real (``_get_text_embeddings`` encodes the whole batch in one call); usable by
    the Milvus and Pinecone vector stores' hybrid modes. ``model_name`` and ``base_url`` as in
    [`M3Embedding`][m3rag_llamaindex.M3Embedding].

    Example:
        ```python
        sparse = M3SparseEmbedding(model_name="BAAI/bge-m3")
        sparse.get_query_embedding("What is BGE M3?")
        ```
    """

    base_url: str | None = Field(
        default=None, description="The m3rag serve server encoding instead of a local model."
    )

    _encoder: M3Encoder | RemoteEncoder = PrivateAttr()

    def __init__(
        self,
        model_name: str | None = None,
        *,
        encoder: M3Encoder | None = None,
        embed_batch_size: int = 64,
        encoder_kwargs: dict[str, Any] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        name, client = _encoder(model_name, encoder, encoder_kwargs, base_url, api_key)
        super().__init__(  # type: ignore[call-arg]  # base_url: a field of ours
            model_name=name, embed_batch_size=embed_batch_size, base_url=base_url, **kwargs
        )
        self._encoder = client

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this class under."""
        return "M3SparseEmbedding"

    def get_text_embedding_batch(
        self,
        texts: list[str],
        show_progress: bool = False,  # noqa: FBT001, FBT002 - LlamaIndex's signature
        **kwargs: Any,
    ) -> list[dict[int, float]]:
        """LlamaIndex's batching, refusing a bare string (it would embed each character)."""
        return super().get_text_embedding_batch(check_texts(texts), show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self,
        texts: list[str],
        show_progress: bool = False,  # noqa: FBT001, FBT002 - LlamaIndex's signature
        **kwargs: Any,
    ) -> list[dict[int, float]]:
        """Like [`get_text_embedding_batch`][], asynchronously."""
        return await super().aget_text_embedding_batch(check_texts(texts), show_progress, **kwargs)

    def _sparse(self, texts: list[str], *, query: bool) -> list[dict[int, float]]:
        texts = check_texts(texts)
        encode = self._encoder.encode_queries if query else self._encoder.encode_corpus
        out = encode(texts, dense=False, sparse=True, colbert=False)
        assert out.lexical_weights is not None  # noqa: S101 - sparse was requested
        return [dict(d) for d in out.lexical_weights]

    def _get_query_embedding(self, query: str) -> dict[int, float]:
        return self._sparse([check_text(query, "query")], query=True)[0]

    async def _aget_query_embedding(self, query: str) -> dict[int, float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> dict[int, float]:
        return self._sparse([check_text(text, "text")], query=False)[0]

    async def _aget_text_embedding(self, text: str) -> dict[int, float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[dict[int, float]]:
        return self._sparse(texts, query=False)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
