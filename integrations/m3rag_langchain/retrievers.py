"""A LangChain retriever over m3rag's hybrid retriever."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from m3rag import HybridRetriever, SearchResults
from m3rag.serve.client import RemoteRetriever
from m3rag_langchain._remote import Remote, remote_client
from m3rag_langchain._validation import check_positive_int

__all__ = ["M3Retriever"]


def _to_documents(results: SearchResults) -> list[Document]:
    docs = []
    for hit in results:
        meta = dict(hit.metadata)
        meta["score"] = hit.score
        meta["fused_score"] = hit.fused_score
        if hit.rerank_score is not None:
            meta["rerank_score"] = hit.rerank_score
        meta["path_scores"] = {p: s.raw for p, s in hit.paths.items()}
        meta["path_ranks"] = {p: s.rank for p, s in hit.paths.items()}
        if hit.chunk_id is not None:
            meta["chunk_id"] = hit.chunk_id
        docs.append(Document(page_content=hit.text, metadata=meta, id=hit.id))
    return docs


class M3Retriever(BaseRetriever):
    """LangChain ``BaseRetriever`` wrapping [`m3rag.HybridRetriever`][m3rag.HybridRetriever].

    Every document carries its scores in ``metadata``: ``score`` (final), ``fused_score``,
    ``rerank_score`` (when a reranker ran), ``path_scores`` and ``path_ranks`` per path.

    Example:
        ```python
        retriever = M3Retriever(retriever=HybridRetriever(collection), k=5)
        retriever.invoke("What is BGE M3?", k=3, filter={"lang": "en"})
        remote = M3Retriever(base_url="http://127.0.0.1:8000", k=5)  # `m3rag serve --index`
        ```
    """

    # hide_input_in_errors: a ValidationError would otherwise print the arguments, api_key too
    model_config = ConfigDict(arbitrary_types_allowed=True, hide_input_in_errors=True)

    retriever: HybridRetriever | RemoteRetriever | None = Field(default=None, exclude=True)
    """The m3rag hybrid retriever to query (or give ``base_url``)."""
    base_url: str | None = None
    """An ``m3rag serve --index`` server to search instead of a local retriever."""
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """The server's API key, held as a ``SecretStr`` and never shown in a repr or an error
    (default: the ``M3RAG_API_KEY`` environment variable)."""
    k: int = 4
    """Documents returned (overridable per call: ``invoke(query, k=...)``)."""
    filter: dict[str, Any] | None = None
    """Metadata filter applied on every path (overridable per call)."""
    min_score: float | None = None
    """Relevance cutoff: the reranker's probability with a reranker, else the fused score
    (overridable per call)."""

    _remote: Remote[RemoteRetriever] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> M3Retriever:
        self._source()  # a bad base_url or key fails here, not at the first query
        return self

    def _source(self) -> HybridRetriever | RemoteRetriever:
        if self.retriever is not None and self.base_url is None:
            return self.retriever
        if self.retriever is None and self.base_url is not None:
            self._remote = remote_client(self._remote, RemoteRetriever, self.base_url, self.api_key)
            return self._remote[1]
        msg = "give either retriever= (in-process) or base_url= (an m3rag serve server)"
        raise ValueError(msg)

    @field_validator("k", mode="before")
    @classmethod
    def _positive_k(cls, value: object) -> int:
        return check_positive_int(value, "k")

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        min_score: float | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        results = self._source().retrieve(
            query,
            k=k if k is not None else self.k,
            filter=filter if filter is not None else self.filter,
            min_score=min_score if min_score is not None else self.min_score,
        )
        return _to_documents(results)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        min_score: float | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        results = await self._source().aretrieve(
            query,
            k=k if k is not None else self.k,
            filter=filter if filter is not None else self.filter,
            min_score=min_score if min_score is not None else self.min_score,
        )
        return _to_documents(results)
