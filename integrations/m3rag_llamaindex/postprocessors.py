"""A LlamaIndex node postprocessor that reranks with a bge-reranker cross-encoder."""

from __future__ import annotations

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from m3rag import Reranker
from m3rag.serve.client import RemoteReranker
from m3rag_llamaindex._nodes import hide_metadata
from m3rag_llamaindex._validation import (
    check_nodes,
    check_positive_int,
    check_text,
    loaded_name,
)

__all__ = ["M3Reranker"]

dispatcher = get_dispatcher(__name__)


class M3Reranker(BaseNodePostprocessor):
    """Rerank nodes with [`m3rag.Reranker`][m3rag.Reranker], keeping the best ``top_n``.

    The incoming retrieval score is kept in the node's metadata as ``retrieval_score`` (hidden
    from the LLM and the embedding model, as the retriever's scores are); the node's score
    becomes the cross-encoder's. Emits LlamaIndex's ReRank start/end events, naming the model
    in ``model``: the reranker's ``model_name_or_path``, or the server's URL.

    Example:
        ```python
        postprocessor = M3Reranker(model="BAAI/bge-reranker-v2-m3", top_n=3)
        engine = RetrieverQueryEngine.from_args(retriever, node_postprocessors=[postprocessor])
        remote = M3Reranker(base_url="http://127.0.0.1:8000")  # `m3rag serve --reranker`
        ```
    """

    model: str = Field(
        default="BAAI/bge-reranker-v2-m3",
        description="The reranker: its hub id or folder, or the server's URL.",
    )
    top_n: int = Field(default=3, description="Nodes kept.")
    base_url: str | None = Field(
        default=None, description="The m3rag serve server reranking instead of a local model."
    )

    _reranker: Reranker | RemoteReranker = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        *,
        top_n: int = 3,
        reranker: Reranker | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        check_positive_int(top_n, "top_n")
        name, client = _reranker(model, reranker, base_url, api_key)
        super().__init__(  # type: ignore[call-arg]  # pydantic fields
            model=name, top_n=top_n, base_url=base_url
        )
        self._reranker = client

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this class under."""
        return "M3Reranker"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            msg = "M3Reranker needs the query (query_bundle is None)"
            raise ValueError(msg)
        nodes = check_nodes(nodes)
        check_text(query_bundle.query_str, "query_bundle.query_str")
        check_positive_int(self.top_n, "top_n")  # may have been reassigned since __init__
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model
            )
        )
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            texts = [n.node.get_content() for n in nodes]
            result = self._reranker.rerank(query_bundle.query_str, texts, top_n=self.top_n)
            out = []
            for hit in result:
                original = nodes[hit.index]
                node = original.node.model_copy(deep=True)  # never touch the caller's nodes
                node.metadata["retrieval_score"] = original.score
                hide_metadata(node, ["retrieval_score"])  # for the caller, not the LLM prompt
                out.append(NodeWithScore(node=node, score=hit.score))
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out


def _reranker(
    model: str | None, reranker: Reranker | None, base_url: str | None, api_key: str | None
) -> tuple[str, Reranker | RemoteReranker]:
    """The name the rerank events report (the model's own, or the server's URL), and the model."""
    if base_url is not None:
        if reranker is not None:
            msg = "give reranker= (in-process) or base_url= (an m3rag serve server), not both"
            raise ValueError(msg)
        return model or base_url, RemoteReranker(base_url, api_key=api_key)
    if reranker is not None:
        return loaded_name(model, "model", reranker, "reranker"), reranker
    name = model or "BAAI/bge-reranker-v2-m3"
    return name, Reranker(name)
