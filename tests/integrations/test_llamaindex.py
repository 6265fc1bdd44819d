"""LlamaIndex adapters inside a real RetrieverQueryEngine with llama-index-core's MockLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import QueryBundle
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from m3rag_llamaindex import (
    M3Embedding,
    M3Reranker,
    M3Retriever,
    M3SparseEmbedding,
    to_m3rag_filter,
)

from m3rag import Collection, HybridRetriever, Reranker

pytestmark = pytest.mark.model

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "Tokyo is the capital of Japan.",
    "Rainfall in the northern valleys doubled this year.",
    "BGE M3 is an embedding model supporting dense, lexical and multi-vector retrieval.",
]


@pytest.fixture(scope="module")
def index_path(tiny_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("li") / "index"
    with Collection.create(path, encoder=tiny_encoder) as col:
        col.add(
            TEXTS,
            ids=[f"d{i}" for i in range(len(TEXTS))],
            metadata=[{"n": i, "lang": "zh" if i == 1 else "en"} for i in range(len(TEXTS))],
        )
    return path


@pytest.fixture(scope="module")
def hybrid(tiny_encoder, index_path: Path) -> HybridRetriever:  # type: ignore[no-untyped-def]
    return HybridRetriever(
        Collection.open(index_path, encoder=tiny_encoder, read_only=True), recall_k=10
    )


def test_retriever_in_a_query_engine(hybrid: HybridRetriever) -> None:
    retriever = M3Retriever(hybrid, similarity_top_k=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query("What is the capital of France?")
    assert len(response.source_nodes) == 3
    for nws in response.source_nodes:
        assert nws.score is not None
        meta = nws.node.metadata
        assert set(meta["path_scores"]) == {"dense", "lexical", "colbert", "bm25"}
        assert "fused_score" in meta and "n" in meta
        assert "path_scores" in nws.node.excluded_llm_metadata_keys
    assert str(response)  # the mock LLM answered from the retrieved context


def test_metadata_filters_are_mapped_not_ignored(hybrid: HybridRetriever) -> None:
    filters = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="zh", operator=FilterOperator.EQ)]
    )
    nodes = M3Retriever(hybrid, similarity_top_k=5, filters=filters).retrieve("capital")
    assert [n.node.node_id for n in nodes] == ["d1"]
    ranged = MetadataFilters(
        filters=[
            MetadataFilter(key="n", value=2, operator=FilterOperator.GTE),
            MetadataFilter(key="n", value=[2, 3], operator=FilterOperator.IN),
        ]
    )
    assert to_m3rag_filter(ranged) == {"n": {"$gte": 2, "$in": [2, 3]}}
    assert {
        n.node.node_id
        for n in M3Retriever(hybrid, similarity_top_k=5, filters=ranged).retrieve("capital")
    } == {"d2", "d3"}
    with pytest.raises(ValueError, match="not supported"):
        M3Retriever(
            hybrid,
            filters=MetadataFilters(
                filters=[MetadataFilter(key="lang", value="x", operator=FilterOperator.TEXT_MATCH)]
            ),
        )
    with pytest.raises(ValueError, match="AND"):
        to_m3rag_filter(
            MetadataFilters(
                filters=[MetadataFilter(key="n", value=1)], condition=FilterCondition.OR
            )
        )
    with pytest.raises(ValueError, match="similarity_top_k"):
        M3Retriever(hybrid, similarity_top_k=0)


def test_aretrieve_does_not_block_the_loop(hybrid: HybridRetriever, run_counting_ticks) -> None:  # type: ignore[no-untyped-def]
    retriever = M3Retriever(hybrid, similarity_top_k=2)
    nodes, ticks = run_counting_ticks(lambda: retriever.aretrieve("capital"))
    assert len(nodes) == 2 and ticks > 1


def test_from_defaults_opens_an_index(index_path: Path, tiny_m3_path: Path) -> None:
    retriever = M3Retriever.from_defaults(
        str(index_path), model_name=str(tiny_m3_path), similarity_top_k=2
    )
    assert len(retriever.retrieve("capital of Japan")) == 2


def test_reranker_postprocessor_emits_events_and_keeps_scores(
    hybrid: HybridRetriever, tiny_reranker_path: Path
) -> None:
    seen: list[str] = []

    class Handler(BaseEventHandler):
        def handle(self, event, **kwargs) -> None:  # type: ignore[no-untyped-def]
            if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
                seen.append(type(event).__name__)

    dispatcher = get_dispatcher("m3rag_llamaindex.postprocessors")
    handler = Handler()
    dispatcher.add_event_handler(handler)
    try:
        post = M3Reranker(
            str(tiny_reranker_path), top_n=2, reranker=Reranker(tiny_reranker_path, device="cpu")
        )
        retriever = M3Retriever(hybrid, similarity_top_k=4)
        engine = RetrieverQueryEngine.from_args(
            retriever, llm=MockLLM(), node_postprocessors=[post]
        )
        response = engine.query("capital of France")
        assert len(response.source_nodes) == 2
        for nws in response.source_nodes:
            assert "retrieval_score" in nws.node.metadata
        nodes = retriever.retrieve("capital")
        before = [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes]
        post.postprocess_nodes(nodes, query_bundle=QueryBundle("capital"))
        assert [
            (n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes
        ] == before  # untouched
        assert post.postprocess_nodes([], query_bundle=QueryBundle("q")) == []
        with pytest.raises(ValueError, match="query"):
            post.postprocess_nodes(nodes)
    finally:
        dispatcher.event_handlers.remove(handler)
    assert "ReRankStartEvent" in seen and "ReRankEndEvent" in seen
    with pytest.raises(ValueError, match="top_n"):
        M3Reranker(
            str(tiny_reranker_path), top_n=0, reranker=Reranker(tiny_reranker_path, device="cpu")
        )


def test_sparse_embedding_batches(tiny_encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    sparse = M3SparseEmbedding(encoder=tiny_encoder, embed_batch_size=8)
    calls: list[int] = []
    real = tiny_encoder.encode_corpus

    def spy(texts, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return real(texts, **kw)

    monkeypatch.setattr(tiny_encoder, "encode_corpus", spy)
    vecs = sparse.get_text_embedding_batch([f"text {i}" for i in range(10)])
    assert len(vecs) == 10 and calls == [8, 2]
    q = sparse.get_query_embedding("capital")
    assert all(isinstance(k, int) for k in q)
    assert asyncio.run(sparse.aget_query_embedding("capital")) == q
    dense = M3Embedding(encoder=tiny_encoder)
    assert len(dense.get_query_embedding("capital")) == tiny_encoder.dim


def test_embeddings_inside_query_engines(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    from llama_index.core import Document as LIDocument
    from llama_index.core import VectorStoreIndex
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    from m3rag import lexical_matching_score

    dense = M3Embedding(encoder=tiny_encoder, embed_batch_size=4)
    index = VectorStoreIndex.from_documents([LIDocument(text=t) for t in TEXTS], embed_model=dense)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=2)
    assert isinstance(engine, RetrieverQueryEngine)
    assert len(engine.query("capital of France").source_nodes) == 2

    sparse = M3SparseEmbedding(encoder=tiny_encoder)
    doc_weights = sparse.get_text_embedding_batch(TEXTS)

    class SparseRetriever(BaseRetriever):
        """Ranks the texts by the BGE-M3 lexical score of M3SparseEmbedding vectors."""

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            q = sparse.get_query_embedding(query_bundle.query_str)
            scored = [(lexical_matching_score(q, d), i) for i, d in enumerate(doc_weights)]
            return [
                NodeWithScore(node=TextNode(text=TEXTS[i], id_=f"d{i}"), score=s)
                for s, i in sorted(scored, reverse=True)[:2]
            ]

    response = RetrieverQueryEngine.from_args(SparseRetriever(), llm=MockLLM()).query(
        "capital of France"
    )
    assert len(response.source_nodes) == 2
    assert response.source_nodes[0].score >= response.source_nodes[1].score


def test_an_ingestion_cache_tells_encoders_apart(
    tiny_encoder, tmp_path_factory: pytest.TempPathFactory
) -> None:  # type: ignore[no-untyped-def]
    """LlamaIndex keys its cache by ``to_dict()``: another checkpoint is another entry."""
    from llama_index.core import Document as LIDocument
    from llama_index.core.ingestion import IngestionCache, IngestionPipeline

    from m3rag import M3Encoder
    from m3rag.testing import build_m3_checkpoint

    other = M3Encoder(
        build_m3_checkpoint(tmp_path_factory.mktemp("other-m3"), seed=1), device="cpu"
    )
    docs = [LIDocument(text=t, id_=f"d{i}") for i, t in enumerate(TEXTS[:2])]
    cache = IngestionCache()

    def run(encoder) -> list[list[float]]:  # type: ignore[no-untyped-def]
        embed = M3Embedding(encoder=encoder)
        assert embed.model_name == encoder.model_name_or_path
        pipeline = IngestionPipeline(transformations=[embed], cache=cache)
        return [n.embedding for n in pipeline.run(documents=docs)]

    first, second = run(tiny_encoder), run(other)
    fresh = IngestionPipeline(transformations=[M3Embedding(encoder=other)]).run(documents=docs)
    np.testing.assert_allclose(second, [n.embedding for n in fresh], atol=1e-6)
    assert not np.allclose(first, second)
    with pytest.raises(ValueError, match="leave model_name out"):
        M3Embedding("BAAI/bge-m3", encoder=tiny_encoder)


def test_to_dict_keeps_the_server_and_never_the_key() -> None:
    url = "http://127.0.0.1:9"
    remote = M3Embedding(base_url=url, api_key="key-TOPSECRET")
    data = remote.to_dict()
    assert data["base_url"] == url and data["model_name"] == url
    assert "TOPSECRET" not in str(data) and "TOPSECRET" not in remote.to_json()
    again = M3Embedding.from_dict(data)
    assert again.base_url == url and again.to_dict() == data
    assert again._encoder.base_url == url  # a client of that server, not a local model
    sparse = M3SparseEmbedding(base_url=url, api_key="key-TOPSECRET").model_dump()
    assert sparse["base_url"] == url and "TOPSECRET" not in str(sparse)
    reranker = M3Reranker(base_url=url, api_key="key-TOPSECRET", top_n=2)
    data = reranker.to_dict()
    assert data["base_url"] == url and data["model"] == url and "TOPSECRET" not in str(data)
    assert M3Reranker.from_dict(data)._reranker.base_url == url


def test_async_embeddings_run_in_a_worker_thread(tiny_encoder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    threads: list[int] = []
    for method in ("encode_queries", "encode_corpus"):
        real = getattr(tiny_encoder, method)

        def spy(texts, _real=real, **kw):  # type: ignore[no-untyped-def]
            threads.append(threading.get_ident())
            return _real(texts, **kw)

        monkeypatch.setattr(tiny_encoder, method, spy)
    for embed in (M3Embedding(encoder=tiny_encoder), M3SparseEmbedding(encoder=tiny_encoder)):
        asyncio.run(embed.aget_text_embedding("capital"))
        asyncio.run(embed.aget_text_embedding_batch(["capital", "city"]))
        asyncio.run(embed.aget_query_embedding("capital"))
    assert len(threads) == 6
    assert threading.get_ident() not in threads  # never on the event loop's thread


def test_reranker_names_its_model_and_hides_the_retrieval_score(
    hybrid: HybridRetriever, tiny_reranker_path: Path
) -> None:
    from llama_index.core.schema import MetadataMode

    names: list[str | None] = []

    class Handler(BaseEventHandler):
        def handle(self, event, **kwargs) -> None:  # type: ignore[no-untyped-def]
            if isinstance(event, ReRankStartEvent):
                names.append(event.model_name)

    dispatcher = get_dispatcher("m3rag_llamaindex.postprocessors")
    handler = Handler()
    dispatcher.add_event_handler(handler)
    try:
        post = M3Reranker(reranker=Reranker(tiny_reranker_path, device="cpu"), top_n=2)
        nodes = M3Retriever(hybrid, similarity_top_k=4).retrieve("capital of France")
        out = post.postprocess_nodes(nodes, query_bundle=QueryBundle("capital of France"))
    finally:
        dispatcher.event_handlers.remove(handler)
    assert post.model == str(tiny_reranker_path) and names == [str(tiny_reranker_path)]
    for nws in out:
        assert "retrieval_score" in nws.node.metadata
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            assert "retrieval_score" not in nws.node.get_content(metadata_mode=mode)
    with pytest.raises(ValueError, match="leave model out"):
        M3Reranker("BAAI/bge-reranker-v2-m3", reranker=Reranker(tiny_reranker_path, device="cpu"))
