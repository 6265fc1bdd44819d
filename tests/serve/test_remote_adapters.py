"""The adapters given ``base_url=`` return what they return in-process."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from m3rag import Collection, HybridRetriever, M3Encoder, Reranker
from m3rag.serve import ServeConfig, create_app
from m3rag.serve.client import RemoteEncoder, RemoteError, RemoteRetriever
from m3rag.testing import MULTILINGUAL_SAMPLES, multilingual_corpus

pytestmark = pytest.mark.model

DOCS = [s for v in MULTILINGUAL_SAMPLES.values() for s in v] + multilingual_corpus(
    20, seed=3, max_words=50
)
TEXTS = ["What is BGE M3?", "北京是中国的首都。", "Paris is in France."]
QUERY = "What is the capital of France?"
KEY = "adapter-key-0123456789"


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker(tiny_reranker_path, device="cpu")


@pytest.fixture(scope="module")
def collection(tiny_encoder: M3Encoder, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    col = Collection.create(tmp_path_factory.mktemp("remote") / "c", encoder=tiny_encoder)
    col.add(
        DOCS,
        ids=[f"d{i}" for i in range(len(DOCS))],
        metadata=[{"odd": i % 2} for i in range(len(DOCS))],
    )
    col.commit()
    return col


@pytest.fixture
def url(live, tiny_encoder, reranker, collection, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("M3RAG_API_KEY", KEY)  # the clients read the key from the environment
    app = create_app(
        tiny_encoder, reranker=reranker, collection=collection, config=ServeConfig(api_key=KEY)
    )
    return str(live(app).url)


def test_remote_encoder_equals_local(url, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    remote = RemoteEncoder(url)
    for method in ("encode_queries", "encode_corpus"):
        want = getattr(tiny_encoder, method)(TEXTS)
        got = getattr(remote, method)(TEXTS)
        np.testing.assert_allclose(got.dense_vecs, want.dense_vecs, atol=1e-5)
        assert [d.keys() for d in got.lexical_weights] == [d.keys() for d in want.lexical_weights]
        for a, b in zip(got.colbert_vecs, want.colbert_vecs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(got.token_counts, want.token_counts)
    assert remote.encode_corpus([], sparse=False, colbert=False).dense_vecs.shape == (
        0,
        tiny_encoder.dim,
    )


def test_a_wrong_key_or_no_server_is_a_clear_error(url, port) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteError, match=r"401.*API key") as info:
        RemoteEncoder(url, api_key="wrong").encode_corpus(
            ["x"], dense=True, sparse=False, colbert=False
        )
    assert info.value.status == 401
    with pytest.raises(RemoteError, match="cannot reach"):
        RemoteRetriever(f"http://127.0.0.1:{port}", timeout=2).retrieve("x")
    with pytest.raises(ValueError, match="http"):
        RemoteEncoder("127.0.0.1:8000")


@pytest.mark.parametrize("key", ["clé", "two words", " padded", "密钥", "line\nbreak", ""])
def test_a_key_headers_cannot_carry_is_refused_before_any_request(key, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Not a UnicodeEncodeError from http.client at the first call, nor a 401 every time."""
    with pytest.raises(ValueError, match="api_key") as info:
        RemoteEncoder("http://127.0.0.1:9", api_key=key)
    assert key.strip() == "" or key not in str(info.value)  # the message never shows the key
    if key:
        monkeypatch.setenv("M3RAG_API_KEY", key)
        with pytest.raises(ValueError, match="M3RAG_API_KEY"):
            RemoteRetriever("http://127.0.0.1:9")


class _NotM3rag(http.server.BaseHTTPRequestHandler):
    """A server that is not m3rag: an HTML page, or a connection closed without an answer."""

    def do_POST(self) -> None:
        if self.path == "/hang-up":
            self.close_connection = True
            self.wfile.write(b"garbage that is not HTTP\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>a proxy's login page</html>")

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_answers_no_json_is_a_remote_error() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotM3rag)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(RemoteError, match="other than JSON"):
            RemoteEncoder(url).encode_corpus(["x"], dense=True, sparse=False, colbert=False)
        with pytest.raises(RemoteError, match="cannot reach"):
            RemoteEncoder(url).post("/hang-up", {})
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_langchain_adapters_with_base_url(url, tiny_encoder, reranker, collection) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from m3rag_langchain import M3Embeddings, M3Reranker, M3Retriever, M3SparseEmbeddings

    local, remote = M3Embeddings(encoder=tiny_encoder), M3Embeddings(base_url=url)
    np.testing.assert_allclose(
        remote.embed_documents(TEXTS), local.embed_documents(TEXTS), atol=1e-5
    )
    np.testing.assert_allclose(remote.embed_query(QUERY), local.embed_query(QUERY), atol=1e-5)
    np.testing.assert_allclose(
        asyncio.run(remote.aembed_query(QUERY)), local.embed_query(QUERY), atol=1e-5
    )
    s_local, s_remote = M3SparseEmbeddings(encoder=tiny_encoder), M3SparseEmbeddings(base_url=url)
    for a, b in zip(s_remote.embed_documents(TEXTS), s_local.embed_documents(TEXTS), strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        M3Embeddings(encoder=tiny_encoder, base_url=url)

    hybrid = HybridRetriever(collection, reranker=reranker)
    want = M3Retriever(retriever=hybrid, k=4).invoke(QUERY, filter={"odd": 1})
    got = M3Retriever(base_url=url, k=4).invoke(QUERY, filter={"odd": 1})
    assert [d.id for d in got] == [d.id for d in want]
    for a, b in zip(got, want, strict=True):
        assert a.page_content == b.page_content
        assert a.metadata["odd"] == 1 and a.metadata["path_ranks"] == b.metadata["path_ranks"]
        assert a.metadata["rerank_score"] == pytest.approx(b.metadata["rerank_score"], abs=1e-4)
    got_async = asyncio.run(M3Retriever(base_url=url, k=4).ainvoke(QUERY, filter={"odd": 1}))
    assert [d.id for d in got_async] == [d.id for d in want]
    with pytest.raises(ValueError, match="either"):
        M3Retriever(k=4)

    docs = [Document(page_content=t, metadata={"score": i}) for i, t in enumerate(DOCS[:6])]
    want_docs = M3Reranker(reranker=reranker, top_n=3).compress_documents(docs, QUERY)
    got_docs = M3Reranker(base_url=url, top_n=3).compress_documents(docs, QUERY)
    assert [d.page_content for d in got_docs] == [d.page_content for d in want_docs]
    np.testing.assert_allclose(
        [d.metadata["relevance_score"] for d in got_docs],
        [d.metadata["relevance_score"] for d in want_docs],
        atol=1e-5,
    )


def test_llamaindex_adapters_with_base_url(url, tiny_encoder, reranker, collection) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from m3rag_llamaindex import M3Embedding, M3Reranker, M3Retriever, M3SparseEmbedding

    local, remote = M3Embedding(encoder=tiny_encoder), M3Embedding(base_url=url)
    np.testing.assert_allclose(
        remote.get_text_embedding_batch(TEXTS), local.get_text_embedding_batch(TEXTS), atol=1e-5
    )
    np.testing.assert_allclose(
        remote.get_query_embedding(QUERY), local.get_query_embedding(QUERY), atol=1e-5
    )
    s_local, s_remote = M3SparseEmbedding(encoder=tiny_encoder), M3SparseEmbedding(base_url=url)
    assert s_remote.get_query_embedding(QUERY).keys() == s_local.get_query_embedding(QUERY).keys()

    hybrid = HybridRetriever(collection, reranker=reranker)
    want = M3Retriever(hybrid, similarity_top_k=5).retrieve(QUERY)
    got = M3Retriever(base_url=url, similarity_top_k=5).retrieve(QUERY)
    assert [n.node.node_id for n in got] == [n.node.node_id for n in want]
    np.testing.assert_allclose([n.score for n in got], [n.score for n in want], atol=1e-4)
    with pytest.raises(ValueError, match="either"):
        M3Retriever(hybrid, base_url=url)

    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.1) for i, t in enumerate(DOCS[:6])
    ]
    want_nodes = M3Reranker(reranker=reranker, top_n=3).postprocess_nodes(nodes, QueryBundle(QUERY))
    got_nodes = M3Reranker(base_url=url, top_n=3).postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in got_nodes] == [n.node.node_id for n in want_nodes]
    np.testing.assert_allclose(
        [n.score for n in got_nodes], [n.score for n in want_nodes], atol=1e-5
    )
