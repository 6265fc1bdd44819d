"""The batcher's wait for company: adaptive (only under load) against always."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag.serve import ServeConfig
from m3rag.serve.batching import DynamicBatcher

pytestmark = pytest.mark.model

TEXTS = ["alpha beta", "北京 首都", "gamma delta epsilon", "x", "the fourth text, longer"]


class GatedEncoder:
    """The tiny encoder, recording each call's size; a call may be held until ``gate`` opens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batch_sizes: list[int] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_corpus(self, texts: Any, **kw: Any) -> Any:
        self.batch_sizes.append(len(texts))
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.encode_corpus(texts, **kw)


def submit(batcher: DynamicBatcher, text: str) -> tuple[threading.Event, dict[str, Any]]:
    """Queue one text; the event is set (and the dict filled) when its rows come back."""
    done = threading.Event()
    box: dict[str, Any] = {}

    def settle(out: Any, exc: BaseException | None) -> None:
        box["out"], box["exc"], box["at"] = out, exc, time.perf_counter()
        done.set()

    batcher.submit([text], kind="passage", dense=True, sparse=False, colbert=False, done=settle)
    return done, box


def round_trip(batcher: DynamicBatcher, text: str) -> float:
    """Seconds from queueing ``text`` to its result, which must be right."""
    start = time.perf_counter()
    done, box = submit(batcher, text)
    assert done.wait(30)
    assert box["exc"] is None
    return float(box["at"] - start)


def test_adaptive_sends_a_lone_request_at_once(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    enc = GatedEncoder(tiny_encoder)
    batcher = DynamicBatcher(enc, max_wait_ms=5000, wait_policy="adaptive")
    try:
        # one client sending requests one by one: none may sit out the 5 s wait
        for text in TEXTS:
            assert round_trip(batcher, text) < 2.5
        assert enc.batch_sizes == [1] * len(TEXTS)
    finally:
        batcher.close()


def test_always_holds_a_lone_request_for_the_wait(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    batcher = DynamicBatcher(GatedEncoder(tiny_encoder), max_wait_ms=300, wait_policy="always")
    try:
        assert round_trip(batcher, TEXTS[0]) >= 0.3
    finally:
        batcher.close()


def test_adaptive_waits_for_company_under_load_and_stops_when_it_ends(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    enc = GatedEncoder(tiny_encoder)
    batcher = DynamicBatcher(enc, max_wait_ms=1500, wait_policy="adaptive")
    try:
        enc.gate.clear()
        a, _ = submit(batcher, TEXTS[0])  # an idle batcher: A goes to the model at once
        assert enc.started.wait(30)
        b, _ = submit(batcher, TEXTS[1])  # B arrives while A runs: the batcher is under load
        enc.gate.set()
        assert a.wait(30)
        time.sleep(0.2)  # C comes after A's answer, as a client's next request would
        c, _ = submit(batcher, TEXTS[2])
        assert b.wait(30) and c.wait(30)
        assert enc.batch_sizes == [1, 2]  # B waited for company and C joined it
        # the last batch held two jobs, so a lone D still waits; D's batch shows no load
        assert round_trip(batcher, TEXTS[3]) >= 1.5
        assert round_trip(batcher, TEXTS[4]) < 1.0  # E: the load is over, no wait
        assert enc.batch_sizes == [1, 2, 1, 1]
    finally:
        batcher.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    policy=st.sampled_from(["adaptive", "always"]),
    arrivals=st.lists(
        st.tuples(st.integers(0, len(TEXTS) - 1), st.floats(0, 0.004)), min_size=1, max_size=12
    ),
)
def test_every_policy_returns_each_request_its_own_rows(tiny_encoder, policy, arrivals) -> None:  # type: ignore[no-untyped-def]
    # requests from several threads at arbitrary gaps: whatever batches form, each gets the
    # rows of its own text, once
    enc = GatedEncoder(tiny_encoder)
    batcher = DynamicBatcher(enc, max_wait_ms=2, wait_policy=policy)
    want = tiny_encoder.encode_corpus(TEXTS, dense=True, sparse=False, colbert=False)
    got: list[tuple[int, dict[str, Any], threading.Event]] = []
    try:
        for i, gap in arrivals:
            done, box = submit(batcher, TEXTS[i])
            got.append((i, box, done))
            time.sleep(gap)
        for i, box, done in got:
            assert done.wait(30) and box["exc"] is None
            np.testing.assert_allclose(box["out"].dense_vecs[0], want.dense_vecs[i], atol=1e-5)
        assert sum(enc.batch_sizes) == len(arrivals)
    finally:
        batcher.close()


@pytest.mark.parametrize("bad", ["never", "", None, 1, "ADAPTIVE"])
def test_a_bad_wait_policy_is_refused(tiny_encoder, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="wait_policy must be one of adaptive, always"):
        DynamicBatcher(tiny_encoder, wait_policy=bad)
    with pytest.raises(ValueError, match="wait_policy must be one of adaptive, always"):
        ServeConfig(wait_policy=bad)


@pytest.mark.parametrize("bad", [True, float("nan"), -1, 10_001, "5", None])
def test_the_batcher_and_the_config_refuse_the_same_waits(tiny_encoder, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"max_wait_ms must be a number in \[0, 10000\]"):
        DynamicBatcher(tiny_encoder, max_wait_ms=bad)
    with pytest.raises(ValueError, match=r"max_wait_ms must be a number in \[0, 10000\]"):
        ServeConfig(max_wait_ms=bad)
