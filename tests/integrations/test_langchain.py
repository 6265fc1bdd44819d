"""LangChain adapters: the langchain-tests standard suites, plus the reranker and sparse embeddings."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.documents import Document
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests
from m3rag_langchain import (
    M3Embeddings,
    M3Reranker,
    M3Retriever,
    M3SparseEmbeddings,
    M3VectorStore,
)

pytestmark = pytest.mark.model

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "Tokyo is the capital of Japan.",
    "Rainfall in the northern valleys doubled this year.",
    "BGE M3 is an embedding model supporting dense, lexical and multi-vector retrieval.",
    "BM25 ranks documents by the query terms they contain.",
    "The meeting discussed the budget of the new library.",
]


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="m3rag-lc-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _checkpoint() -> str:
    from m3rag.testing import build_m3_checkpoint

    return str(build_m3_checkpoint(_workdir() / "m3"))


@functools.cache
def _hybrid() -> Any:
    from m3rag import Collection, HybridRetriever, M3Encoder

    encoder = M3Encoder(_checkpoint(), device="cpu")
    col = Collection.create(_workdir() / "index", encoder=encoder)
    col.add(
        TEXTS,
        ids=[f"d{i}" for i in range(len(TEXTS))],
        metadata=[{"n": i} for i in range(len(TEXTS))],
    )
    col.commit()
    return HybridRetriever(col, recall_k=10)


class TestM3EmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[M3Embeddings]:
        return M3Embeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name_or_path": _checkpoint(), "encoder_kwargs": {"device": "cpu"}}


class TestM3EmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[M3Embeddings]:
        return M3Embeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name_or_path": _checkpoint(), "encoder_kwargs": {"device": "cpu"}}


class TestM3RetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[M3Retriever]:
        return M3Retriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": _hybrid()}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"


def test_retriever_carries_scores_and_honours_filters() -> None:
    retriever = M3Retriever(retriever=_hybrid(), k=3)
    docs = retriever.invoke("capital city")
    assert len(docs) == 3
    for doc in docs:
        assert {"score", "fused_score", "path_scores", "path_ranks", "n"} <= set(doc.metadata)
        assert set(doc.metadata["path_scores"]) == {"dense", "lexical", "colbert", "bm25"}
        assert doc.id is not None
    only = retriever.invoke("capital city", filter={"n": 2}, k=5)
    assert [d.id for d in only] == ["d2"]
    fixed = M3Retriever(retriever=_hybrid(), k=5, filter={"n": {"$in": [0, 1]}})
    assert {d.id for d in fixed.invoke("capital")} == {"d0", "d1"}


def test_reranker_compressor_keeps_scores_and_inputs(tiny_reranker_path: Path) -> None:
    from m3rag import Reranker

    docs = M3Retriever(retriever=_hybrid(), k=5).invoke("capital of France")
    before = [(d.page_content, dict(d.metadata)) for d in docs]
    compressor = M3Reranker(reranker=Reranker(tiny_reranker_path, device="cpu"), top_n=2)
    out = compressor.compress_documents(docs, "capital of France")
    assert len(out) == 2
    assert [(d.page_content, dict(d.metadata)) for d in docs] == before  # not mutated
    for d in out:
        assert "relevance_score" in d.metadata and "retrieval_score" in d.metadata
        assert "score" not in d.metadata
    assert out[0].metadata["relevance_score"] >= out[1].metadata["relevance_score"]
    assert compressor.compress_documents([], "q") == []
    plain = [Document(page_content="no metadata here"), Document(page_content="Paris")]
    assert len(compressor.compress_documents(plain, "Paris")) == 2


def test_sparse_embeddings() -> None:
    import asyncio

    sparse = M3SparseEmbeddings(model_name_or_path=_checkpoint(), encoder_kwargs={"device": "cpu"})
    q = sparse.embed_query("capital of France")
    assert q and all(isinstance(k, int) and isinstance(v, float) and v > 0 for k, v in q.items())
    docs = sparse.embed_documents(TEXTS[:2])
    assert len(docs) == 2
    assert asyncio.run(sparse.aembed_query("capital of France")) == q
    indices, values = M3SparseEmbeddings.to_qdrant(q)
    assert indices == list(q) and values == list(q.values())


class TestM3VectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path):  # type: ignore[no-untyped-def, override]
        store = M3VectorStore(embedding=self.get_embeddings(), path=tmp_path / "vs")
        yield store
        if store.collection is not None:
            store.collection.close()


class TestM3VectorStoreHybridStandard(VectorStoreIntegrationTests):
    """The same standard suite with similarity search through m3rag's hybrid retrieval."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path):  # type: ignore[no-untyped-def, override]
        store = M3VectorStore(
            embedding=self.get_embeddings(), path=tmp_path / "vs", search_mode="hybrid"
        )
        yield store
        if store.collection is not None:
            store.collection.close()


class TestM3VectorStoreMilvusStandard(VectorStoreIntegrationTests):
    """The standard suite once more over a [`MilvusStore`][m3rag.MilvusStore] (milvus-lite)."""

    @pytest.fixture
    def vectorstore(self, milvus_lite_uri: str):  # type: ignore[no-untyped-def, override]
        import uuid

        from m3rag import MilvusStore

        name = f"lc_{uuid.uuid4().hex[:12]}"
        milvus = MilvusStore(milvus_lite_uri, name, create=True, heads=("dense",), dim=6)
        yield M3VectorStore(milvus, embedding=self.get_embeddings())
        milvus.drop()


def test_search_types_mmr_threshold_and_tags(tmp_path: Path) -> None:
    import numpy as np
    from langchain_core.vectorstores import VectorStoreRetriever

    from m3rag import Collection, M3Encoder

    encoder = M3Encoder(_checkpoint(), device="cpu")
    store = M3VectorStore(Collection.create(tmp_path / "idx", encoder=encoder))
    dupes = ["The harbour of Lisbon is busy.", "The harbour of Lisbon is busy!"]
    store.add_texts([*dupes, "Cranes unload ships at night.", *TEXTS], ids=None)
    vector = encoder.encode_queries(["harbour of Lisbon"]).dense_vecs[0].tolist()
    by_vector = store.similarity_search_by_vector(vector, k=2)
    assert [d.page_content for d in by_vector] == [
        d.page_content for d in store.similarity_search("harbour of Lisbon", k=2)
    ]
    plain = store.similarity_search("harbour of Lisbon", k=2)
    diverse = store.max_marginal_relevance_search(
        "harbour of Lisbon", k=2, fetch_k=10, lambda_mult=0.1
    )
    assert len(diverse) == 2 and diverse[0].page_content == plain[0].page_content

    def spread(docs):  # type: ignore[no-untyped-def]
        v = encoder.encode_corpus([d.page_content for d in docs]).dense_vecs
        return float(v[0] @ v[1])

    if {d.page_content for d in plain} == set(dupes):
        assert spread(diverse) < spread(plain)
    # relevance scores: every path fused, bounded in (0, 1), in the fused order
    scored = store.similarity_search_with_relevance_scores("harbour of Lisbon", k=5)
    fused = store._hybrid().retrieve("harbour of Lisbon", k=5)
    assert [d.id for d, _ in scored] == fused.ids
    assert all(0.0 < s < 1.0 for _, s in scored)
    assert [s for _, s in scored] == pytest.approx([1 / (1 + np.exp(-h.score)) for h in fused])
    assert set(fused[0].paths) == {"dense", "lexical", "colbert", "bm25"}
    cut = scored[1][1]
    threshold = store.as_retriever(
        search_type="similarity_score_threshold",
        search_kwargs={"score_threshold": cut, "k": 5},
        tags=["qa"],
    )
    assert isinstance(threshold, VectorStoreRetriever) and "qa" in threshold.tags
    assert [d.id for d in threshold.invoke("harbour of Lisbon")] == [
        d.id for d, s in scored if s >= cut
    ]
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 10})
    assert len(mmr.invoke("harbour of Lisbon")) == 2
    hybrid = store.as_retriever(search_type="hybrid", search_kwargs={"k": 3}, tags=["qa"])
    assert isinstance(hybrid, M3Retriever) and "qa" in (hybrid.tags or [])
    assert len(hybrid.invoke("harbour of Lisbon")) == 3
    store.collection.close()


def test_vector_store_over_an_m3_collection(tmp_path: Path) -> None:
    from m3rag import Collection, M3Encoder

    encoder = M3Encoder(_checkpoint(), device="cpu")
    store = M3VectorStore(Collection.create(tmp_path / "idx", encoder=encoder))
    ids = store.add_texts(TEXTS, metadatas=[{"n": i} for i in range(len(TEXTS))])
    assert len(ids) == len(TEXTS)
    docs = store.similarity_search("capital of France", k=2)
    assert len(docs) == 2 and all(set(d.metadata) == {"n"} for d in docs)
    scored = store.similarity_search_with_score("capital of France", k=1)
    assert isinstance(scored[0][1], float)
    retriever = store.as_retriever(search_kwargs={"k": 3, "filter": {"n": {"$lt": 3}}})
    assert isinstance(retriever, M3Retriever)
    got = retriever.invoke("capital")
    assert len(got) == 3 and all(d.metadata["n"] < 3 for d in got)
    assert "path_scores" in got[0].metadata  # hybrid: every path scored
    store.delete([ids[0], "missing"])
    assert store.get_by_ids([ids[0]]) == []
    with pytest.raises(ValueError, match="path"):
        M3VectorStore.from_texts(["x"], store.embeddings)


def test_sparse_embeddings_in_langchain_milvus_hybrid_store(tmp_path: Path) -> None:
    pytest.importorskip("langchain_milvus")
    pytest.importorskip("milvus_lite")
    from langchain_milvus import Milvus
    from m3rag_langchain.milvus import M3MilvusSparseEmbedding

    from m3rag import M3Encoder

    encoder = M3Encoder(_checkpoint(), device="cpu")
    # taken as it is (no conversion); milvus-lite refuses langchain-milvus's lossy sparse
    # default (drop_ratio_build=0.2), so the exact parameters come from the class
    store = Milvus(
        embedding_function=[
            M3Embeddings(encoder=encoder),
            M3MilvusSparseEmbedding(encoder=encoder),
        ],
        vector_field=["dense", "sparse"],
        connection_args={"uri": str(tmp_path / "milvus.db")},
        auto_id=True,
        **M3MilvusSparseEmbedding.exact_params(),
    )
    store.add_texts(TEXTS)
    docs = store.similarity_search(
        "capital of France", k=3, ranker_type="weighted", ranker_params={"weights": [0.6, 0.4]}
    )
    assert len(docs) == 3
    assert all(d.page_content in TEXTS for d in docs)
    store.client.close()


def test_sparse_embeddings_in_langchain_qdrant_hybrid_store() -> None:
    pytest.importorskip("langchain_qdrant")
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from m3rag_langchain.qdrant import M3QdrantSparseEmbeddings
    from qdrant_client import QdrantClient, models

    from m3rag import M3Encoder

    encoder = M3Encoder(_checkpoint(), device="cpu")
    dense = M3Embeddings(encoder=encoder)
    sparse = M3QdrantSparseEmbeddings(encoder=encoder)
    client = QdrantClient(":memory:")  # Qdrant's local mode
    client.create_collection(
        "m3",
        vectors_config={
            "dense": models.VectorParams(size=encoder.dim, distance=models.Distance.COSINE)
        },
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    store = QdrantVectorStore(
        client=client,
        collection_name="m3",
        embedding=dense,
        sparse_embedding=sparse,
        retrieval_mode=RetrievalMode.HYBRID,
        vector_name="dense",
        sparse_vector_name="sparse",
    )
    store.add_texts(TEXTS)
    docs = store.similarity_search("capital of France", k=3)
    assert len(docs) == 3 and all(d.page_content in TEXTS for d in docs)
    # the sparse path alone ranks by the exact lexical matching score
    store.retrieval_mode = RetrievalMode.SPARSE
    top = store.similarity_search_with_score("capital of France", k=1)[0]
    q = sparse.sparse.embed_query("capital of France")
    want = max(
        sum(w * d.get(t, 0.0) for t, w in q.items()) for d in sparse.sparse.embed_documents(TEXTS)
    )
    assert top[1] == pytest.approx(want, rel=1e-4)


def test_relevance_scores_are_the_same_sync_and_async(tmp_path: Path) -> None:
    """The async path gives the fused logistic scores too, not LangChain's dense default."""
    import asyncio

    from m3rag import Collection, M3Encoder

    store = M3VectorStore(
        Collection.create(tmp_path / "idx", encoder=M3Encoder(_checkpoint(), device="cpu"))
    )
    store.add_texts(TEXTS, [{"n": i} for i in range(len(TEXTS))], ids=[f"d{i}" for i in range(7)])
    for kwargs in ({}, {"filter": {"n": {"$lt": 5}}}):
        scored = store.similarity_search_with_relevance_scores("capital city", k=5, **kwargs)
        ascored = asyncio.run(
            store.asimilarity_search_with_relevance_scores("capital city", k=5, **kwargs)
        )
        assert [d.id for d, _ in ascored] == [d.id for d, _ in scored]
        assert [s for _, s in ascored] == pytest.approx([s for _, s in scored])
    scored = store.similarity_search_with_relevance_scores("capital city", k=5)
    cut = scored[2][1]
    threshold = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": cut, "k": 5}
    )
    want = [d.id for d, s in scored if s >= cut]
    assert len(want) < 5
    assert [d.id for d in threshold.invoke("capital city")] == want
    assert [d.id for d in asyncio.run(threshold.ainvoke("capital city"))] == want
    store.collection.close()
