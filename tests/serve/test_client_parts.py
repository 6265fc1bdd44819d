"""More texts or passages than the server takes in one request: the clients send them in parts,
and the result is the one the local call gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3rag import M3Encoder, Reranker
from m3rag.serve import ServeConfig, create_app
from m3rag.serve.client import RemoteEncoder, RemoteError, RemoteReranker
from m3rag.testing import multilingual_corpus

pytestmark = pytest.mark.model

# 11 texts against a limit of 4 a request: parts of 4, 4 and 3
TEXTS = multilingual_corpus(11, seed=5, max_words=40)
LIMIT = 4
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker(tiny_reranker_path, device="cpu")


def _server(live, encoder, reranker, **config):  # type: ignore[no-untyped-def]
    return str(live(create_app(encoder, reranker=reranker, config=ServeConfig(**config))).url)


def _assert_same_output(got, want) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(got.dense_vecs, want.dense_vecs, atol=1e-5)
    assert [d.keys() for d in got.lexical_weights] == [d.keys() for d in want.lexical_weights]
    for a, b in zip(got.colbert_vecs, want.colbert_vecs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(got.token_counts, want.token_counts)


def test_more_texts_than_a_request_holds_are_sent_in_parts(
    live, tiny_encoder: M3Encoder, reranker: Reranker
) -> None:  # type: ignore[no-untyped-def]
    url = _server(live, tiny_encoder, reranker, max_client_batch_size=LIMIT)
    remote = RemoteEncoder(url)
    assert remote.max_batch == LIMIT
    _assert_same_output(remote.encode_corpus(TEXTS), tiny_encoder.encode_corpus(TEXTS))
    _assert_same_output(remote.encode_queries(TEXTS), tiny_encoder.encode_queries(TEXTS))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("top_n", [None, 1, 6])
def test_more_passages_than_a_request_holds_are_ranked_as_one(
    live, tiny_encoder: M3Encoder, reranker: Reranker, normalize: bool, top_n: int | None
) -> None:  # type: ignore[no-untyped-def]
    url = _server(live, tiny_encoder, reranker, max_client_batch_size=LIMIT)
    got = RemoteReranker(url).rerank(QUERY, TEXTS, top_n=top_n, normalize=normalize)
    want = reranker.rerank(QUERY, TEXTS, top_n=top_n, normalize=normalize)
    assert got.indices == want.indices
    np.testing.assert_allclose([p.score for p in got], [p.score for p in want], atol=1e-5)
    assert [p.passage for p in got] == [p.passage for p in want]


def test_a_part_refused_as_too_large_is_halved(
    live, tiny_encoder: M3Encoder, reranker: Reranker
) -> None:  # type: ignore[no-untyped-def]
    # room for one text's ColBERT vectors a request, not for two: every part of 4 is halved
    # down to single texts; a text that does not fit alone is the server's 413
    longest = int(tiny_encoder.encode_corpus(TEXTS).token_counts.max())
    url = _server(
        live,
        tiny_encoder,
        reranker,
        max_client_batch_size=LIMIT,
        max_colbert_tokens=longest + 1,
    )
    remote = RemoteEncoder(url)
    _assert_same_output(remote.encode_corpus(TEXTS), tiny_encoder.encode_corpus(TEXTS))
    with pytest.raises(RemoteError) as err:
        remote.encode_corpus([" ".join(TEXTS * 4)])
    assert err.value.status == 413


def test_adapters_take_more_texts_than_a_request_holds(
    live, tiny_encoder: M3Encoder, reranker: Reranker
) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from m3rag_langchain import M3Embeddings, M3Reranker

    url = _server(live, tiny_encoder, reranker, max_client_batch_size=LIMIT)
    got = M3Embeddings(base_url=url).embed_documents(TEXTS)
    np.testing.assert_allclose(got, tiny_encoder.encode_corpus(TEXTS).dense_vecs, atol=1e-5)
    docs = [Document(page_content=t) for t in TEXTS]
    kept = M3Reranker(base_url=url, top_n=len(TEXTS)).compress_documents(docs, QUERY)
    want = reranker.rerank(QUERY, TEXTS)
    assert [d.page_content for d in kept] == [p.passage for p in want]
