"""M3VectorStore: an index built the LlamaIndex way, queried in every mode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeRelationship
from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from m3rag_llamaindex import M3Embedding, M3VectorStore

from m3rag import Collection, Reranker

pytestmark = pytest.mark.model

DOCS = [
    Document(
        text="Paris is the capital of France. It lies on the Seine.",
        id_="fr",
        metadata={"lang": "en"},
    ),
    Document(text="北京是中华人民共和国的首都。", id_="cn", metadata={"lang": "zh"}),
    Document(
        text="Lisbon hosts the harbour festival every June.", id_="pt", metadata={"lang": "en"}
    ),
]
MODES = ["default", "sparse", "hybrid", "semantic_hybrid", "text_search", "mmr"]


@pytest.fixture(params=["collection", "milvus"])
def index(request, tmp_path: Path, tiny_encoder, tiny_reranker_path: Path):  # type: ignore[no-untyped-def]
    """The LlamaIndex index over each store: the embedded `Collection` and `MilvusStore`."""
    if request.param == "milvus":
        import uuid

        from m3rag import MilvusStore

        uri = request.getfixturevalue("milvus_lite_uri")
        col = MilvusStore(uri, f"li_{uuid.uuid4().hex[:12]}", encoder=tiny_encoder, create=True)
    else:
        col = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    store = M3VectorStore(col, reranker=Reranker(tiny_reranker_path, device="cpu"))
    index = VectorStoreIndex.from_documents(
        DOCS,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=M3Embedding(encoder=tiny_encoder),
    )
    yield index, store
    col.close()


def test_from_documents_and_every_query_mode(index) -> None:  # type: ignore[no-untyped-def]
    idx, store = index
    assert store.collection.count() == 3
    for mode in MODES:
        engine = idx.as_query_engine(
            llm=MockLLM(), vector_store_query_mode=mode, similarity_top_k=2
        )
        response = engine.query("capital of France")
        # BM25 recalls only documents that share a word with the query
        assert len(response.source_nodes) == (1 if mode == "text_search" else 2), mode
        node = response.source_nodes[0].node
        assert node.ref_doc_id in {"fr", "cn", "pt"}
        assert node.relationships[NodeRelationship.SOURCE].node_id == node.ref_doc_id
    bm25 = idx.as_retriever(vector_store_query_mode="text_search", similarity_top_k=1)
    assert bm25.retrieve("Lisbon harbour festival")[0].node.ref_doc_id == "pt"


def test_reopened_store_and_filters(index, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    _, store = index
    again = VectorStoreIndex.from_vector_store(store, embed_model=M3Embedding(encoder=tiny_encoder))
    only_zh = MetadataFilters(filters=[ExactMatchFilter(key="lang", value="zh")])
    nodes = again.as_retriever(filters=only_zh, similarity_top_k=3).retrieve("capital")
    assert [n.node.ref_doc_id for n in nodes] == ["cn"]
    result = store.query(
        VectorStoreQuery(
            query_str="capital",
            similarity_top_k=3,
            doc_ids=["pt"],
            mode=VectorStoreQueryMode.TEXT_SEARCH,
        )
    )
    assert {n.ref_doc_id for n in result.nodes} <= {"pt"}
    with pytest.raises(ValueError, match="not supported"):
        store.query(VectorStoreQuery(query_str="x", mode=VectorStoreQueryMode.SVM))


def test_deletes_gets_clear_and_async(index) -> None:  # type: ignore[no-untyped-def]
    _, store = index
    nodes = store.get_nodes()
    assert len(nodes) == 3
    # internal metadata never reaches the LLM or the embedding text
    for node in nodes:
        shown = node.get_content(metadata_mode=MetadataMode.LLM)
        assert "doc_sha256" not in shown and "_node_content" not in shown
    store.delete("fr")
    assert {n.ref_doc_id for n in store.get_nodes()} == {"cn", "pt"}
    asyncio.run(
        store.adelete_nodes(
            filters=MetadataFilters(filters=[ExactMatchFilter(key="lang", value="zh")])
        )
    )
    assert [n.ref_doc_id for n in asyncio.run(store.aget_nodes())] == ["pt"]
    result = asyncio.run(
        store.aquery(
            VectorStoreQuery(
                query_str="harbour", similarity_top_k=1, mode=VectorStoreQueryMode.TEXT_SEARCH
            )
        )
    )
    assert result.ids and result.nodes[0].ref_doc_id == "pt"
    asyncio.run(store.aclear())
    assert store.get_nodes() == [] and store.collection.count() == 0
    with pytest.raises(TypeError):
        store.add("not nodes")  # type: ignore[arg-type]


def test_one_encoder_pass_for_an_ingestion(tmp_path: Path, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[int, tuple[str, ...]]] = []
    real = tiny_encoder.encode_corpus

    def counting(texts, **kwargs):  # type: ignore[no-untyped-def]
        out = real(texts, **kwargs)
        calls.append((len(texts), out.heads))
        return out

    col = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    store = M3VectorStore(col)
    tiny_encoder.encode_corpus = counting
    try:
        VectorStoreIndex.from_documents(
            DOCS,
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=M3Embedding(encoder=tiny_encoder),
        )
    finally:
        del tiny_encoder.encode_corpus
    # M3Embedding's pass computed every head; the store added without encoding again
    assert sum(n for n, _ in calls) == len(DOCS)
    assert all(set(heads) == {"dense", "sparse", "colbert"} for _, heads in calls)
    assert col.count() == len(DOCS)
    # and what was stored is what a pass of the store's own gives
    node = store.get_nodes()[0]
    text = node.get_content(metadata_mode=MetadataMode.EMBED)
    fresh = tiny_encoder.encode_corpus([text])
    key = np.array([col.ids().index(node.node_id)], dtype=np.int64)
    np.testing.assert_allclose(col.dense_vecs(key)[0], fresh.dense_vecs[0], atol=1e-3)
    col.close()


def test_node_ids_restrict_the_search_not_its_top_k(index, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    from llama_index.core.retrievers import VectorIndexRetriever

    idx, store = index
    embed = M3Embedding(encoder=tiny_encoder)
    top = idx.as_retriever(similarity_top_k=1).retrieve("capital of France")[0].node.node_id
    other = next(n.node_id for n in store.get_nodes() if n.node_id != top)
    for mode in ("default", "hybrid", "semantic_hybrid", "mmr"):
        retriever = VectorIndexRetriever(
            idx,
            similarity_top_k=1,
            node_ids=[other],
            embed_model=embed,
            vector_store_query_mode=mode,
        )
        assert [n.node.node_id for n in retriever.retrieve("capital of France")] == [other], mode
    query = VectorStoreQuery(query_str="capital", similarity_top_k=3, node_ids=[other, "missing"])
    assert store.query(query).ids == [other]
    # a node written without its id in the metadata cannot be restricted to: said, not guessed
    store.collection.upsert(["Written by another tool."], ids=["plain"], metadata=[{"lang": "en"}])
    store.collection.commit()
    with pytest.raises(ValueError, match="'plain' was stored without its id"):
        store.query(VectorStoreQuery(query_str="tool", similarity_top_k=1, node_ids=["plain"]))


def test_query_modes_given_as_strings(index) -> None:  # type: ignore[no-untyped-def]
    _, store = index
    for mode in MODES:
        as_str = VectorStoreQuery(query_str="capital of France", similarity_top_k=2, mode=mode)
        as_enum = VectorStoreQuery(
            query_str="capital of France", similarity_top_k=2, mode=VectorStoreQueryMode(mode)
        )
        assert store.query(as_str).ids == store.query(as_enum).ids, mode
    with pytest.raises(ValueError, match="query mode 'sparse' needs the query text"):
        store.query(VectorStoreQuery(query_str=None, similarity_top_k=1, mode="sparse"))
    for bad in ("svm", "bogus", VectorStoreQueryMode.SVM):
        with pytest.raises(ValueError, match="is not supported by M3VectorStore"):
            store.query(VectorStoreQuery(query_str="x", similarity_top_k=1, mode=bad))


def test_m3_retriever_decodes_the_nodes_the_store_wrote(index) -> None:  # type: ignore[no-untyped-def]
    """What `M3Retriever` gives on a LlamaIndex-written store is what the index retriever gives."""
    from m3rag_llamaindex import M3Retriever

    from m3rag import HybridRetriever

    idx, store = index
    ours = M3Retriever(HybridRetriever(store.collection), similarity_top_k=3).retrieve("capital")
    theirs = {n.node.node_id: n.node for n in idx.as_retriever(similarity_top_k=3).retrieve("x")}
    assert set(theirs) == {n.node.node_id for n in ours}
    scores = {"fused_score", "rerank_score", "path_scores", "path_ranks"}
    for nws in ours:
        node, want = nws.node, theirs[nws.node.node_id]
        assert {k: v for k, v in node.metadata.items() if k not in scores} == want.metadata
        assert node.ref_doc_id == want.ref_doc_id and node.ref_doc_id in {"fr", "cn", "pt"}
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            assert node.get_content(metadata_mode=mode) == want.get_content(metadata_mode=mode)
