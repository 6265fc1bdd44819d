"""Every route against the in-process call it serves, error shapes, limits, keys, writes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3rag import Collection, HybridRetriever, M3Encoder, Reranker
from m3rag.serve import ServeConfig, create_app
from m3rag.serve.wire import decode_matrix
from m3rag.testing import MULTILINGUAL_SAMPLES, multilingual_corpus

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model

DOCS = [s for v in MULTILINGUAL_SAMPLES.values() for s in v] + multilingual_corpus(
    30, seed=7, max_words=60
)
TEXTS = ["What is BGE M3?", "北京是中国的首都。", "", "a b c " * 40, "Paris is in France."]
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker(tiny_reranker_path, device="cpu")


@pytest.fixture(scope="module")
def collection(tiny_encoder: M3Encoder, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    col = Collection.create(
        tmp_path_factory.mktemp("serve") / "c", encoder=tiny_encoder, colbert_dtype="float32"
    )
    col.add(
        DOCS,
        ids=[f"d{i}" for i in range(len(DOCS))],
        metadata=[{"i": i, "lang": "x" if i % 2 else "y"} for i in range(len(DOCS))],
    )
    col.commit()
    return col


@pytest.fixture
def server(live, tiny_encoder, reranker, collection):  # type: ignore[no-untyped-def]
    app = create_app(
        tiny_encoder, reranker=reranker, collection=collection, config=ServeConfig(max_wait_ms=2)
    )
    return live(app)


def post(server: Any, path: str, body: Any, **kw: Any) -> Any:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


# -- every route equals the in-process call ------------------------------------------------------


def test_openai_embeddings_equal_encode_corpus(server, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    want = tiny_encoder.encode_corpus(TEXTS, dense=True, sparse=False, colbert=False)
    r = post(server, "/v1/embeddings", {"input": TEXTS, "model": "bge-m3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "bge-m3"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, want.dense_vecs, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == int(want.token_counts.sum())
    # the openai client's default: base64 float32
    r = post(server, "/v1/embeddings", {"input": TEXTS[0], "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, want.dense_vecs[0], atol=1e-5)


def test_tei_embed_and_embed_sparse_equal_encode(server, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    want = tiny_encoder.encode_corpus(TEXTS)
    r = post(server, "/embed", {"inputs": TEXTS})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()), want.dense_vecs, atol=1e-5)
    r = post(server, "/embed_sparse", {"inputs": TEXTS})
    assert r.status_code == 200, r.text
    for got, lex in zip(r.json(), want.lexical_weights, strict=True):
        assert [g["index"] for g in got] == sorted(lex)
        np.testing.assert_allclose(
            [g["value"] for g in got], [lex[k] for k in sorted(lex)], atol=1e-5
        )
    # one string in, one list out, as text-embeddings-inference answers
    r = post(server, "/embed", {"inputs": TEXTS[0]})
    assert len(r.json()) == 1


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_embed_all_equals_every_head(server, tiny_encoder, kind) -> None:  # type: ignore[no-untyped-def]
    encode = tiny_encoder.encode_queries if kind == "query" else tiny_encoder.encode_corpus
    want = encode(TEXTS)
    as_json = post(server, "/embed_all", {"inputs": TEXTS, "kind": kind}).json()["data"]
    as_b64 = post(
        server, "/embed_all", {"inputs": TEXTS, "kind": kind, "colbert_format": "base64"}
    ).json()["data"]
    assert len(as_json) == len(as_b64) == len(TEXTS)
    for i, (j, b) in enumerate(zip(as_json, as_b64, strict=True)):
        np.testing.assert_allclose(j["dense"], want.dense_vecs[i], atol=1e-5)
        lex = {int(k): v for k, v in j["lexical_weights"].items()}
        assert lex.keys() == want.lexical_weights[i].keys()
        np.testing.assert_allclose(
            list(lex.values()), list(want.lexical_weights[i].values()), atol=1e-5
        )
        col = np.asarray(j["colbert"], dtype=np.float32).reshape(-1, tiny_encoder.colbert_dim)
        np.testing.assert_allclose(col, want.colbert_vecs[i], atol=1e-5)
        raw = np.frombuffer(base64.b64decode(b["colbert"]["data"]), dtype="<f4")
        assert b["colbert"]["shape"] == list(want.colbert_vecs[i].shape)
        np.testing.assert_array_equal(raw.reshape(b["colbert"]["shape"]), col)
        assert j["token_count"] == want.token_counts[i]


def test_a_long_json_answer_is_written_off_the_loop_and_exact(server, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    """Over LONG_ANSWER_TOKENS the answer is written on a worker thread: the same numbers,
    float32-exact as JSON, and the response is valid JSON as a whole."""
    from m3rag.serve.app import LONG_ANSWER_TOKENS

    texts = multilingual_corpus(24, seed=5, min_words=90, max_words=120)
    want = tiny_encoder.encode_corpus(texts)
    assert int(want.token_counts.sum()) > LONG_ANSWER_TOKENS
    for some in (texts, texts[:1]):  # the worker thread's path, and the loop's
        r = post(server, "/embed_all", {"inputs": some})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        data = json.loads(r.content)["data"]
        packed = post(server, "/embed_all", {"inputs": some, "colbert_format": "base64"}).json()
        assert len(data) == len(some)
        for i, (item, b64) in enumerate(zip(data, packed["data"], strict=True)):
            np.testing.assert_allclose(item["dense"], want.dense_vecs[i], atol=1e-6)
            got = np.asarray(item["colbert"], np.float32).reshape(-1, tiny_encoder.colbert_dim)
            np.testing.assert_allclose(got, want.colbert_vecs[i], atol=1e-6)
            # the JSON numbers are the float32 values exactly (the compact form's bytes)
            np.testing.assert_array_equal(got, decode_matrix(b64["colbert"]))
            np.testing.assert_array_equal(
                np.asarray(item["dense"], np.float32), np.asarray(b64["dense"], np.float32)
            )


def test_rerank_equals_reranker(server, reranker) -> None:  # type: ignore[no-untyped-def]
    passages = DOCS[:7]
    for raw in (False, True):
        want = reranker.rerank(QUERY, passages, normalize=not raw)
        r = post(
            server,
            "/rerank",
            {"query": QUERY, "texts": passages, "raw_scores": raw, "return_text": True},
        )
        assert r.status_code == 200, r.text
        rows = r.json()
        assert [x["index"] for x in rows] == want.indices
        np.testing.assert_allclose([x["score"] for x in rows], want.scores, atol=1e-5)
        assert [x["text"] for x in rows] == [passages[i] for i in want.indices]


@pytest.mark.parametrize("rerank", [False, True])
def test_search_equals_hybrid_retriever(server, collection, tiny_encoder, reranker, rerank) -> None:  # type: ignore[no-untyped-def]
    local = HybridRetriever(collection, encoder=tiny_encoder, reranker=reranker if rerank else None)
    for query, flt in ((QUERY, None), ("北京 首都", {"lang": "x"})):
        want = local.retrieve(query, k=5, filter=flt)
        body: dict[str, Any] = {"query": query, "k": 5, "rerank": rerank}
        if flt:
            body["filter"] = flt
        r = post(server, "/search", body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert [h["id"] for h in got["hits"]] == want.ids
        assert got["paths"] == list(want.paths) and got["candidates"] == want.candidates
        np.testing.assert_allclose([h["score"] for h in got["hits"]], want.scores, atol=1e-4)
        for h, w in zip(got["hits"], want, strict=True):
            assert h["paths"].keys() == w.paths.keys()
            for p, s in w.paths.items():
                assert h["paths"][p]["rank"] == s.rank
                assert h["paths"][p]["raw"] == pytest.approx(s.raw, abs=1e-4)
            assert (h["rerank_score"] is None) == (not rerank)
            assert all(0 <= a < b <= len(h["text"]) for a, b in h["highlights"])
        if flt:
            assert all(h["metadata"]["lang"] == "x" for h in got["hits"])


def test_search_min_score_equals_in_process(server, collection, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    local = HybridRetriever(collection, encoder=tiny_encoder, reranker=None)
    every = local.retrieve(QUERY, k=8)
    cut = (every[0].score + every[-1].score) / 2
    want = local.retrieve(QUERY, k=8, min_score=cut)
    r = post(server, "/search", {"query": QUERY, "k": 8, "rerank": False, "min_score": cut})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]] == want.ids
    assert 0 < len(want) < len(every)


def test_fusion_per_request(server, collection, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    from m3rag import FusionConfig

    fusion = {"method": "rrf", "weights": {"dense": 1, "bm25": 1}}
    want = HybridRetriever(
        collection, encoder=tiny_encoder, fusion=FusionConfig(**fusion)
    ).retrieve(QUERY, k=4)
    got = post(
        server, "/search", {"query": QUERY, "k": 4, "rerank": False, "fusion": fusion}
    ).json()
    assert [h["id"] for h in got["hits"]] == want.ids
    bad = post(server, "/search", {"query": QUERY, "fusion": {"method": "nope"}})
    assert bad.status_code == 422 and "method" in bad.json()["error"]


# -- probes, metrics, schema -----------------------------------------------------------------------


def test_probes_metrics_and_openapi(server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready").json()
    assert ready["status"] == "ready" and ready["reranker"] and ready["index"]
    post(server, "/embed", {"inputs": ["x"]})
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'm3rag_requests_total{route="/embed",status="200"} 1.0' in metrics.text
    assert "m3rag_batch_texts_bucket" in metrics.text
    schema = httpx.get(server.url + "/openapi.json").json()
    for path in (
        "/v1/embeddings",
        "/embed",
        "/embed_sparse",
        "/rerank",
        "/embed_all",
        "/search",
        "/documents",
    ):
        assert path in schema["paths"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<form" in page.text


# -- errors in the shapes of the APIs imitated ------------------------------------------------------


def test_openai_errors_have_openai_shape(server) -> None:  # type: ignore[no-untyped-def]
    r = post(server, "/v1/embeddings", {"model": "bge-m3"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "input" in err["message"]
    r = post(server, "/v1/embeddings", {"input": [[1, 2, 3]]})
    assert (
        r.status_code == 400 and "check_embedding_ctx_length=False" in r.json()["error"]["message"]
    )
    r = post(server, "/v1/embeddings", {"input": []})  # OpenAI: 400 for every invalid request
    assert r.status_code == 400 and "cannot be empty" in r.json()["error"]["message"]
    r = post(server, "/v1/embeddings", {"input": "x", "dimensions": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_tei_errors_have_tei_shape(server) -> None:  # type: ignore[no-untyped-def]
    r = post(server, "/embed", {"inputs": []})
    assert r.status_code == 422
    assert r.json() == {
        "error": "`inputs` cannot be empty; send at least one text",
        "error_type": "Validation",
    }
    r = post(server, "/embed", {"inputs": ["x"] * 300})
    assert r.status_code == 413 and "at most 256" in r.json()["error"]
    r = post(server, "/embed", {"nope": 1})
    assert r.status_code == 422 and "inputs" in r.json()["error"]
    r = post(server, "/rerank", {"query": " ", "texts": ["a"]})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    r = httpx.post(
        server.url + "/embed", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["error"]


def test_truncation_is_refused_unless_asked(live, tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    short = M3Encoder(tiny_m3_path, device="cpu", passage_max_length=16)
    server = live(create_app(short))
    long_text = "word " * 100
    r = post(server, "/embed", {"inputs": ["ok", long_text]})
    assert r.status_code == 413 and "inputs[1]" in r.json()["error"]
    r = post(server, "/embed", {"inputs": ["ok", long_text], "truncate": True})
    assert r.status_code == 200


def test_oversized_body_is_413(live, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    server = live(create_app(tiny_encoder, config=ServeConfig(max_request_bytes=1000)))
    r = post(server, "/embed", {"inputs": ["x" * 2000]})
    assert r.status_code == 413 and "1000" in r.json()["error"]
    # a chunked upload says no length: it is counted as it arrives, and never reaches the model
    body = json.dumps({"input": ["y" * 5000]}).encode()
    chunks = (body[i : i + 256] for i in range(0, len(body), 256))
    r = httpx.post(
        server.url + "/v1/embeddings", content=chunks, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "1000" in r.json()["error"]["message"]
    assert "m3rag_batch_texts_count 0.0" in httpx.get(server.url + "/metrics").text
    assert post(server, "/embed", {"inputs": ["fits"]}).status_code == 200


def test_framework_refusals_come_in_the_routes_error_shape(server) -> None:  # type: ignore[no-untyped-def]
    """No route, a wrong method, a body that is not UTF-8: never FastAPI's bare {"detail"}."""
    r = post(server, "/no-such-route", {})
    assert r.status_code == 404 and r.json()["error_type"] == "NotFound"
    assert "/no-such-route" in r.json()["error"]
    r = post(server, "/v1/no-such-route", {})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/embed")
    assert r.status_code == 405 and "GET" in r.json()["error"] and "POST" in r.headers["allow"]
    for path in ("/embed", "/v1/embeddings"):
        r = httpx.post(
            server.url + path, content=b"\x80\x81", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and "detail" not in r.json()
        assert "UTF-8 JSON" in r.text
    r = httpx.post(
        server.url + "/embed",
        content=b'{"inputs": [1',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "not valid JSON (character 13" in r.json()["error"]


def test_colbert_for_too_many_tokens_is_refused_before_encoding(
    live, tiny_encoder, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Each token is a vector in the answer (or the index): a request over the cap gets 413,
    counted exactly, and the model never runs for it; without ColBERT the same texts pass."""
    col = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    server = live(
        create_app(
            tiny_encoder,
            collection=col,
            config=ServeConfig(max_colbert_tokens=1000, allow_writes=True),
        )
    )
    text = "word " * 100  # 402 tokens with the test tokenizer
    assert int(tiny_encoder.count_tokens(text)[0]) == 402

    def batches() -> str:
        return httpx.get(server.url + "/metrics").text.split("m3rag_batch_texts_count ")[1]

    before = batches()
    r = post(server, "/embed_all", {"inputs": [text] * 3})
    assert r.status_code == 413 and "1206 tokens" in r.json()["error"]
    assert "--max-colbert-tokens" in r.json()["error"] and batches() == before
    r = post(server, "/documents", {"documents": [{"text": text}] * 3})
    assert r.status_code == 413 and "`documents`" in r.json()["error"] and col.count() == 0
    # the byte bound (6 tokens a byte) is over the cap here: the exact count lets it through
    assert post(server, "/embed_all", {"inputs": [text] * 2}).status_code == 200
    assert post(server, "/embed_all", {"inputs": [text] * 3, "colbert": False}).status_code == 200
    r = post(server, "/documents", {"documents": [{"text": text}] * 2})
    assert r.status_code == 200 and r.json()["count"] == 2


def test_no_index_no_reranker_no_writes(live, tiny_encoder, collection) -> None:  # type: ignore[no-untyped-def]
    bare = live(create_app(tiny_encoder))
    r = post(bare, "/search", {"query": "x"})
    assert r.status_code == 404 and "--index" in r.json()["error"]
    r = post(bare, "/rerank", {"query": "x", "texts": ["a"]})
    assert r.status_code == 424 and "--reranker" in r.json()["error"]
    read_only = live(create_app(tiny_encoder, collection=collection))
    r = post(read_only, "/documents", {"documents": [{"text": "new"}]})
    assert r.status_code == 403 and "--allow-writes" in r.json()["error"]
    r = post(read_only, "/search", {"query": "x", "rerank": True})
    assert r.status_code == 424


# -- security -------------------------------------------------------------------------------------


def test_api_key_is_enforced(live, tiny_encoder, caplog) -> None:  # type: ignore[no-untyped-def]
    secret = "s3cret-key-123"  # noqa: S105 - a test key
    server = live(create_app(tiny_encoder, config=ServeConfig(api_key=secret)))
    assert httpx.get(server.url + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": secret}):
        r = post(server, "/embed", {"inputs": ["x"]}, headers=headers)
        assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    r = post(server, "/v1/embeddings", {"input": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/").status_code == 200  # the page asks for the key itself
    assert post(server, "/", {"inputs": ["x"]}).status_code == 401  # TEI's route encodes: keyed
    ok = post(server, "/embed", {"inputs": ["x"]}, headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200
    httpx.post(server.url + "/no-such-route-123")  # refused: no key
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert 'm3rag_requests_total{route="/embed",status="401"} 3.0' in metrics.text
    assert "no-such-route" not in metrics.text  # labels are routes, never raw paths
    assert secret not in repr(ServeConfig(api_key=secret))
    assert secret not in caplog.text


def test_cors_is_off_by_default(live, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    off = live(create_app(tiny_encoder))
    r = post(off, "/embed", {"inputs": ["x"]}, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    on = live(create_app(tiny_encoder, config=ServeConfig(cors_origins=("http://app.example",))))
    r = post(on, "/embed", {"inputs": ["x"]}, headers={"Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] == "http://app.example"


# -- writes ---------------------------------------------------------------------------------------


def test_documents_upsert_search_delete(live, tiny_encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    col = Collection.create(tmp_path / "w", encoder=tiny_encoder)
    col.add(DOCS[:5], ids=[f"d{i}" for i in range(5)])
    col.commit()
    server = live(create_app(tiny_encoder, collection=col, config=ServeConfig(allow_writes=True)))
    doc = {
        "id": "new",
        "text": "Zebras graze on the savanna grasslands.",
        "metadata": {"lang": "en"},
    }
    r = post(server, "/documents", {"documents": [doc]})
    assert r.status_code == 200, r.text
    assert r.json() == {"ids": ["new"], "count": 6}
    stored = col.get("new")[0]
    assert stored.text == doc["text"] and dict(stored.metadata) == doc["metadata"]
    hits = post(server, "/search", {"query": "zebras savanna", "k": 3}).json()["hits"]
    assert hits[0]["id"] == "new"
    # the served write stored what an in-process add stores: the same dense score
    q = tiny_encoder.encode_queries(["zebras savanna"]).dense_vecs[0]
    d = tiny_encoder.encode_corpus([doc["text"]]).dense_vecs[0]
    assert hits[0]["paths"]["dense"]["raw"] == pytest.approx(float(q @ d), abs=1e-4)
    r = post(server, "/documents", {"documents": [doc], "mode": "add"})
    assert r.status_code == 422 and "new" in r.json()["error"]
    r = post(server, "/documents/delete", {"ids": ["new"]})
    assert r.json() == {"deleted": 1, "count": 5}
    r = post(server, "/documents/delete", {"ids": ["new"]})
    assert r.status_code == 404 and "new" in r.json()["error"]
    r = post(server, "/documents", {"documents": [{"text": "   "}]})
    assert r.status_code == 422


# -- batching, back-pressure, the event loop -----------------------------------------------------


class SlowEncoder:
    """The tiny encoder with a delay before each call: a model slower than the request rate."""

    def __init__(self, encoder: M3Encoder, delay: float) -> None:
        self.inner, self.delay, self.calls, self.texts = encoder, delay, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_corpus(self, texts: Any, **kw: Any) -> Any:
        self.calls += 1
        self.texts += len(texts)
        time.sleep(self.delay)
        return self.inner.encode_corpus(texts, **kw)


def test_concurrent_requests_share_batches(live, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    slow = SlowEncoder(tiny_encoder, 0.2)
    server = live(create_app(slow, config=ServeConfig(max_wait_ms=50)))
    want = tiny_encoder.encode_corpus(TEXTS, dense=True, sparse=False, colbert=False)

    async def burst() -> list[Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/embed", json={"inputs": [t]}) for t in TEXTS * 4)
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    for r, i in zip(responses, list(range(len(TEXTS))) * 4, strict=True):
        np.testing.assert_allclose(r.json()[0], want.dense_vecs[i], atol=1e-5)
    assert slow.calls < len(responses) / 2, (
        f"{slow.calls} model calls for {len(responses)} requests"
    )
    assert slow.texts == len(responses)  # each text encoded once
    metrics = httpx.get(server.url + "/metrics").text
    assert f"m3rag_batch_texts_sum {float(len(responses))}" in metrics


def test_full_queue_answers_429_with_retry_after(live, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    slow = SlowEncoder(tiny_encoder, 0.5)
    server = live(create_app(slow, config=ServeConfig(max_queued_texts=4, max_wait_ms=0)))

    async def burst() -> list[Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/embed", json={"inputs": ["a", "b"]}) for _ in range(8))
            )

    codes = [r.status_code for r in asyncio.run(burst())]
    assert 429 in codes and 200 in codes
    refused = next(r for r in asyncio.run(burst()) if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error_type"] == "Overloaded"
    assert "retry" in refused.json()["error"]


def test_the_event_loop_keeps_answering_while_the_model_runs(live, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    slow = SlowEncoder(tiny_encoder, 1.0)
    server = live(create_app(slow))
    t = threading.Thread(target=post, args=(server, "/embed", {"inputs": ["x"]}))
    t.start()
    time.sleep(0.2)
    start = time.perf_counter()
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    assert time.perf_counter() - start < 0.5
    t.join()


def test_request_timeout_is_503(live, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    slow = SlowEncoder(tiny_encoder, 1.0)
    server = live(create_app(slow, config=ServeConfig(request_timeout_s=0.2)))
    r = post(server, "/v1/embeddings", {"input": "x"})
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"]["type"] == "server_error"


def test_a_missing_extra_names_it(monkeypatch, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    import sys

    from m3rag import MissingDependencyError

    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "m3rag\[serve\]"'):
        create_app(tiny_encoder)


def test_public_surface_and_lazy_imports() -> None:
    import subprocess
    import sys

    import m3rag.serve
    import m3rag.serve.client

    assert set(m3rag.serve.__all__) == {
        "DynamicBatcher",
        "QueueFullError",
        "ServeConfig",
        "create_app",
        "run",
    }
    assert set(m3rag.serve.client.__all__) == {
        "RemoteEncoder",
        "RemoteError",
        "RemoteReranker",
        "RemoteRetriever",
    }
    code = (
        "import sys, m3rag.serve, m3rag.serve.client, m3rag.cli; "
        "heavy = {'fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_batch_tokens": 0}, "max_batch_tokens"),
        ({"max_queued_texts": True}, "max_queued_texts"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"request_timeout_s": float("nan")}, "request_timeout_s"),
        ({"request_timeout_s": True}, "request_timeout_s"),
        ({"max_k": 2.5}, "max_k must be a positive int"),
        ({"api_key": "  "}, "api_key is empty"),
        ({"max_colbert_tokens": 0}, "max_colbert_tokens"),
        ({"api_key": " padded"}, "printable ASCII without spaces"),
        ({"api_key": "two words"}, "printable ASCII without spaces"),
        ({"api_key": "clé"}, "printable ASCII without spaces"),
        ({"api_key": "line\nbreak"}, "printable ASCII without spaces"),
    ],
)
def test_config_refuses_bad_values(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        ServeConfig(**kwargs)
