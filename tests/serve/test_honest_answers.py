"""Answers that say what happened: an unexpected error is a 500 in the route's shape, a write's
answer is its outcome, a refusal names what cannot be honoured, /v1/* speaks OpenAI's 400."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from m3rag import Collection, M3Encoder
from m3rag.serve import ServeConfig, create_app

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model

KEY = "honest-key-0123"


@asynccontextmanager
async def client_of(app: Any) -> AsyncIterator[Any]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        yield client


def request(app: Any, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    """One request to ``app`` in process; a body is sent as ASCII JSON (escapes and all)."""

    async def go() -> Any:
        async with client_of(app) as client:
            if body is None:
                return await client.request(method, path, **kw)
            headers = {"content-type": "application/json", **kw.pop("headers", {})}
            return await client.request(
                method, path, content=json.dumps(body), headers=headers, **kw
            )

    return asyncio.run(go())


@pytest.fixture
def col(tiny_encoder: M3Encoder, tmp_path: Path) -> Iterator[Collection]:
    c = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    c.add(
        ["Paris is the capital of France.", "Berlin is in Germany.", "Tokyo is big."],
        ids=["p", "b", "t"],
    )
    c.commit()
    yield c
    c.close()


@pytest.fixture
def apps() -> Iterator[Any]:
    """``apps(...)``: ``create_app(...)``, its batchers stopped after the test."""
    made: list[Any] = []

    def make(*args: Any, **kw: Any) -> Any:
        app = create_app(*args, **kw)
        made.append(app)
        return app

    yield make
    for app in made:
        app.state.batcher.close()


# -- unexpected errors ----------------------------------------------------------------------------


class Broken:
    """The tiny encoder, failing every encode with an error no route expects."""

    def __init__(self, inner: M3Encoder) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_corpus(self, texts: Any, **kw: Any) -> Any:
        raise ZeroDivisionError("an unexpected failure")


def test_an_unexpected_error_is_a_500_in_the_routes_shape(apps, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    app = apps(Broken(tiny_encoder))
    r = request(app, "POST", "/embed", {"inputs": ["a"]})
    assert r.status_code == 500
    assert r.json()["error_type"] == "Backend" and "ZeroDivisionError" in r.json()["error"]
    r = request(app, "POST", "/v1/embeddings", {"input": ["a"]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


# -- writes ---------------------------------------------------------------------------------------


def test_a_slow_write_is_answered_with_its_outcome(apps, tiny_encoder, col) -> None:  # type: ignore[no-untyped-def]
    """A commit longer than request_timeout_s: the write lands, so its answer is 200, not a
    503 that a retry would contradict."""
    commit = col.commit

    def slow_commit() -> Any:
        time.sleep(0.8)
        return commit()

    col.commit = slow_commit  # type: ignore[method-assign]
    app = apps(
        tiny_encoder, collection=col, config=ServeConfig(allow_writes=True, request_timeout_s=0.3)
    )
    r = request(app, "POST", "/documents", {"documents": [{"id": "n", "text": "new"}]})
    assert r.status_code == 200 and r.json() == {"ids": ["n"], "count": 4}
    r = request(app, "POST", "/documents/delete", {"ids": ["n"]})
    assert r.status_code == 200 and r.json() == {"deleted": 1, "count": 3}
    assert col.count() == 3


def test_an_id_named_twice_is_deleted_once(apps, tiny_encoder, col) -> None:  # type: ignore[no-untyped-def]
    app = apps(tiny_encoder, collection=col, config=ServeConfig(allow_writes=True))
    r = request(app, "POST", "/documents/delete", {"ids": ["p"] * 500 + ["b"]})
    assert r.status_code == 200 and r.json() == {"deleted": 2, "count": 1}


INT64_EDGES = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**400]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    value=st.sampled_from(INT64_EDGES) | st.integers(-(2**80), 2**80),
    nest=st.sampled_from(["flat", "dict", "list"]),
)
@example(value=10**400, nest="list")
def test_metadata_ints_beyond_int64_are_refused_on_write(
    apps, tiny_encoder, col, value, nest
) -> None:  # type: ignore[no-untyped-def]
    """Filters compare 64-bit integers: a larger one is refused with 422, and nothing is
    written; one within the range is stored."""
    app = apps(tiny_encoder, collection=col, config=ServeConfig(allow_writes=True))
    field = {"flat": value, "dict": {"inner": value}, "list": [1, value]}[nest]
    doc = {"id": "m", "text": "metadata test", "metadata": {"n": field}}
    before = col.count()
    r = request(app, "POST", "/documents", {"documents": [{"text": "ok"}, doc]})
    if -(2**63) <= value < 2**63:
        assert r.status_code == 200, r.text
        assert dict(col.get("m")[0].metadata) == {"n": field}
        request(app, "POST", "/documents/delete", {"ids": ["m", r.json()["ids"][0]]})
    else:
        assert r.status_code == 422 and "documents[1].metadata.n" in r.json()["error"]
        assert "64-bit" in r.json()["error"]
        assert col.count() == before


# -- what cannot be honoured is refused -----------------------------------------------------------


def test_embed_refuses_dimensions_and_prompts_it_cannot_honour(apps, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    app = apps(tiny_encoder)
    r = request(app, "POST", "/embed", {"inputs": "a", "dimensions": 8})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    assert "dimensions=8" in r.json()["error"]
    r = request(app, "POST", "/embed", {"inputs": "a", "dimensions": tiny_encoder.dim})
    assert r.status_code == 200 and len(r.json()[0]) == tiny_encoder.dim
    for route in ("/embed", "/embed_sparse"):
        r = request(app, "POST", route, {"inputs": "a", "prompt_name": "no-such-prompt"})
        assert r.status_code == 422 and "no-such-prompt" in r.json()["error"]


def test_recall_k_is_capped(apps, tiny_encoder, col) -> None:  # type: ignore[no-untyped-def]
    app = apps(tiny_encoder, collection=col, config=ServeConfig(max_recall_k=50))
    r = request(app, "POST", "/search", {"query": "capital", "recall_k": 10**9})
    assert r.status_code == 422 and "recall_k=1000000000" in r.json()["error"]
    assert "50" in r.json()["error"]
    r = request(app, "POST", "/search", {"query": "capital", "recall_k": 50})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body", [{"input": []}, {"input": ["ok", "\ud800"]}, {"input": "a", "dimensions": 7}]
)
def test_openai_route_refuses_with_400_in_openai_shape(apps, tiny_encoder, body) -> None:  # type: ignore[no-untyped-def]
    """OpenAI answers 400 for every invalid request, the server's own checks included."""
    r = request(apps(tiny_encoder), "POST", "/v1/embeddings", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/", "/health", "/ready"])
def test_open_paths_answer_head_without_a_key(apps, tiny_encoder, path) -> None:  # type: ignore[no-untyped-def]
    app = apps(tiny_encoder, config=ServeConfig(api_key=KEY))
    assert request(app, "HEAD", path).status_code == 200
    assert request(app, "HEAD", "/info").status_code == 401


def test_the_app_cuts_a_body_that_never_arrives_whole(apps, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    """The app's guard reads bodies under request_timeout_s."""
    app = apps(tiny_encoder, config=ServeConfig(request_timeout_s=0.2))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/embed",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    first = [{"type": "http.request", "body": b'{"inputs":', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if first:
            return first.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert sent[0]["status"] == 408
