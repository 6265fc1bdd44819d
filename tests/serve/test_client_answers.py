"""The remote clients against a fake server: any answer that is not a well-formed m3rag answer
is a `RemoteError` (never a KeyError, a TypeError, a RecursionError or silently wrong results),
and a redirect is not followed (it would carry the API key)."""

from __future__ import annotations

import base64
import http.server
import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from _places import places
from hypothesis import example, given, settings
from hypothesis import strategies as st

from m3rag.serve.client import RemoteEncoder, RemoteError, RemoteReranker, RemoteRetriever

KEY = "client-key-0123"
INFO = {"heads": ["dense", "sparse", "colbert"], "dim": 4, "colbert_dim": 3}
DOCS = ["first passage", "second passage"]


class FakeServer(http.server.ThreadingHTTPServer):
    """Answers each path with the bytes (and status, headers) set in ``answers``; records the
    requests it gets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str, body: Any, *, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()  # NaN as JSON's NaN
        self.answers[path] = (200, {"Content-Type": "application/json"}, data)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        status, headers, body = self.server.answers.get(self.path, (404, {}, b"{}"))
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def matrix(rows: int) -> dict[str, Any]:
    data = np.arange(rows * 3, dtype="<f4").tobytes()
    return {"shape": [rows, 3], "dtype": "<f4", "data": base64.b64encode(data).decode()}


def embed_answer() -> dict[str, Any]:
    item = {
        "dense": [0.5, 0.5, 0.5, 0.5],
        "lexical_weights": {"7": 0.25},
        "colbert": matrix(2),
        "token_count": 3,
        "truncated": False,
    }
    return {"model": "bge-m3", "data": [item, json.loads(json.dumps(item))]}


def rerank_answer() -> list[dict[str, Any]]:
    return [{"index": 1, "score": 0.75}, {"index": 0, "score": 0.25}]


def search_answer() -> dict[str, Any]:
    hit = {
        "id": "d1",
        "text": "a text",
        "metadata": {"lang": "en"},
        "score": 0.5,
        "fused_score": 0.5,
        "rerank_score": None,
        "paths": {"dense": {"raw": 0.5, "normalized": 1.0, "rank": 1, "recalled": True}},
        "parent_id": None,
        "chunk_id": None,
        "chunks": 1,
    }
    return {"query": "q", "paths": ["dense"], "candidates": 1, "hits": [hit]}


VALID = {"/embed_all": embed_answer, "/rerank": rerank_answer, "/search": search_answer}

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 99])
    | st.floats()  # NaN and the infinities too: Python's json writes and reads them
    | st.text(max_size=12)
    | st.sampled_from(["data", "hits", "index", "score", "dense", "<f4", "AAAA", "!!"])
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@st.composite
def answers(draw: st.DrawFn, route: str) -> bytes:
    """An answer to ``route``: its valid answer bent in one place, any JSON, or not JSON."""
    kind = draw(st.sampled_from(["bend", "bend", "bend", "any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "any":
        return json.dumps(draw(JSON)).encode()
    body = VALID[route]()
    parent, key = draw(st.sampled_from(list(places(body))))
    action = draw(st.sampled_from(["replace", "delete", "append"]))
    if action == "delete" and (isinstance(parent, list) or key in parent):
        del parent[key]
    elif action == "append" and isinstance(parent, list):
        parent.append(draw(JSON))
    else:
        parent[key] = draw(JSON)
    return json.dumps(body).encode()


SETTINGS = settings(max_examples=150, deadline=None)


def outcome(call: Callable[[], Any]) -> tuple[Any, str | None]:
    """``call()``'s result and None, or None and the message of its `RemoteError` (any other
    exception fails the test)."""
    try:
        return call(), None
    except RemoteError as exc:
        return None, str(exc)


_COLBERT = b'{"shape": [2, 3], "dtype": "<f4", "data": "AAAAAAAAgD8AAABAAABAQAAAgEAAAKBA"}'
_ITEM = (
    b'{"dense": [0.5, 0.5, 0.5, 0.5], "lexical_weights": {"7": 0.25}, "colbert": '
    + _COLBERT
    + b', "token_count": 3, "truncated": false}'
)
_TWO_ITEMS = b'{"model": "bge-m3", "data": [' + _ITEM + b", " + _ITEM + b"]}"


@SETTINGS
@given(raw=answers("/embed_all"))
@example(raw=b"{}")
@example(raw=b"[]")
@example(raw=b"null")
@example(raw=b'"s"')
@example(raw=b'{"data": "x"}')
@example(raw=b'{"data": [{"dense": [1, 2, 3, 4]}, {"dense": [1, 2, 3]}]}')  # ragged
@example(raw=b'{"data": [{"dense": [NaN, 1, 2, 3]}, {"dense": [1, 2, 3, 4]}]}')
# past float32's range: infinity once read, refused as such (not a numpy overflow warning)
@example(raw=_TWO_ITEMS.replace(b"[0.5, 0.5", b"[3.5e38, 0.5", 1))
@example(raw=_TWO_ITEMS.replace(_COLBERT, b"[[3.5e38, 1, 2], [1, 2, 3]]", 1))
@example(raw=b"[" * 100_000 + b"]" * 100_000)  # deeper than the parser recurses
@example(raw=b'{"data": [{"colbert": {"dtype": "<f4", "shape": [3, 3], "data": "AAAA"}}]}')
@example(raw=b'{"data": [{"colbert": {"dtype": "<f4", "shape": [1, 1], "data": "!!!"}}]}')
def test_encoder_answers_are_checked(fake: FakeServer, raw: bytes) -> None:
    fake.answer("/info", INFO)
    fake.answer("/embed_all", None, raw=raw)
    out, error = outcome(lambda: RemoteEncoder(fake.url).encode_corpus(["a", "b"]))
    if error is not None:
        assert "answered /embed_all" in error
        return
    assert len(out) == 2
    assert out.dense_vecs is not None and out.dense_vecs.shape == (2, 4)
    assert np.isfinite(out.dense_vecs).all()
    assert out.lexical_weights is not None and out.colbert_vecs is not None
    assert all(math.isfinite(w) for d in out.lexical_weights for w in d.values())
    assert all(m.ndim == 2 and m.shape[1] == 3 and np.isfinite(m).all() for m in out.colbert_vecs)


@SETTINGS
@given(raw=answers("/rerank"))
@example(raw=b'[{"index": 99, "score": 0.5}, {"index": 0, "score": 0.5}]')
@example(raw=b'[{"score": 0.5}, {"score": 0.4}]')
@example(raw=b"{}")
@example(raw=b"[]")  # no result for two passages: not "nothing relevant"
@example(raw=b'[{"index": 0, "score": 0.5}, {"index": 0, "score": 0.5}]')
@example(raw=b'[{"index": 0, "score": NaN}, {"index": 1, "score": 0.5}]')
def test_reranker_answers_are_checked(fake: FakeServer, raw: bytes) -> None:
    fake.answer("/rerank", None, raw=raw)
    result, error = outcome(lambda: RemoteReranker(fake.url).rerank("q", DOCS))
    if error is not None:
        assert "answered /rerank" in error
        return
    assert sorted(r.index for r in result) == [0, 1]
    assert [r.passage for r in result] == [DOCS[r.index] for r in result]
    assert all(math.isfinite(r.score) for r in result)


@SETTINGS
@given(raw=answers("/search"))
@example(raw=b"{}")
@example(raw=b'{"hits": null, "query": "q", "paths": [], "candidates": 1}')
@example(raw=b'{"hits": [{}], "query": "q", "paths": [], "candidates": 1}')
@example(raw=b"[]")
def test_retriever_answers_are_checked(fake: FakeServer, raw: bytes) -> None:
    fake.answer("/search", None, raw=raw)
    results, error = outcome(lambda: RemoteRetriever(fake.url).retrieve("q", k=1))
    if error is not None:
        assert "answered /search" in error
        return
    assert len(results) <= 1
    assert all(math.isfinite(h.score) and math.isfinite(h.fused_score) for h in results)


def test_the_valid_answers_are_read(fake: FakeServer) -> None:
    """The family's starting points are well formed: the checks refuse only what is bent."""
    fake.answer("/info", INFO)
    for route, make in VALID.items():
        fake.answer(route, make())
    out = RemoteEncoder(fake.url).encode_corpus(["a", "b"])
    assert out.dense_vecs.shape == (2, 4) and out.colbert_vecs[0].shape == (2, 3)
    assert RemoteReranker(fake.url).rerank("q", DOCS).indices == [1, 0]
    assert RemoteRetriever(fake.url).retrieve("q", k=1).ids == ["d1"]


def test_a_redirect_is_not_followed_with_the_key(fake: FakeServer) -> None:
    other = FakeServer()
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        other.answer("/steal", search_answer())
        where = other.url + "/steal"
        for status in (301, 302, 307, 308):
            fake.answers["/search"] = (status, {"Location": where}, b"")
            with pytest.raises(RemoteError, match="redirect") as info:
                RemoteRetriever(fake.url, api_key=KEY).retrieve("q")
            assert info.value.status == status and where in str(info.value)
        assert other.seen == []
    finally:
        other.shutdown()
        other.server_close()
