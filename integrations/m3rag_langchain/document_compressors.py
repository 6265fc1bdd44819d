"""A LangChain document compressor that reranks with a bge-reranker cross-encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from m3rag import Reranker
from m3rag.serve.client import RemoteReranker
from m3rag_langchain._remote import Remote, remote_client
from m3rag_langchain._validation import check_documents, check_positive_int, check_text

__all__ = ["M3Reranker"]


class M3Reranker(BaseDocumentCompressor):
    """Rerank documents with [`m3rag.Reranker`][m3rag.Reranker], keeping the best ``top_n``.

    Returns new ``Document`` objects (the caller's are never modified) whose metadata adds
    ``relevance_score`` (the cross-encoder score) and keeps any incoming ``score`` from the
    retriever beside it as ``retrieval_score``.

    Example:
        ```python
        compressor = M3Reranker(reranker=Reranker("BAAI/bge-reranker-v2-m3"), top_n=3)
        compressor.compress_documents(docs, "What is BGE M3?")
        remote = M3Reranker(base_url="http://127.0.0.1:8000")  # `m3rag serve --reranker`
        ```
    """

    # hide_input_in_errors: a ValidationError would otherwise print the arguments, api_key too
    model_config = ConfigDict(arbitrary_types_allowed=True, hide_input_in_errors=True)

    reranker: Reranker | RemoteReranker | None = Field(default=None, exclude=True)
    """The cross-encoder (or give ``base_url``)."""
    base_url: str | None = None
    """An ``m3rag serve --reranker`` server to rerank on instead of a local model."""
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """The server's API key, held as a ``SecretStr`` and never shown in a repr or an error
    (default: the ``M3RAG_API_KEY`` environment variable)."""
    top_n: int = 3
    """Documents kept."""
    normalize: bool = False
    """Report sigmoid probabilities instead of logits."""

    _remote: Remote[RemoteReranker] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> M3Reranker:
        self._source()  # a bad base_url or key fails here, not at the first call
        return self

    def _source(self) -> Reranker | RemoteReranker:
        if self.reranker is not None and self.base_url is None:
            return self.reranker
        if self.reranker is None and self.base_url is not None:
            self._remote = remote_client(self._remote, RemoteReranker, self.base_url, self.api_key)
            return self._remote[1]
        msg = "give either reranker= (in-process) or base_url= (an m3rag serve server)"
        raise ValueError(msg)

    @field_validator("top_n", mode="before")
    @classmethod
    def _positive_top_n(cls, value: object) -> int:
        return check_positive_int(value, "top_n")

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The ``top_n`` documents by cross-encoder score, best first."""
        documents = check_documents(documents)
        check_text(query, "query")
        if not documents:
            return []
        result = self._source().rerank(
            query, [d.page_content for d in documents], top_n=self.top_n, normalize=self.normalize
        )
        out = []
        for hit in result:
            original = documents[hit.index]
            meta: dict[str, Any] = dict(original.metadata)
            if "score" in meta:
                meta["retrieval_score"] = meta.pop("score")
            meta["relevance_score"] = hit.score
            out.append(Document(page_content=original.page_content, metadata=meta, id=original.id))
        return out
