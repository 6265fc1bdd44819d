"""A LlamaIndex retriever over m3rag's hybrid retriever."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilters,
)

from m3rag import Collection, FusionConfig, HybridRetriever, Reranker, SearchResults
from m3rag._inputs import check_min_score
from m3rag.index.filters import Filter
from m3rag.rollup import PARENT_ID
from m3rag.serve.client import RemoteRetriever
from m3rag_llamaindex._nodes import hide_metadata, stored_node
from m3rag_llamaindex._validation import check_positive_int

__all__ = ["M3Retriever", "to_m3rag_filter"]

_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
}


def to_m3rag_filter(
    filters: MetadataFilters | Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """Map LlamaIndex ``MetadataFilters`` (AND of ``==``, ``>``, ``>=``, ``<``, ``<=``, ``in``).

    A plain dict is taken as an m3rag filter (``{"lang": "en"}``,
    ``{"year": {"$gte": 2020}}``) and validated as is.

    Raises:
        TypeError: ``filters`` is neither ``MetadataFilters`` nor a dict, or a value has an
            unsupported type.
        ValueError: An operator or condition m3rag does not support (the message lists the
            supported ones) -- never silently ignored.
    """
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        Filter.parse(filters)  # raises on unknown operators and bad values, here and not later
        return dict(filters) or None
    if not isinstance(filters, MetadataFilters):
        msg = (
            "filters must be llama_index MetadataFilters or an m3rag filter dict such as "
            f"{{'lang': 'en'}}, got {type(filters).__name__}"
        )
        raise TypeError(msg)
    if not filters.filters:
        return None
    if filters.condition not in (None, FilterCondition.AND):
        msg = f"only AND-ed filters are supported, got condition {filters.condition}"
        raise ValueError(msg)
    out: dict[str, dict[str, Any]] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            msg = "nested MetadataFilters are not supported; flatten them into one AND list"
            raise ValueError(msg)
        op = _OPS.get(f.operator)
        if op is None:
            supported = ", ".join(o.value for o in _OPS)
            msg = (
                f"filter operator {f.operator.value!r} on {f.key!r} is not supported; "
                f"use one of {supported}"
            )
            raise ValueError(msg)
        value = f.value
        if op == "$in":
            if not isinstance(value, list):
                msg = f"the 'in' filter on {f.key!r} needs a list, got {value!r}"
                raise ValueError(msg)
            out.setdefault(f.key, {})[op] = list(value)
        else:
            out.setdefault(f.key, {})[op] = value
    Filter.parse(out)  # value types checked now, not at the first query
    return out


class M3Retriever(BaseRetriever):
    """LlamaIndex ``BaseRetriever`` wrapping [`m3rag.HybridRetriever`][m3rag.HybridRetriever].

    Each ``NodeWithScore`` has the final score, and the node's metadata carries
    ``fused_score``, ``rerank_score`` (if reranked) and ``path_scores`` / ``path_ranks`` per
    retrieval path. ``MetadataFilters`` (AND of ``==``, ``>``, ``>=``, ``<``, ``<=``, ``in``), or
    a plain m3rag filter dict, are applied inside every path; unsupported filters raise instead
    of being ignored. Nodes that [`M3VectorStore`][m3rag_llamaindex.M3VectorStore] wrote come
    back as it stored them (their own metadata, ``ref_doc_id`` and excluded keys), as
    ``index.as_retriever()`` gives them; the score keys are hidden from the LLM and the
    embedding model.

    Example:
        ```python
        retriever = M3Retriever.from_defaults("my-index", similarity_top_k=5)
        engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        remote = M3Retriever(base_url="http://127.0.0.1:8000")  # `m3rag serve --index`
        ```
    """

    def __init__(
        self,
        retriever: HybridRetriever | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        similarity_top_k: int = 10,
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        min_score: float | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if (retriever is None) == (base_url is None):
            msg = "give either retriever= (in-process) or base_url= (an m3rag serve server)"
            raise ValueError(msg)
        if retriever is not None and not isinstance(retriever, HybridRetriever):
            msg = (
                f"retriever must be an m3rag HybridRetriever, got {type(retriever).__name__}; "
                "use M3Retriever.from_defaults(index_path) to open an index folder"
            )
            raise TypeError(msg)
        self._retriever: HybridRetriever | RemoteRetriever = (
            retriever if retriever is not None else RemoteRetriever(base_url, api_key=api_key)  # type: ignore[arg-type]
        )
        self.similarity_top_k = check_positive_int(similarity_top_k, "similarity_top_k")
        self._filter = to_m3rag_filter(filters)
        self.min_score = check_min_score(min_score)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_defaults(
        cls,
        index_path: str,
        *,
        model_name: str | None = None,
        reranker_model: str | None = None,
        similarity_top_k: int = 10,
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        fusion: FusionConfig | None = None,
        min_score: float | None = None,
        **retriever_kwargs: Any,
    ) -> M3Retriever:
        """Open an m3rag index folder read-only and retrieve from it.

        Args:
            index_path: The folder (e.g. built with ``m3rag index``).
            model_name: The encoder; default the model the index was built with.
            reranker_model: A bge-reranker to rerank with, if any.
            similarity_top_k: Nodes returned.
            filters: LlamaIndex metadata filters, or an m3rag filter dict.
            fusion: Fusion settings (default: the retriever's, z-score over every path).
            min_score: Relevance cutoff (the reranker's probability, else the fused score).
            **retriever_kwargs: More [`m3rag.HybridRetriever`][m3rag.HybridRetriever] options.
        """
        from m3rag import M3Encoder

        check_positive_int(similarity_top_k, "similarity_top_k")
        filters = to_m3rag_filter(filters)  # checked before anything is loaded
        manifest = Collection.open(index_path, read_only=True)
        stored = (manifest.manifest.get("encoder") or {}).get("model")
        manifest.close()
        encoder = M3Encoder(model_name or stored or "BAAI/bge-m3")
        collection = Collection.open(index_path, encoder=encoder, read_only=True)
        reranker = Reranker(reranker_model) if reranker_model else None
        hybrid = HybridRetriever(collection, reranker=reranker, fusion=fusion, **retriever_kwargs)
        return cls(hybrid, similarity_top_k=similarity_top_k, filters=filters, min_score=min_score)

    def _nodes(self, results: SearchResults) -> list[NodeWithScore]:
        out = []
        for hit in results:
            # the node as stored: decoded when M3VectorStore wrote it, as LlamaIndex stores do
            node = stored_node(hit.id, hit.text, hit.metadata)
            parent = hit.parent_id or hit.metadata.get(PARENT_ID)
            if parent is not None:
                # a chunk's source document: node.ref_doc_id, as LlamaIndex's own nodes have
                node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(parent))
            scores: dict[str, Any] = {"fused_score": hit.fused_score}
            if hit.rerank_score is not None:
                scores["rerank_score"] = hit.rerank_score
            scores["path_scores"] = {p: s.raw for p, s in hit.paths.items()}
            scores["path_ranks"] = {p: s.rank for p, s in hit.paths.items()}
            node.metadata.update(scores)
            # scores and paths are for the caller, not for the LLM prompt or an embedding model
            hide_metadata(node, list(scores))
            out.append(NodeWithScore(node=node, score=hit.score))
        return out

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        results = self._retriever.retrieve(
            query_bundle.query_str,
            k=self.similarity_top_k,
            filter=self._filter,
            min_score=self.min_score,
        )
        return self._nodes(results)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # the default calls _retrieve inline and blocks the event loop; run it in a thread
        return await asyncio.to_thread(self._retrieve, query_bundle)
