"""A LangChain vector store over an m3rag Collection (hybrid retriever by default)."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from m3rag import Collection, HybridRetriever, M3Output, UnknownIdError
from m3rag.index import WritableStore
from m3rag_langchain._validation import (
    check_documents,
    check_ids,
    check_metadatas,
    check_positive_int,
    check_text,
    check_texts,
)
from m3rag_langchain.embeddings import M3Embeddings
from m3rag_langchain.retrievers import M3Retriever

if TYPE_CHECKING:
    from m3rag import M3Encoder

__all__ = ["M3VectorStore"]


class M3VectorStore(VectorStore):
    """LangChain ``VectorStore`` backed by an m3rag store.

    The store is an embedded [`Collection`][m3rag.Collection] or any other
    [`WritableStore`][m3rag.index.WritableStore], e.g. a [`MilvusStore`][m3rag.MilvusStore].

    Two ways to build it:

    * ``M3VectorStore(collection)`` over a collection with an [`M3Encoder`][m3rag.M3Encoder]: texts
      are encoded with every head (dense, lexical, ColBERT), ``similarity_search`` is dense,
      and ``as_retriever()`` returns the hybrid [`M3Retriever`][] by default;
    * ``M3VectorStore(embedding=any_langchain_embeddings, path="folder")``: a dense-only
      collection created at the first write, for any ``Embeddings``.

    Writes are upserts by id and are committed at once. Returned documents carry exactly their
    metadata (scores come from ``similarity_search_with_score``).

    Searches:

    * ``similarity_search*``: dense inner products (``search_mode="dense"``, the default), or
      m3rag's hybrid retrieval (``search_mode="hybrid"``: every path the store has -- BM25
      always, lexical and ColBERT with an M3 encoder -- z-score fused);
    * ``similarity_search_with_relevance_scores`` and the ``similarity_score_threshold``
      retriever: always the hybrid fused score, mapped to ``(0, 1)`` by the logistic function
      ``1 / (1 + exp(-z))`` (0.5 is an average candidate; monotonic, so thresholds keep the
      fused order);
    * ``max_marginal_relevance_search*``: dense recall of ``fetch_k``, then MMR on the stored
      dense vectors;
    * ``as_retriever()``: the hybrid [`M3Retriever`][] (also ``search_type="hybrid"``);
      ``"similarity"``, ``"mmr"`` and ``"similarity_score_threshold"`` as in LangChain. ``tags``
      are kept.

    Example:
        ```python
        store = M3VectorStore(Collection.create("idx", encoder=M3Encoder("BAAI/bge-m3")))
        store.add_texts(["BGE M3 supports 100+ languages."], ids=["a"])
        store.as_retriever(search_kwargs={"k": 3}).invoke("languages")
        ```
    """

    def __init__(
        self,
        collection: WritableStore | None = None,
        *,
        embedding: Embeddings | None = None,
        path: str | os.PathLike[str] | None = None,
        search_mode: Literal["dense", "hybrid"] = "dense",
    ) -> None:
        if collection is not None and not isinstance(collection, WritableStore):
            msg = f"collection must be an m3rag store, got {type(collection).__name__}"
            raise TypeError(msg)
        if collection is None and (embedding is None or path is None):
            msg = "pass a Collection, or an embedding= and a path= to create one"
            raise ValueError(msg)
        if search_mode not in ("dense", "hybrid"):
            msg = f"search_mode must be 'dense' or 'hybrid', got {search_mode!r}"
            raise ValueError(msg)
        self.search_mode = search_mode
        self._collection = collection
        self._path = path
        if embedding is None:
            assert collection is not None  # noqa: S101 - checked above
            if collection.encoder is None:
                msg = "the collection has no encoder; open it with encoder=, or pass embedding="
                raise ValueError(msg)
            embedding = M3Embeddings(encoder=cast("M3Encoder", collection.encoder))
        self._embedding = embedding
        self._native = (
            collection is not None
            and collection.encoder is not None
            and isinstance(embedding, M3Embeddings)
        )

    @property
    def embeddings(self) -> Embeddings:
        """The embeddings used for dense vectors."""
        return self._embedding

    @property
    def collection(self) -> WritableStore | None:
        """The underlying store (``None`` until the first write in embedding= mode)."""
        return self._collection

    # -- writing ------------------------------------------------------------------------------

    def _ensure(self, dim: int) -> WritableStore:
        if self._collection is None:
            assert self._path is not None  # noqa: S101 - checked in __init__
            path = os.fspath(self._path)
            if os.path.exists(os.path.join(path, "manifest.json")):
                self._collection = Collection.open(path)
            else:
                self._collection = Collection.create(path, heads=("dense",), dim=dim)
        return self._collection

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Upsert texts (same id: replaced); returns their ids.

        Raises:
            TypeError: ``texts`` is a single string, or an item is not a string (index named).
            ValueError: ``metadatas`` or ``ids`` has a different length than ``texts``.
        """
        items = check_texts(texts)
        given = check_ids(ids or None, len(items)) or [None] * len(items)
        metas = check_metadatas(metadatas or None, len(items)) or [{} for _ in items]
        if not items:
            return []
        doc_ids = [i if i else uuid.uuid4().hex for i in given]
        if self._native:
            col = self._ensure(0)
            col.upsert(items, ids=doc_ids, metadata=metas)
        else:
            vectors = self._embedding.embed_documents(items)
            import numpy as np

            dense = np.asarray(vectors, dtype=np.float32)
            col = self._ensure(int(dense.shape[1]))
            col.upsert(
                items, ids=doc_ids, metadata=metas, embeddings=M3Output.build(dense_vecs=dense)
            )
        col.commit()
        return doc_ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Upsert documents, using their ``id`` (or ``ids=``) when given."""
        documents = check_documents(documents)
        ids = check_ids(kwargs.pop("ids", None), len(documents)) or [d.id for d in documents]
        return self.add_texts(
            [d.page_content for d in documents],
            [dict(d.metadata) for d in documents],
            ids=[i if i else uuid.uuid4().hex for i in ids],
            **kwargs,
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by id; unknown ids are ignored. Returns ``True``."""
        ids = None if ids is None else check_texts(ids, "ids")
        if not ids or self._collection is None:
            return True
        col = self._collection
        known = []
        for doc_id in dict.fromkeys(ids):
            try:
                col.get([doc_id])
            except UnknownIdError:
                continue
            known.append(doc_id)
        if known:
            col.delete(known)
            col.commit()
        return True

    # -- reading ------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents with these ids (missing ids are skipped)."""
        checked = check_texts(ids, "ids")
        if self._collection is None or not checked:
            return []
        out = []
        for doc_id in checked:
            try:
                doc = self._collection.get([doc_id])[0]
            except UnknownIdError:
                continue
            out.append(Document(page_content=doc.text, metadata=dict(doc.metadata), id=doc.id))
        return out

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Dense inner products, or the fused score with ``search_mode="hybrid"``.

        ``filter=`` takes an m3rag metadata filter.
        """
        check_text(query, "query")
        check_positive_int(k, "k")
        if self._collection is None or self._collection.count() == 0:
            return []
        if self.search_mode == "hybrid":
            return self._hybrid_search(query, k, kwargs.get("filter"))
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k=k, **kwargs)

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Dense inner products with a query vector; ``filter=`` as above."""
        check_positive_int(k, "k")
        if self._collection is None or self._collection.count() == 0:
            return []
        hits = self._collection.search_dense(embedding, k=k, filter=kwargs.get("filter"))
        docs = self._collection.documents(hits.keys)
        return [(_document(d), float(s)) for d, s in zip(docs, hits.scores.tolist(), strict=True)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """Dense inner-product search with a query vector."""
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """Dense inner-product search (hybrid with ``search_mode="hybrid"``)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k=k, **kwargs)]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        # every path, fused; the logistic keeps the fused order and bounds it in (0, 1)
        check_text(query, "query")
        check_positive_int(k, "k")
        if self._collection is None or self._collection.count() == 0:
            return []
        return [
            (doc, 1.0 / (1.0 + math.exp(-score)))
            for doc, score in self._hybrid_search(query, k, kwargs.get("filter"))
        ]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        # LangChain's default maps the dense scores here, not the fused ones the sync path gives
        return await run_in_executor(
            None, self._similarity_search_with_relevance_scores, query, k, **kwargs
        )

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # inner products of normalised vectors are cosines in [-1, 1]
        return lambda score: (score + 1.0) / 2.0

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Dense recall of ``fetch_k`` documents, then ``k`` of them by MMR."""
        check_text(query, "query")
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(
            vector, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """MMR (``lambda_mult``: 1 relevance only, 0 diversity only) on the stored vectors."""
        check_positive_int(k, "k")
        check_positive_int(fetch_k, "fetch_k")
        if not isinstance(lambda_mult, (int, float)) or not 0.0 <= float(lambda_mult) <= 1.0:
            msg = f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}"
            raise ValueError(msg)
        if self._collection is None or self._collection.count() == 0:
            return []
        hits = self._collection.search_dense(
            embedding, k=max(k, fetch_k), filter=kwargs.get("filter")
        )
        if len(hits.keys) == 0:
            return []
        vectors = self._collection.dense_vecs(hits.keys)
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32), vectors.tolist(), lambda_mult=lambda_mult, k=k
        )
        docs = self._collection.documents(hits.keys[chosen])
        return [_document(d) for d in docs]

    def _hybrid(self) -> HybridRetriever:
        assert self._collection is not None  # noqa: S101 - callers check
        encoder = None if self._native else _DenseQueries(self._embedding)
        return HybridRetriever(self._collection, encoder=encoder, rollup=None)  # type: ignore[arg-type]

    def _hybrid_search(self, query: str, k: int, flt: Any) -> list[tuple[Document, float]]:
        results = self._hybrid().retrieve(query, k=k, filter=flt)
        return [
            (Document(page_content=h.text, metadata=dict(h.metadata), id=h.id), h.score)
            for h in results
        ]

    # Returns the hybrid M3Retriever (a BaseRetriever, not a VectorStoreRetriever) on purpose.
    def as_retriever(self, **kwargs: Any) -> BaseRetriever:  # type: ignore[override]
        """A retriever over the store: hybrid by default.

        For M3 collections this is [`M3Retriever`][] (``search_kwargs`` ``k`` and ``filter``
        honoured); otherwise, or when a ``search_type`` is asked for, LangChain's
        ``VectorStoreRetriever``.
        """
        search_type = kwargs.get("search_type")
        hybrid = search_type == "hybrid" or (search_type is None and self._native)
        if hybrid and self._collection is not None:
            search = dict(kwargs.get("search_kwargs") or {})
            return M3Retriever(
                retriever=self._hybrid(),
                k=check_positive_int(search.get("k", 4), "search_kwargs['k']"),
                filter=search.get("filter"),
                tags=[*(kwargs.get("tags") or []), *self._get_retriever_tags()],
            )
        if search_type == "hybrid":
            msg = "search_type='hybrid' needs documents in the store first"
            raise ValueError(msg)
        return super().as_retriever(**kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> M3VectorStore:
        """Build a store at ``path=`` (required) with ``embedding`` and add ``texts``."""
        path = kwargs.pop("path", None)
        if path is None:
            msg = "M3VectorStore.from_texts needs path= (the folder of the index)"
            raise ValueError(msg)
        store = cls(embedding=embedding, path=path)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _document(doc: Any) -> Document:
    return Document(page_content=doc.text, metadata=dict(doc.metadata), id=doc.id)


class _DenseQueries:
    """Query encoding through any LangChain ``Embeddings``: the hybrid retriever's dense path."""

    heads = ("dense",)

    def __init__(self, embeddings: Embeddings) -> None:
        self._embeddings = embeddings

    def encode_queries(self, texts: Sequence[str], **_: Any) -> M3Output:
        vectors = np.asarray([self._embeddings.embed_query(t) for t in texts], dtype=np.float32)
        return M3Output.build(dense_vecs=vectors)
