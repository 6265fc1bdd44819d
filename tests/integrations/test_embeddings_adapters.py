from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytestmark = pytest.mark.model


def test_langchain_embeddings_match_the_encoder(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    import m3rag_langchain
    from m3rag_langchain import M3Embeddings

    assert m3rag_langchain.__all__ == [
        "M3Embeddings",
        "M3SparseEmbeddings",
        "M3Retriever",
        "M3Reranker",
        "M3VectorStore",
    ]
    emb = M3Embeddings(encoder=tiny_encoder)
    docs = emb.embed_documents(["hello world", "北京"])
    want = tiny_encoder.encode_corpus(["hello world", "北京"]).dense_vecs
    np.testing.assert_allclose(np.array(docs), want, atol=1e-6)
    q = emb.embed_query("hello world")
    assert len(q) == tiny_encoder.dim
    assert asyncio.run(emb.aembed_query("hello world")) == q
    assert asyncio.run(emb.aembed_documents(["hello world", "北京"])) == docs


def test_llamaindex_embedding_batches(tiny_encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import m3rag_llamaindex
    from m3rag_llamaindex import M3Embedding

    assert m3rag_llamaindex.__all__ == [
        "M3Embedding",
        "M3SparseEmbedding",
        "M3Retriever",
        "M3Reranker",
        "M3VectorStore",
        "to_m3rag_filter",
    ]
    emb = M3Embedding(encoder=tiny_encoder, embed_batch_size=16)
    calls: list[int] = []
    real = tiny_encoder.encode_corpus

    def spy(texts, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return real(texts, **kw)

    monkeypatch.setattr(tiny_encoder, "encode_corpus", spy)
    vecs = emb.get_text_embedding_batch([f"text {i}" for i in range(20)])
    assert len(vecs) == 20 and calls == [16, 4]
    assert len(emb.get_query_embedding("q")) == tiny_encoder.dim
    assert len(asyncio.run(emb.aget_query_embedding("q"))) == tiny_encoder.dim
