"""Hostile bodies on every POST route: a clear 4xx in the route's error shape, never a 5xx,
and a refused write changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _places import places
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag import Collection, M3Encoder, Reranker
from m3rag.serve import ServeConfig, create_app
from m3rag.testing import multilingual_corpus

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model

# a valid body per route: the fuzzer sends these with one field replaced, added or dropped
VALID: dict[str, dict[str, Any]] = {
    "/v1/embeddings": {"input": ["a text"], "model": "bge-m3", "encoding_format": "float"},
    "/": {"inputs": ["a text"]},
    "/embed": {"inputs": ["a text"], "truncate": True, "normalize": True},
    "/embed_sparse": {"inputs": ["a text"], "truncate": True},
    "/embed_all": {"inputs": ["a text"], "colbert_format": "base64", "kind": "passage"},
    "/rerank": {"query": "q", "texts": ["a", "b"], "raw_scores": False, "return_text": True},
    "/search": {
        "query": "capital",
        "k": 3,
        "filter": {"lang": "x"},
        "fusion": {"method": "rrf"},
        "highlight": True,
        "rerank": False,
        "min_score": 0.0,
        "recall_k": 10,
    },
    "/documents": {"documents": [{"text": "new text", "id": "n1", "metadata": {"a": 1}}]},
    "/documents/delete": {"ids": ["no-such-id"]},
}

# words the routes know (fields, operators, enum values), so bent bodies get past the schema
# and into the filters, the fusion and the writes, not only into the schema's refusals
WORDS = st.sampled_from(
    [
        *sorted({k for body in VALID.values() for k in body}),
        *("$eq", "$gt", "$gte", "$in", "$lt", "$lte", "$ne", "$and"),
        *("lang", "x", "i", "text", "id", "metadata", "weights", "normalization", "rrf_k"),
        *("dense", "lexical", "colbert", "bm25", "weighted", "rrf", "zscore", "minmax"),
        *("base64", "float", "json", "query", "passage", "d1", "n1", ""),
    ]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2**31, 2**63])
    | st.floats()  # NaN and the infinities too: Python's json writes and reads them
    | st.text(max_size=40)
    | WORDS
)
JSON = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(WORDS | st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A route and a body for it: a valid one bent in one place, any JSON, or not JSON at all."""
    route = draw(st.sampled_from(sorted(VALID)))
    kind = draw(st.sampled_from(["bend", "bend", "bend", "any", "bytes"]))
    if kind == "bytes":
        return route, draw(st.binary(max_size=64))
    if kind == "any":
        return route, json.dumps(draw(JSON)).encode()
    body = json.loads(json.dumps(VALID[route]))
    # a place anywhere in the body (a field of a document, an item of a list) or a new field
    parent, key = draw(st.sampled_from(list(places(body))))
    if draw(st.booleans()) and isinstance(parent, dict) and key in parent:
        del parent[key]
    elif isinstance(parent, list) and draw(st.booleans()):
        parent.append(draw(JSON))
    else:
        parent[key] = draw(JSON)
    return route, json.dumps(body).encode()


@pytest.fixture
def fuzzed(live, tiny_encoder: M3Encoder, tiny_reranker_path: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    col = Collection.create(tmp_path / "c", encoder=tiny_encoder, colbert_dtype="float32")
    docs = multilingual_corpus(12, seed=3, max_words=30)
    col.add(docs, ids=[f"d{i}" for i in range(len(docs))], metadata=[{"lang": "x"}] * len(docs))
    col.commit()
    app = create_app(
        tiny_encoder,
        reranker=Reranker(tiny_reranker_path, device="cpu"),
        collection=col,
        config=ServeConfig(max_wait_ms=1, allow_writes=True, max_client_batch_size=16),
    )
    return live(app), col


def _count(server: Any) -> int:
    return int(httpx.get(server.url + "/info", timeout=30).json()["index"]["count"])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=bodies())
def test_hostile_bodies_get_a_clear_4xx_and_change_nothing(fuzzed, case) -> None:  # type: ignore[no-untyped-def]
    server, _ = fuzzed
    route, body = case
    before = _count(server) if route.startswith("/documents") else None
    r = httpx.post(
        server.url + route, content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code < 500, (route, body, r.status_code, r.text)
    answer = r.json()
    if r.status_code >= 400:
        if route.startswith("/v1/"):
            assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
            assert answer["error"]["type"].endswith("_error")
        else:
            assert isinstance(answer["error"], str) and answer["error"]
            assert isinstance(answer["error_type"], str)
        if before is not None:
            assert _count(server) == before, (route, body, r.text)
    else:
        # an accepted body's numbers are numbers: no NaN or infinity leaks into an answer
        assert "NaN" not in r.text and "Infinity" not in r.text, (route, body, r.text)


def test_the_fuzzer_reaches_every_route_and_every_kind_of_body() -> None:
    """The strategy is not degenerate: it draws every route, bent and whole bodies alike."""
    seen: set[str] = set()
    kinds: set[str] = set()

    @settings(max_examples=300, database=None)
    @given(case=bodies())
    def draw(case: tuple[str, bytes]) -> None:
        route, body = case
        seen.add(route)
        try:
            kinds.add("json" if not isinstance(json.loads(body), dict) else "object")
        except (ValueError, UnicodeDecodeError):
            kinds.add("bytes")

    draw()
    assert seen == set(VALID) and kinds == {"json", "object", "bytes"}
