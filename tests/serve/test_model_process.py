"""Models in a child process: the same outputs as in-process, errors that cross, death reported."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag.errors import InputTooLongError, ModelLoadError, ModelProcessError
from m3rag.serve.process import (
    ModelProcess,
    ProcessEncoder,
    ProcessReranker,
    _portable,
    _raise,
)

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model

TEXTS = ["What is BGE M3?", "北京是中国的首都。", "", "a b c " * 40, "Paris is in France."]


@pytest.fixture(scope="module")
def proc_encoder(tiny_m3_path: Path) -> Iterator[ProcessEncoder]:
    with ProcessEncoder(model_name_or_path=str(tiny_m3_path), device="cpu") as enc:
        yield enc


@pytest.fixture(scope="module")
def proc_reranker(tiny_reranker_path: Path) -> Iterator[ProcessReranker]:
    with ProcessReranker(model_name_or_path=str(tiny_reranker_path), device="cpu") as rr:
        yield rr


def assert_same_output(a: Any, b: Any) -> None:
    for name in ("dense_vecs", "token_counts", "truncated"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.lexical_weights == b.lexical_weights
    assert (a.colbert_vecs is None) == (b.colbert_vecs is None)
    for x, y in zip(a.colbert_vecs or [], b.colbert_vecs or [], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("method", ["encode_queries", "encode_corpus"])
def test_outputs_equal_the_in_process_encoder(proc_encoder, tiny_encoder, method) -> None:  # type: ignore[no-untyped-def]
    heads = {"dense": True, "sparse": True, "colbert": True}
    got = getattr(proc_encoder, method)(TEXTS, **heads)
    want = getattr(tiny_encoder, method)(TEXTS, **heads)
    assert_same_output(got, want)
    one = getattr(proc_encoder, method)("one text")  # a str as in-process: one row
    assert_same_output(one, getattr(tiny_encoder, method)("one text"))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_any_texts_encode_as_in_process(proc_encoder, tiny_encoder, texts) -> None:  # type: ignore[no-untyped-def]
    try:
        want = tiny_encoder.encode_corpus(texts, sparse=True, colbert=True)
    except Exception as exc:
        with pytest.raises(type(exc)):
            proc_encoder.encode_corpus(texts, sparse=True, colbert=True)
        return
    assert_same_output(proc_encoder.encode_corpus(texts, sparse=True, colbert=True), want)
    counted = proc_encoder.count_tokens(texts, max_length=tiny_encoder.query_max_length)
    np.testing.assert_array_equal(
        counted, tiny_encoder.count_tokens(texts, max_length=tiny_encoder.query_max_length)
    )


def test_counting_tokens_never_waits_on_the_child(proc_encoder, tiny_encoder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The server counts a long request's tokens before encoding it: with the tokenizer here,
    not over the pipe, where the count would queue behind the batch the child is running."""
    texts = ["a b c", "北京是中国的首都。", "word " * 5000]
    want = tiny_encoder.count_tokens(texts)
    proc_encoder.tokenizer  # noqa: B018 - fetched from the child once, as the server's first count does
    monkeypatch.setattr(
        proc_encoder.process, "call", lambda *_, **__: pytest.fail("counted over the pipe")
    )
    np.testing.assert_array_equal(proc_encoder.count_tokens(texts), want)
    with pytest.raises(InputTooLongError):
        proc_encoder.count_tokens(texts, max_length=tiny_encoder.max_length + 1)
    with pytest.raises(ValueError, match="max_length"):
        proc_encoder.count_tokens(texts, max_length=2)


def test_attributes_and_fingerprint_are_the_encoders(proc_encoder, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    for name in ("heads", "dim", "colbert_dim", "vocab_size", "max_length", "query_max_length"):
        assert getattr(proc_encoder, name) == getattr(tiny_encoder, name), name
    assert proc_encoder.fingerprint() == tiny_encoder.fingerprint()
    assert proc_encoder.dtype == "float32"
    assert proc_encoder.device == "cpu"
    # read on demand from the child: the tokenizer, which the chunker cuts with
    ids = proc_encoder.tokenizer("hello world")["input_ids"]
    assert ids == tiny_encoder.tokenizer("hello world")["input_ids"]
    with pytest.raises(AttributeError):
        proc_encoder.no_such_attribute  # noqa: B018
    assert proc_encoder.alive
    assert f"pid={proc_encoder.process.pid}" in repr(proc_encoder)


def test_a_collection_opens_with_a_process_encoder(proc_encoder, tiny_encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag import Collection, HybridRetriever

    with Collection.create(tmp_path / "c", encoder=tiny_encoder) as col:
        col.add(TEXTS[:2] + TEXTS[3:], ids=["a", "b", "c", "d"])
        col.commit()
    with Collection.open(tmp_path / "c", encoder=proc_encoder, read_only=True) as col:
        got = HybridRetriever(col, encoder=proc_encoder).retrieve("capital of France", k=4)
        want = HybridRetriever(col, encoder=tiny_encoder).retrieve("capital of France", k=4)
    assert [(h.id, h.score) for h in got] == [(h.id, h.score) for h in want]


def test_errors_cross_with_their_type(proc_encoder, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    for bad in (123, [1, 2], ["ok", None]):
        with pytest.raises(TypeError) as want:
            tiny_encoder.encode_corpus(bad)
        with pytest.raises(TypeError) as got:
            proc_encoder.encode_corpus(bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(TypeError, match="unexpected keyword"):
        proc_encoder.encode_corpus(["x"], no_such_option=True)
    # the child keeps answering after errors
    assert_same_output(proc_encoder.encode_corpus(["x"]), tiny_encoder.encode_corpus(["x"]))


def test_reranker_equals_in_process(proc_reranker, tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag import Reranker

    rr = Reranker(tiny_reranker_path, device="cpu")
    pairs = [("capital of France", t) for t in TEXTS]
    got, want = proc_reranker.score(pairs), rr.score(pairs)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.truncated, want.truncated)
    ranked = proc_reranker.rerank("capital of France", TEXTS, top_n=3)
    assert list(ranked) == list(rr.rerank("capital of France", TEXTS, top_n=3))
    assert proc_reranker.max_length == rr.max_length


def test_a_bad_model_fails_at_start_as_in_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="does not exist"):
        ProcessEncoder(model_name_or_path=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ValueError, match="recipe"):
        ModelProcess("pickle-me", {})


class _NeedsTwo(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def test_an_exception_that_cannot_cross_is_named() -> None:
    portable = _portable(_NeedsTwo("x", "y"))
    assert portable[2] is None  # its pickle cannot be loaded back
    with pytest.raises(ModelProcessError, match=r"_NeedsTwo: x and y"):
        _raise(portable)
    ok = _portable(ValueError("plain"))
    with pytest.raises(ValueError, match="plain"):
        _raise(ok)


def _wait_dead(proc: Any) -> None:
    deadline = time.monotonic() + 10
    while proc.process._process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_dead_model_process_is_reported_everywhere(tiny_m3_path, live) -> None:  # type: ignore[no-untyped-def]
    from m3rag.serve import ServeConfig, create_app

    enc = ProcessEncoder(model_name_or_path=str(tiny_m3_path), device="cpu")
    try:
        server = live(create_app(enc, config=ServeConfig(max_wait_ms=1)))
        r = httpx.post(server.url + "/embed", json={"inputs": "hello"}, timeout=30)
        assert r.status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200
        os.kill(enc.process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        _wait_dead(enc)
        r = httpx.post(server.url + "/embed", json={"inputs": "hello"}, timeout=30)
        assert r.status_code == 503
        assert "exited with code -9" in r.json()["error"]
        assert not enc.alive
        for probe in ("/health", "/ready"):
            r = httpx.get(server.url + probe)
            assert r.status_code == 503, probe
            assert r.json()["status"] == "down"
        with pytest.raises(ModelProcessError, match="exited"):
            enc.encode_corpus(["again"])  # no hang, no second wait
    finally:
        enc.close()


def test_close_stops_the_child(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    enc = ProcessEncoder(model_name_or_path=str(tiny_m3_path), device="cpu")
    child = enc.process._process
    enc.close()
    assert not child.is_alive()
    assert child.exitcode == 0  # it left on its own, asked politely
    with pytest.raises(ModelProcessError):
        enc.encode_queries(["after close"])
    enc.close()  # twice is fine


def test_the_server_cuts_the_child_encoders_passes_by_cost(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag.cli._serve import load_model_process

    enc = load_model_process("encoder", str(tiny_m3_path), "cpu", 2048, batch_overhead="auto")
    try:
        assert enc.max_batch_tokens == 2048
        # measured in the child at start-up, read from it
        assert isinstance(enc.batch_overhead, int) and enc.batch_overhead >= 0
    finally:
        enc.close()


def test_a_child_runs_the_torch_threads_it_is_given(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    with ProcessEncoder(model_name_or_path=str(tiny_m3_path), device="cpu", torch_threads=1) as e:
        assert e.torch_threads == 1
        assert e.encode_corpus(["one thread"]).dense_vecs.shape[0] == 1
        assert e.process.set_torch_threads(2) == 2  # lent a second core, for the next calls
        assert e.encode_corpus(["two threads"]).dense_vecs.shape[0] == 1
        assert e.torch_threads == 1  # its share, as started
        with pytest.raises(ValueError, match="torch_threads"):
            e.process.set_torch_threads(0)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_bad_torch_threads_are_refused_before_a_child_starts(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="torch_threads"):
        ModelProcess("encoder", {}, torch_threads=bad)


def test_a_dead_replica_is_reported_while_the_other_serves(
    tiny_m3_path, tiny_encoder, live
) -> None:  # type: ignore[no-untyped-def]
    from m3rag.serve import ServeConfig, create_app

    encs = [ProcessEncoder(model_name_or_path=str(tiny_m3_path), device="cpu") for _ in range(2)]
    try:
        app = create_app(encs[0], encoder_replicas=encs[1:], config=ServeConfig(max_wait_ms=1))
        server = live(app)
        want = tiny_encoder.encode_corpus(TEXTS, dense=True, sparse=False, colbert=False)
        for i, text in enumerate(TEXTS):  # whichever replica runs it, the same rows
            r = httpx.post(server.url + "/embed", json={"inputs": text}, timeout=30)
            assert r.status_code == 200
            np.testing.assert_allclose(r.json()[0], want.dense_vecs[i], atol=1e-5)
        os.kill(encs[1].process.pid, signal.SIGKILL)
        _wait_dead(encs[1])
        for probe in ("/health", "/ready"):
            r = httpx.get(server.url + probe)
            assert r.status_code == 503, probe
            assert r.json()["status"] == "down"
        assert "encoder (1 of 2)" in httpx.get(server.url + "/health").json()["message"]
        # the dead replica hands back what it gathers and retires: nothing fails
        for _ in range(8):
            r = httpx.post(server.url + "/embed", json={"inputs": "still?"}, timeout=30)
            assert r.status_code == 200
    finally:
        for e in encs:
            e.close()
