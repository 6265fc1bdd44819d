"""A bad text fails its own request only, never the others in the same shared batch.

Two guards: every route checks its texts before they are queued (so a bad one never reaches
the model), and the batcher runs a batch refused for its input again one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m3rag._inputs import validate_texts
from m3rag.serve.batching import DynamicBatcher
from m3rag.types import M3Output

BAD = "\ud800"  # a lone surrogate: no tokenizer takes it


class GatedEncoder:
    """Encodes each text as ``[len(text), first code point]``; refuses a batch as M3Encoder
    does (naming the bad text's index in the batch); its first call waits for ``gate``."""

    query_max_length = passage_max_length = 512

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def encode_corpus(self, texts: list[str], **_: Any) -> M3Output:
        if not self.calls:
            self.gate.wait(10)
        self.calls.append(list(texts))
        validate_texts(texts)
        dense = np.array([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=np.float32)
        return M3Output.build(dense_vecs=dense)

    encode_queries = encode_corpus


JOBS = st.lists(
    st.lists(
        st.text(alphabet="ab c", max_size=6) | st.sampled_from([BAD, "x" + BAD]),
        min_size=1,
        max_size=4,
    ),
    min_size=2,
    max_size=6,
)


def submit(batcher: DynamicBatcher, texts: list[str], done: Any) -> None:
    batcher.submit(texts, kind="passage", dense=True, sparse=False, colbert=False, done=done)


@settings(max_examples=60, deadline=None)
@given(jobs=JOBS)
def test_a_batch_refused_for_one_jobs_text_fails_that_job_only(jobs: list[list[str]]) -> None:
    encoder = GatedEncoder()
    batcher = DynamicBatcher(encoder, max_wait_ms=0, max_batch_tokens=10**6)
    results: dict[int, tuple[Any, BaseException | None]] = {}
    finished = threading.Event()

    def done_for(i: int) -> Any:
        def done(out: Any, exc: BaseException | None) -> None:
            results[i] = (out, exc)
            if len(results) == len(jobs) + 1:
                finished.set()

        return done

    try:
        # the first job holds the model while the others queue: they run as one batch
        submit(batcher, ["gate"], done_for(-1))
        deadline = time.monotonic() + 10
        while not batcher._running:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for i, texts in enumerate(jobs):
            submit(batcher, texts, done_for(i))
        encoder.gate.set()
        assert finished.wait(10)
    finally:
        encoder.gate.set()
        batcher.close()
    assert encoder.calls[1] == [t for texts in jobs for t in texts]  # one shared batch
    for i, texts in enumerate(jobs):
        out, exc = results[i]
        bad = [j for j, t in enumerate(texts) if BAD in t]
        if bad:
            # the error counts the job's own texts, not the batch's
            assert isinstance(exc, ValueError) and f"texts[{bad[0]}]" in str(exc), exc
        else:
            assert exc is None
            assert out.dense_vecs[:, 0].tolist() == [len(t) for t in texts]


# -- every route checks its texts before they join a batch ----------------------------------------

httpx = pytest.importorskip("httpx")


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[Any]:
    """An in-process client of ``app``, its lifespan run (the batchers stopped after)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=60
        ) as client:
            yield client


class Recording:
    """The tiny encoder, recording every text it is given, each call held ``delay`` seconds."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.seen: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_corpus(self, texts: Any, **kw: Any) -> Any:
        self.seen.extend(texts)
        time.sleep(self.delay)
        return self.inner.encode_corpus(texts, **kw)

    def encode_queries(self, texts: Any, **kw: Any) -> Any:
        self.seen.extend(texts)
        time.sleep(self.delay)
        return self.inner.encode_queries(texts, **kw)


# a good and a bad body per route that encodes: (route, good, bad, where the bad text is named)
ROUTES = [
    ("/embed", {"inputs": ["an innocent text"]}, {"inputs": ["ok", BAD]}, "inputs[1]"),
    ("/", {"inputs": "an innocent text"}, {"inputs": BAD}, "inputs[0]"),
    ("/embed_sparse", {"inputs": ["innocent"]}, {"inputs": [BAD]}, "inputs[0]"),
    ("/embed_all", {"inputs": ["innocent"]}, {"inputs": ["a", "b", BAD]}, "inputs[2]"),
    ("/v1/embeddings", {"input": ["innocent"]}, {"input": ["a" + BAD]}, "input[0]"),
    ("/search", {"query": "capital", "k": 2}, {"query": "capital " + BAD}, "query"),
    (
        "/documents",
        {"documents": [{"text": "a new text"}]},
        {"documents": [{"text": "fine"}, {"text": BAD}]},
        "documents[1].text",
    ),
]


@pytest.mark.model
@pytest.mark.parametrize(("route", "good", "bad", "named"), ROUTES, ids=[r[0] for r in ROUTES])
async def test_a_bad_text_fails_its_own_request_only(
    tiny_encoder: Any, tmp_path: Path, route: str, good: Any, bad: Any, named: str
) -> None:
    from m3rag import Collection
    from m3rag.serve import ServeConfig, create_app

    col = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    col.add(["Paris is the capital of France.", "Berlin is a city."], ids=["p", "b"])
    col.commit()
    encoder = Recording(tiny_encoder, 0.3)
    app = create_app(
        encoder,
        collection=col,
        config=ServeConfig(allow_writes=True, max_wait_ms=20, wait_policy="always"),
    )

    async def post(client: Any, body: Any) -> Any:
        raw = json.dumps(body)  # ASCII: the lone surrogate as the escape a client sends
        headers = {"content-type": "application/json"}
        return await client.post(route, content=raw, headers=headers)

    async with served(app) as client:
        # a long request holds the model; the rest arrive meanwhile and share the next batch
        blocker = asyncio.create_task(client.post("/embed", json={"inputs": ["busy " * 50]}))
        await asyncio.sleep(0.1)
        answers = await asyncio.gather(*(post(client, b) for b in [good, good, bad, good]))
        assert (await blocker).status_code == 200
    refused = answers.pop(2)
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    if route.startswith("/v1/"):
        assert refused.status_code == 400
        assert named in refused.json()["error"]["message"]
    else:
        assert refused.status_code == 422
        assert named in refused.json()["error"] and "surrogate" in refused.json()["error"]
    # refused before it was queued: the model never saw it
    assert not any(BAD in t for t in encoder.seen)
    col.close()
