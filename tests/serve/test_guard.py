"""The server's outer ASGI layer on its own: body limit, API key, what it records."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")

from m3rag.serve.guard import Guard, route_labels

KEY = "k3y-Z9_x+/="
LIMIT = 64


class Inner:
    """An app that records the body it read and answers 200 (or raises, before or after it
    starts its answer)."""

    def __init__(self, *, fail: bool = False, fail_late: bool = False) -> None:
        self.calls: list[bytes] = []
        self.after_body: list[dict[str, Any]] = []
        self.fail = fail
        self.fail_late = fail_late

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # a live server's lifespan: nothing to start
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.calls.append(body)
        self.after_body.append(await receive())
        if self.fail:
            raise RuntimeError("the route broke")
        scope["route"] = type("Route", (), {"path": "/embed"})()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if self.fail_late:
            raise RuntimeError("the route broke mid-answer")
        await send({"type": "http.response.body", "body": b"[]"})


def call(
    guard: Guard,
    chunks: list[bytes],
    *,
    path: str = "/embed",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    disconnect_after: int | None = None,
) -> tuple[int | None, Any]:
    """Run one request through ``guard``: the status and JSON body it sent (None if none)."""
    raw_headers = [
        (k.lower().encode("latin-1"), v.encode("utf-8")) for k, v in (headers or {}).items()
    ]
    scope = {"type": "http", "method": method, "path": path, "headers": raw_headers}
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks or [b""])
    ]
    if disconnect_after is not None:
        messages = messages[:disconnect_after]
    messages.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if body else None


def make(
    inner: Inner, *, key: str | None = None, body_timeout: float | None = None
) -> tuple[Guard, list[tuple[str, int, Any]]]:
    records: list[tuple[str, int, Any]] = []
    guard = Guard(
        inner,
        key=key.encode("utf-8") if key is not None else None,
        max_request_bytes=LIMIT,
        open_paths={"/health"},
        record=lambda route, status, seconds: records.append((route, status, seconds)),
        label=lambda path: path if path in {"/embed", "/v1/embeddings", "/health"} else "other",
        body_timeout=body_timeout,
    )
    return guard, records


@settings(max_examples=150, deadline=None)
@given(
    # sizes drawn evenly (``st.binary`` alone keeps to a few bytes), so half are over the limit
    body=st.integers(0, 2 * LIMIT).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    cuts=st.lists(st.integers(0, 3 * LIMIT), max_size=6),
    declared=st.booleans(),
    path=st.sampled_from(["/embed", "/v1/embeddings"]),
)
@example(body=b"x" * LIMIT, cuts=[1], declared=False, path="/embed")
@example(body=b"x" * (LIMIT + 1), cuts=[LIMIT], declared=False, path="/embed")
def test_a_body_over_the_limit_is_refused_however_it_arrives(
    body: bytes, cuts: list[int], declared: bool, path: str
) -> None:
    """Chunked or not, with or without Content-Length: over the limit is 413, in the route's
    error shape, and the app never runs; within it the app gets the exact bytes once."""
    bounds = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)] or [b""]
    inner = Inner()
    guard, records = make(inner)
    headers = {"content-length": str(len(body))} if declared else {}
    status, answer = call(guard, chunks, path=path, headers=headers)
    if len(body) > LIMIT:
        assert status == 413 and inner.calls == []
        message = answer["error"]["message"] if path.startswith("/v1/") else answer["error"]
        assert str(LIMIT) in message and "--max-request-bytes" in message
        assert records == [(path, 413, None)]
    else:
        assert status == 200 and inner.calls == [body]
        assert inner.after_body == [{"type": "http.disconnect"}]
        assert len(records) == 1 and records[0][:2] == ("/embed", 200)


@settings(max_examples=150, deadline=None)
@given(
    given_header=st.one_of(
        st.none(),
        st.text(max_size=20),
        st.builds(
            lambda s, t: f"{s} {t}",
            st.sampled_from(["Bearer", "bearer", "Basic"]),
            st.text(max_size=12),
        ),
        st.sampled_from([f"Bearer {KEY}", f"bearer  {KEY} ", KEY, f"Bearer {KEY}x"]),
    ),
    method=st.sampled_from(["GET", "POST", "OPTIONS"]),
    path=st.sampled_from(["/health", "/embed", "/nowhere"]),
)
def test_only_the_key_opens_keyed_routes(given_header: str | None, method: str, path: str) -> None:
    inner = Inner()
    guard, records = make(inner, key=KEY)
    try:
        raw = (given_header or "").encode("utf-8")  # what a client sends
    except UnicodeEncodeError:  # a lone surrogate cannot be sent at all
        assume(False)
    headers = {"authorization": given_header} if given_header is not None else {}
    status, answer = call(guard, [b"{}"], path=path, method=method, headers=headers)
    scheme, _, token = raw.partition(b" ")
    right = scheme.lower() == b"bearer" and token.strip() == KEY.encode("utf-8")
    opened = right or method == "OPTIONS" or (path == "/health" and method == "GET")
    if opened:
        assert status == 200 and len(inner.calls) == 1
    else:
        assert status == 401 and inner.calls == [] and answer["error_type"] == "Unauthorized"
        assert records == [("other" if path == "/nowhere" else path, 401, None)]


@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings"])
def test_a_route_that_raises_gets_a_500_in_its_shape_logged_once(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the framework's plain-text "Internal Server Error": JSON in the route's shape, and
    one log record, with the traceback but without the body or the key."""
    inner = Inner(fail=True)
    guard, records = make(inner, key=KEY)
    headers = {"authorization": f"Bearer {KEY}"}
    with caplog.at_level("DEBUG"):
        status, answer = call(guard, [b'{"inputs": "private words"}'], path=path, headers=headers)
    assert status == 500
    if path.startswith("/v1/"):
        assert answer["error"]["type"] == "server_error"
        assert "RuntimeError" in answer["error"]["message"]
    else:
        assert answer["error_type"] == "Backend" and "RuntimeError" in answer["error"]
    assert [r[:2] for r in records] == [("other", 500)]
    logged = [r for r in caplog.records if r.name == "m3rag.serve.guard"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    text = caplog.text
    assert "the route broke" in text and path in text
    assert "private words" not in text and KEY not in text


def test_a_route_that_raises_mid_answer_is_left_to_the_server() -> None:
    """Half an answer is out: no second one can follow, the server closes the connection."""
    guard, records = make(Inner(fail_late=True))
    with pytest.raises(RuntimeError, match="mid-answer"):
        call(guard, [b"{}"])
    assert [r[:2] for r in records] == [("/embed", 200)]


@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings"])
def test_a_body_that_never_arrives_whole_gets_408_and_a_closed_connection(path: str) -> None:
    inner = Inner()
    guard, records = make(inner, body_timeout=0.2)
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    first = [{"type": "http.request", "body": b'{"inputs":', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if first:
            return first.pop()
        await asyncio.Event().wait()  # the rest of the body never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await asyncio.wait_for(guard(scope, receive, send), 10)

    asyncio.run(run())
    start = sent[0]
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    answer = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    message = answer["error"]["message"] if path.startswith("/v1/") else answer["error"]
    assert "0.2 s" in message
    assert inner.calls == [] and records == [(path, 408, None)]


def test_a_slow_body_is_cut_on_a_real_connection(live) -> None:  # type: ignore[no-untyped-def]
    """Content-Length 1000, 10 bytes sent, then nothing: 408, and the server hangs up."""
    guard, _ = make(Inner(), body_timeout=0.5)
    guard.max_request_bytes = 10_000
    server = live(guard)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"inputs":'
        )
        got = b""
        while chunk := s.recv(65536):  # until the server closes the connection
            got += chunk
    assert got.startswith(b"HTTP/1.1 408"), got
    assert b"did not arrive whole" in got


def test_a_client_gone_mid_body_gets_nothing_and_runs_nothing() -> None:
    inner = Inner()
    guard, records = make(inner)
    status, _ = call(guard, [b"ab", b"cd", b"ef"], disconnect_after=1)
    assert status is None and inner.calls == [] and records == []


def test_route_labels_follow_routes_added_later() -> None:
    routes: list[Any] = []
    label = route_labels(routes)
    assert label("/embed") == "other"
    routes.append(type("Route", (), {"path": "/embed"})())
    assert label("/embed") == "/embed" and label("/x/../embed") == "other"
