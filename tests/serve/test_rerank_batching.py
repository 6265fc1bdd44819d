"""Reranking in the server: concurrent /rerank requests and reranked searches share batches."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3rag import Collection, HybridRetriever, Reranker
from m3rag.serve import ServeConfig, create_app
from m3rag.serve.batching import BatchedReranker, QueueFullError, RerankBatcher
from m3rag.testing import multilingual_corpus

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model

DOCS = multilingual_corpus(24, seed=5, max_words=50)
QUERIES = ["What is the capital of France?", "北京 首都", "BGE M3 retrieval", "a b c d"]


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker(tiny_reranker_path, device="cpu")


class SlowReranker:
    """The tiny reranker with a delay before each `score` call, counting the calls."""

    def __init__(self, inner: Reranker, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, 0
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score(self, pairs: Any, **kw: Any) -> Any:
        self.calls += 1
        self.batch_sizes.append(len(pairs))
        time.sleep(self.delay)
        return self.inner.score(pairs, **kw)

    def rerank(self, *a: Any, **kw: Any) -> Any:  # the server must never call it directly
        raise AssertionError("the server reranked outside its batcher")


def post(server: Any, path: str, body: Any) -> Any:
    return httpx.post(server.url + path, json=body, timeout=30)


def test_concurrent_rerank_requests_share_batches(live, tiny_encoder, reranker) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReranker(reranker, 0.2)
    server = live(create_app(tiny_encoder, reranker=slow, config=ServeConfig(max_wait_ms=200)))
    jobs = [(q, DOCS[i * 3 : i * 3 + 5], raw) for i, q in enumerate(QUERIES * 2) for raw in (0, 1)]

    async def burst() -> list[Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/rerank",
                        json={"query": q, "texts": texts, "raw_scores": bool(raw)},
                    )
                    for q, texts, raw in jobs
                )
            )

    responses = asyncio.run(burst())
    for r, (q, texts, raw) in zip(responses, jobs, strict=True):
        assert r.status_code == 200, r.text
        want = reranker.rerank(q, texts, normalize=not raw)
        assert [x["index"] for x in r.json()] == want.indices
        np.testing.assert_allclose([x["score"] for x in r.json()], want.scores, atol=1e-5)
    assert slow.calls < len(jobs) / 2, f"{slow.calls} reranker calls for {len(jobs)} requests"
    assert max(slow.batch_sizes) > 5  # some call held pairs of several requests
    assert sum(slow.batch_sizes) == sum(len(texts) for _, texts, _ in jobs)  # each pair once
    metrics = httpx.get(server.url + "/metrics").text
    assert f"m3rag_rerank_batch_pairs_count {float(slow.calls)}" in metrics
    assert "m3rag_queued_pairs 0.0" in metrics


def test_a_bad_request_fails_alone(live, tiny_encoder, reranker) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReranker(reranker, 0.2)
    server = live(create_app(tiny_encoder, reranker=slow, config=ServeConfig(max_wait_ms=50)))
    bodies = [
        {"query": QUERIES[0], "texts": DOCS[:4]},
        {"query": QUERIES[1], "texts": ["fine", "bad \ud800 surrogate"]},
        {"query": QUERIES[2], "texts": DOCS[4:8]},
    ]

    async def burst() -> list[Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            # the lone surrogate cannot travel as UTF-8 JSON: send it escaped, as JSON allows
            head = {"content-type": "application/json"}
            return await asyncio.gather(
                *(
                    client.post("/rerank", content=json.dumps(b, ensure_ascii=True), headers=head)
                    for b in bodies
                )
            )

    ok1, bad, ok2 = asyncio.run(burst())
    assert bad.status_code == 422 and "surrogate" in bad.json()["error"]
    for r, b in ((ok1, bodies[0]), (ok2, bodies[2])):
        assert r.status_code == 200, r.text
        want = reranker.rerank(b["query"], b["texts"], normalize=True)
        assert [x["index"] for x in r.json()] == want.indices


def test_reranked_searches_go_through_the_batcher(live, tiny_encoder, reranker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReranker(reranker, 0.0)
    with Collection.create(tmp_path / "c", encoder=tiny_encoder) as col:
        col.add(DOCS, ids=[f"d{i}" for i in range(len(DOCS))])
        col.commit()
        server = live(create_app(tiny_encoder, reranker=slow, collection=col))
        local = HybridRetriever(col, encoder=tiny_encoder, reranker=reranker)
        for q in QUERIES:
            want = local.retrieve(q, k=5)
            got = post(server, "/search", {"query": q, "k": 5, "rerank": True})
            assert got.status_code == 200, got.text
            assert [h["id"] for h in got.json()["hits"]] == want.ids
            np.testing.assert_allclose(
                [h["rerank_score"] for h in got.json()["hits"]],
                [h.rerank_score for h in want],
                atol=1e-5,
            )
        assert slow.calls == len(QUERIES)


@pytest.mark.parametrize("top_n", [None, 1, 3])
@pytest.mark.parametrize("normalize", [False, True])
def test_batched_reranker_ranks_as_the_reranker(reranker, top_n, normalize) -> None:  # type: ignore[no-untyped-def]
    batcher = RerankBatcher(reranker, max_wait_ms=1)
    try:
        batched = BatchedReranker(batcher, timeout=30)
        for q in QUERIES:
            want = reranker.rerank(q, DOCS[:6], top_n=top_n, normalize=normalize)
            got = batched.rerank(q, DOCS[:6], top_n=top_n, normalize=normalize)
            assert got.indices == want.indices
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
            assert got.truncated_indices == want.truncated_indices
        assert batched.rerank(QUERIES[0], []).indices == []
        assert batched.max_length == reranker.max_length  # the rest passes through
        with pytest.raises(ValueError, match="top_n"):
            batched.rerank(QUERIES[0], DOCS[:2], top_n=0)
        with pytest.raises(TypeError, match="single string"):
            batched.rerank(QUERIES[0], "one passage")  # type: ignore[arg-type]
    finally:
        batcher.close()


def test_rerank_queue_bound_and_timeout(reranker) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReranker(reranker, 0.5)
    batcher = RerankBatcher(slow, max_queued_texts=3, max_wait_ms=0)
    try:
        pairs = [(QUERIES[0], d) for d in DOCS[:2]]
        first = threading.Thread(target=batcher.score_blocking, args=(pairs,))
        first.start()
        time.sleep(0.1)  # the first job is in the model; the next two wait
        waiting = threading.Thread(target=batcher.score_blocking, args=(pairs,))
        waiting.start()
        time.sleep(0.05)
        with pytest.raises(QueueFullError, match="limit 3"):
            batcher.score_blocking(pairs)
        with pytest.raises(TimeoutError):
            batcher.score_blocking([(QUERIES[1], DOCS[0])], timeout=0.01)
        first.join()
        waiting.join()
    finally:
        batcher.close()


def test_full_rerank_queue_answers_429(live, tiny_encoder, reranker) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReranker(reranker, 0.5)
    server = live(
        create_app(
            tiny_encoder, reranker=slow, config=ServeConfig(max_queued_texts=4, max_wait_ms=0)
        )
    )

    async def burst() -> list[Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
                    for _ in range(8)
                )
            )

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert 429 in codes and 200 in codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"


def test_the_rerank_batcher_refuses_its_own_thread(reranker) -> None:  # type: ignore[no-untyped-def]
    box: list[BaseException] = []

    class Reentrant(SlowReranker):
        def score(self, pairs: Any, **kw: Any) -> Any:
            try:
                batcher.score_blocking(pairs)
            except RuntimeError as exc:
                box.append(exc)
            return self.inner.score(pairs, **kw)

    batcher = RerankBatcher(Reentrant(reranker, 0.0), max_wait_ms=0)
    try:
        batcher.score_blocking([(QUERIES[0], DOCS[0])], timeout=30)
    finally:
        batcher.close()
    assert box and "own thread" in str(box[0])


def test_a_search_refused_by_the_rerank_queue_is_429(
    live, tiny_encoder, reranker, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReranker(reranker, 0.6)
    with Collection.create(tmp_path / "c", encoder=tiny_encoder) as col:
        col.add(DOCS, ids=[f"d{i}" for i in range(len(DOCS))])
        col.commit()
        cfg = ServeConfig(max_queued_texts=4, max_wait_ms=0)
        server = live(create_app(tiny_encoder, reranker=slow, collection=col, config=cfg))

        async def burst() -> list[Any]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                busy = asyncio.ensure_future(
                    client.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
                )
                await asyncio.sleep(0.2)  # in the model now
                queued = asyncio.ensure_future(
                    client.post("/rerank", json={"query": "q", "texts": ["c", "d"]})
                )
                await asyncio.sleep(0.1)  # waiting behind it
                search = await client.post("/search", json={"query": "q", "k": 5, "rerank": True})
                return [search, await busy, await queued]

        search, busy, queued = asyncio.run(burst())
        assert busy.status_code == queued.status_code == 200
        assert search.status_code == 429, search.text
        assert search.headers["retry-after"] == "1" and "retry" in search.json()["error"]
