"""A LlamaIndex vector store over an m3rag `Collection`: build an index the LlamaIndex way.

```python
store = M3VectorStore(Collection.create("my-index", encoder=M3Encoder("BAAI/bge-m3")))
index = VectorStoreIndex.from_documents(
    documents,
    storage_context=StorageContext.from_defaults(vector_store=store),
    embed_model=M3Embedding(encoder=store.collection.encoder),
)
engine = index.as_query_engine(vector_store_query_mode="hybrid", alpha=0.5)
```

The store keeps the text (``stores_text=True``) and has every node encoded with all of the
collection's heads -- in the same pass `M3Embedding` made when the index embedded the nodes (it
keeps every head), else in one of its own -- so every query mode has what it needs:

==================  ============================================================================
query mode          what runs
==================  ============================================================================
``default``         dense recall and score (LlamaIndex's query embedding when it gives one)
``sparse``          BGE-M3 lexical weights
``hybrid``          dense and lexical, fused by m3rag (z-score); ``alpha`` weighs dense against
                    lexical (``alpha * dense + (1 - alpha) * lexical``; 0.5 if unset)
``semantic_hybrid`` the m3rag mode: every path (dense, lexical, BM25, ColBERT) fused with the
                    retriever's defaults, then the store's reranker if it has one
``text_search``     BM25 alone
``mmr``             dense recall, then maximal marginal relevance (``mmr_threshold`` is lambda)
==================  ============================================================================

Filters are LlamaIndex ``MetadataFilters`` (mapped to m3rag filters; operators m3rag cannot
express raise ``ValueError``), ``doc_ids`` restrict to nodes of those documents and ``node_ids``
to those nodes; all three are applied inside every recall path, so ``similarity_top_k`` counts
allowed nodes only. The store keeps each node's id in its metadata (``_node_id``) for that; a
node written without it (by an older m3rag or another tool) cannot be asked for by id until it
is added again, and a query that does raises ``ValueError``. Query modes may be given as the
enum or its string (``"sparse"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import node_to_metadata_dict

from m3rag import FusionConfig, HybridRetriever, M3Output, Reranker, UnknownIdError
from m3rag.index import WritableStore
from m3rag_llamaindex._nodes import INTERNAL_METADATA, NODE_ID, stored_node
from m3rag_llamaindex._passes import recall
from m3rag_llamaindex._validation import check_positive_int
from m3rag_llamaindex.retrievers import to_m3rag_filter

__all__ = ["INTERNAL_METADATA", "M3VectorStore"]

_REF = "ref_doc_id"
_MODES = (
    VectorStoreQueryMode.DEFAULT,
    VectorStoreQueryMode.SPARSE,
    VectorStoreQueryMode.HYBRID,
    VectorStoreQueryMode.SEMANTIC_HYBRID,
    VectorStoreQueryMode.TEXT_SEARCH,
    VectorStoreQueryMode.MMR,
)


class M3VectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store backed by an m3rag store.

    Args:
        collection: An embedded [`Collection`][m3rag.Collection] or any other
            [`WritableStore`][m3rag.index.WritableStore] (e.g. [`MilvusStore`][m3rag.MilvusStore])
            with an encoder (to add nodes and encode queries); read-only works for querying.
        reranker: A [`Reranker`][m3rag.Reranker] for the ``semantic_hybrid`` (m3rag) mode.
        recall_k: Candidates each recall path contributes.

    Every write commits, so what was added is searchable at once (LlamaIndex expects that).
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    recall_k: int = 100

    _collection: WritableStore = PrivateAttr()
    _reranker: Reranker | None = PrivateAttr(default=None)

    def __init__(
        self, collection: WritableStore, *, reranker: Reranker | None = None, recall_k: int = 100
    ) -> None:
        if not isinstance(collection, WritableStore):
            msg = (
                "collection must be an m3rag Collection or another m3rag store, "
                f"got {type(collection).__name__}"
            )
            raise TypeError(msg)
        check_positive_int(recall_k, "recall_k")
        super().__init__(recall_k=recall_k)  # type: ignore[call-arg]  # a field of ours
        self._collection = collection
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises the store under."""
        return "M3VectorStore"

    @property
    def client(self) -> WritableStore:
        """The m3rag store."""
        return self._collection

    @property
    def collection(self) -> WritableStore:
        """The m3rag store."""
        return self._collection

    # -- writes ---------------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Add (or replace, by node id) nodes; every head is encoded in one pass, then commit."""
        if isinstance(nodes, BaseNode) or not isinstance(nodes, Sequence):
            msg = f"nodes must be a list of nodes, got {type(nodes).__name__}"
            raise TypeError(msg)
        if not nodes:
            return []
        texts, embed_texts, ids, metas = [], [], [], []
        for i, node in enumerate(nodes):
            if not isinstance(node, BaseNode):
                msg = f"nodes[{i}] must be a llama_index node, got {type(node).__name__}"
                raise TypeError(msg)
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if not text.strip():
                msg = f"nodes[{i}] ({node.node_id}) has no text; the store indexes text"
                raise ValueError(msg)
            texts.append(text)
            embed_texts.append(node.get_content(metadata_mode=MetadataMode.EMBED))
            ids.append(node.node_id)
            meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
            metas.append({**meta, NODE_ID: node.node_id})  # so node_ids= can be a filter
        self._collection.upsert(texts, ids=ids, metadata=metas, embeddings=self._embed(embed_texts))
        self._collection.commit()
        return ids

    def _embed(self, embed_texts: list[str]) -> M3Output | None:
        """Every head of the nodes' embedding text, from M3Embedding's pass when it kept it.

        The vectors are of the text LlamaIndex embeds (with the metadata it shows the embed
        model); the stored text, which BM25 reads, is the node's own.
        """
        encoder = self._collection.encoder
        if encoder is None:
            return None  # the collection says what it needs (it refuses writes without one)
        kept = recall(encoder, embed_texts, self._collection.heads)
        return kept if kept is not None else encoder.encode_corpus(embed_texts)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        ids = self._collection.ids_matching({_REF: str(ref_doc_id)})
        if ids:
            self._collection.delete(ids)
            self._collection.commit()

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id and/or metadata filter (both given: nodes matching both)."""
        ids = self._select(node_ids, filters)
        if ids:
            self._collection.delete(ids)
            self._collection.commit()

    def clear(self) -> None:
        """Delete every node."""
        ids = self._collection.ids()
        if ids:
            self._collection.delete(ids)
            self._collection.commit()

    # -- reads ----------------------------------------------------------------------------------

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Nodes by id and/or metadata filter, as stored (text, metadata, relationships)."""
        ids = self._select(node_ids, filters)
        return [
            stored_node(str(doc.id), doc.text, doc.metadata) for doc in self._collection.get(ids)
        ]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Run a LlamaIndex query through m3rag's hybrid retriever (modes: module docstring)."""
        k = check_positive_int(query.similarity_top_k, "similarity_top_k")
        mode = _mode(query.mode)
        retriever, needs_text = self._retriever(query, mode)
        text = query.query_str
        if needs_text and not (isinstance(text, str) and text.strip()):
            msg = f"query mode {mode.value!r} needs the query text (query_str)"
            raise ValueError(msg)
        flt = self._filter(query)
        embeddings = self._query_embeddings(retriever, query)
        results = retriever.retrieve(
            text if isinstance(text, str) and text.strip() else "?",
            k=k,
            filter=flt,
            query_embeddings=embeddings,
        )
        hits = list(results)
        nodes = [stored_node(h.id, h.text, h.metadata) for h in hits]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[h.score for h in hits], ids=[h.id for h in hits]
        )

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """[`add`][] in a worker thread."""
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """[`delete`][] in a worker thread."""
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """[`delete_nodes`][] in a worker thread."""
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        """[`clear`][] in a worker thread."""
        await asyncio.to_thread(self.clear)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """[`get_nodes`][] in a worker thread."""
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """[`query`][] in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.query, query, **kwargs)

    # -- internals ------------------------------------------------------------------------------

    def _select(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> list[str]:
        if node_ids is not None and (isinstance(node_ids, str) or not isinstance(node_ids, list)):
            msg = f"node_ids must be a list of ids, got {type(node_ids).__name__}"
            raise TypeError(msg)
        flt = to_m3rag_filter(filters)
        if flt is None:
            if node_ids is None:
                return self._collection.ids()
            present = set(self._collection.ids())
            return [i for i in dict.fromkeys(node_ids) if i in present]
        matching = self._collection.ids_matching(flt)
        if node_ids is None:
            return matching
        wanted = set(node_ids)
        return [i for i in matching if i in wanted]

    def _filter(self, query: VectorStoreQuery) -> Any:
        """The query's filters, ``doc_ids`` and ``node_ids`` as one m3rag filter.

        Inside the filter, each recall path searches only the allowed nodes; restricting the
        top-k afterwards would lose every allowed node that ranked below it.
        """
        flt = to_m3rag_filter(query.filters) or {}
        if query.doc_ids:
            flt[_REF] = {"$in": [str(d) for d in query.doc_ids]}
        if query.node_ids:  # LlamaIndex passes [] for "no restriction", as other stores read it
            wanted = [str(i) for i in dict.fromkeys(query.node_ids)]
            self._check_node_ids(wanted)
            flt[NODE_ID] = {"$in": wanted}
        return flt or None

    def _check_node_ids(self, wanted: list[str]) -> None:
        """Refuse node ids stored without ``NODE_ID`` (which the filter would never match)."""
        found = set(self._collection.ids_matching({NODE_ID: {"$in": wanted}}))
        for node_id in wanted:
            if node_id in found:
                continue
            try:
                self._collection.get([node_id])
            except UnknownIdError:
                continue  # not in the store: nothing to find, as with any other store
            msg = (
                f"node {node_id!r} was stored without its id in the metadata (by an older "
                "m3rag or another writer), so queries cannot be restricted to it; add the "
                "nodes again with M3VectorStore.add"
            )
            raise ValueError(msg)

    def _retriever(
        self, query: VectorStoreQuery, mode: VectorStoreQueryMode
    ) -> tuple[HybridRetriever, bool]:
        """The retriever for a query mode, and whether it needs the query text."""
        col = self._collection
        common: dict[str, Any] = {"recall_k": self.recall_k, "rollup": None}
        if mode in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            mmr = None
            if mode == VectorStoreQueryMode.MMR:
                mmr = 0.5 if query.mmr_threshold is None else float(query.mmr_threshold)
            dense = FusionConfig(weights={"dense": 1})
            retriever = HybridRetriever(
                col, recall=("dense",), fusion=dense, mmr_lambda=mmr, **common
            )
            return retriever, query.query_embedding is None
        if mode == VectorStoreQueryMode.SPARSE:
            lexical = FusionConfig(weights={"lexical": 1})
            return HybridRetriever(col, recall=("lexical",), fusion=lexical, **common), True
        if mode == VectorStoreQueryMode.HYBRID:
            alpha = 0.5 if query.alpha is None else float(query.alpha)
            if not 0.0 <= alpha <= 1.0:
                msg = f"alpha must be in [0, 1], got {query.alpha!r}"
                raise ValueError(msg)
            weights = {"dense": alpha, "lexical": 1.0 - alpha}
            fusion = FusionConfig(
                weights={p: w for p, w in weights.items() if w > 0}, normalization="zscore"
            )
            recall = tuple(p for p in ("dense", "lexical") if weights[p] > 0)
            return HybridRetriever(col, recall=recall, fusion=fusion, **common), True
        if mode == VectorStoreQueryMode.TEXT_SEARCH:
            bm25 = FusionConfig(weights={"bm25": 1})
            return HybridRetriever(col, recall=("bm25",), fusion=bm25, **common), True
        return HybridRetriever(col, reranker=self._reranker, **common), True  # semantic_hybrid

    @staticmethod
    def _query_embeddings(retriever: HybridRetriever, query: VectorStoreQuery) -> M3Output | None:
        """LlamaIndex's dense query embedding, used as is when dense alone is asked for."""
        if query.query_embedding is None or retriever.recall != ("dense",):
            return None
        import numpy as np

        vec = np.asarray([query.query_embedding], dtype=np.float32)
        return M3Output(vec, None, None, np.ones(1, np.int64), np.zeros(1, np.bool_))


def _mode(mode: object) -> VectorStoreQueryMode:
    """A supported query mode, given as the enum or its string (``"sparse"``)."""
    try:
        found = VectorStoreQueryMode(mode)
    except (ValueError, TypeError):
        found = None
    if found not in _MODES:
        shown = mode.value if isinstance(mode, VectorStoreQueryMode) else mode
        supported = "default, sparse, hybrid, semantic_hybrid (m3rag), text_search, mmr"
        msg = f"query mode {shown!r} is not supported by M3VectorStore; use {supported}"
        raise ValueError(msg)
    return found
