"""Model replicas: several copies of a model, each with a worker thread, on one batch queue."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag.serve.batching import DynamicBatcher

pytestmark = pytest.mark.model

TEXTS = ["alpha beta", "北京 首都", "gamma delta epsilon", "x", "the fourth text, longer"]


class Replica:
    """A tiny encoder of its own, recording its calls; a call may be held until ``gate`` opens,
    and ``alive = False`` makes it fail as a model whose process died."""

    def __init__(self, path: Any) -> None:
        from m3rag import M3Encoder

        self.inner = M3Encoder(path, device="cpu")
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.alive = True
        self.torch_threads = 1  # its share of the cores, as a ProcessEncoder reports it
        self.threads_used: list[int] = []

    def use_threads(self, n: int) -> None:
        self.threads_used.append(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_corpus(self, texts: Any, **kw: Any) -> Any:
        self.batch_sizes.append(len(texts))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        if not self.alive:
            msg = "the encoder process exited with code -9"
            raise RuntimeError(msg)
        return self.inner.encode_corpus(texts, **kw)


@pytest.fixture(scope="module")
def replicas(tiny_m3_path) -> list[Replica]:  # type: ignore[no-untyped-def]
    return [Replica(tiny_m3_path) for _ in range(3)]


@pytest.fixture
def fresh(replicas) -> list[Replica]:  # type: ignore[no-untyped-def]
    for r in replicas:
        r.batch_sizes.clear()
        r.threads.clear()
        r.started.clear()
        r.gate.set()
        r.alive = True
        r.threads_used.clear()
    return replicas  # type: ignore[no-any-return]


def submit(batcher: DynamicBatcher, text: str) -> tuple[threading.Event, dict[str, Any]]:
    done = threading.Event()
    box: dict[str, Any] = {}

    def settle(out: Any, exc: BaseException | None) -> None:
        box["out"], box["exc"] = out, exc
        done.set()

    batcher.submit([text], kind="passage", dense=True, sparse=False, colbert=False, done=settle)
    return done, box


def hold_one(a: Replica, b: Replica, batcher: DynamicBatcher) -> tuple[Any, Replica, Replica]:
    """Submit a request with both gates shut; returns it, the replica it holds, the free one."""
    a.gate.clear()
    b.gate.clear()
    held = submit(batcher, TEXTS[0])[0]
    deadline = time.monotonic() + 10
    while not (a.started.is_set() or b.started.is_set()):
        assert time.monotonic() < deadline, "no replica took the request"
        time.sleep(0.005)
    busy, free = (a, b) if a.started.is_set() else (b, a)
    free.gate.set()
    return held, busy, free


def test_a_replica_runs_a_batch_while_another_is_busy(fresh, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("m3rag.serve.batching.available_cores", lambda: 4)  # any machine
    a, b = fresh[:2]
    batcher = DynamicBatcher(a, replicas=[b], max_wait_ms=0)
    try:
        assert batcher.models == (a, b)
        assert batcher.encoder is a
        first, busy, free = hold_one(a, b, batcher)
        assert busy is a  # both idle: the first replica takes it
        second, box = submit(batcher, TEXTS[1])
        # the second request is answered while the first still holds its replica
        assert second.wait(10) and box["exc"] is None
        assert not first.is_set()
        busy.gate.set()
        assert first.wait(10)
        assert busy.batch_sizes == [1] and free.batch_sizes == [1]
        assert busy.threads != free.threads  # each replica on a thread of its own
        # the first ran alone and borrowed the other's core; the second ran beside it
        assert busy.threads_used == [2] and free.threads_used == [1]
        assert batcher.stats.batches == 2 and batcher.stats.texts == 2
    finally:
        batcher.close()
    assert not any(t.is_alive() for t in batcher._threads)  # close stops every worker


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 3),
    policy=st.sampled_from(["adaptive", "always"]),
    arrivals=st.lists(
        st.tuples(st.integers(0, len(TEXTS) - 1), st.floats(0, 0.004)), min_size=1, max_size=14
    ),
)
def test_whatever_replica_runs_it_each_request_gets_its_own_rows(
    fresh, tiny_encoder, n, policy, arrivals
) -> None:  # type: ignore[no-untyped-def]
    for r in fresh:
        r.batch_sizes.clear()
    batcher = DynamicBatcher(fresh[0], replicas=fresh[1:n], max_wait_ms=2, wait_policy=policy)
    want = tiny_encoder.encode_corpus(TEXTS, dense=True, sparse=False, colbert=False)
    got = []
    try:
        for i, gap in arrivals:
            got.append((i, *submit(batcher, TEXTS[i])))
            time.sleep(gap)
        for i, done, box in got:
            assert done.wait(30) and box["exc"] is None
            np.testing.assert_allclose(box["out"].dense_vecs[0], want.dense_vecs[i], atol=1e-5)
        # every request ran exactly once, on one replica or another
        assert sum(sum(r.batch_sizes) for r in fresh[:n]) == len(arrivals)
        assert not any(r.batch_sizes for r in fresh[n:])
        assert batcher.stats.texts == len(arrivals)
    finally:
        batcher.close()


def test_a_replica_that_dies_in_a_batch_fails_it_and_retires(fresh) -> None:  # type: ignore[no-untyped-def]
    a, b = fresh[:2]
    batcher = DynamicBatcher(a, replicas=[b], max_wait_ms=0)
    try:
        held, busy, other = hold_one(a, b, batcher)
        other.gate.clear()
        failed, box = submit(batcher, TEXTS[1])  # only the other one is free to take it
        assert other.started.wait(10)
        other.alive = False  # its process is killed while it runs the batch
        other.gate.set()
        assert failed.wait(10)
        assert "exited" in str(box["exc"])
        busy.gate.set()
        assert held.wait(10)
        for text in TEXTS:  # the dead replica has retired: the live one serves them all
            done, box = submit(batcher, text)
            assert done.wait(10) and box["exc"] is None
        assert other.batch_sizes == [1]
        busy.alive = False  # the last one dies too: requests get its error, none hangs
        for text in TEXTS[:2]:
            done, box = submit(batcher, text)
            assert done.wait(10)
            assert "exited" in str(box["exc"])
    finally:
        batcher.close()


def test_a_replica_found_dead_hands_its_batch_back(fresh) -> None:  # type: ignore[no-untyped-def]
    a, b, c = fresh
    # died while idle: the first replica, which idle replicas leave a job to, takes the first
    # batch and finds out
    a.alive = c.alive = False
    batcher = DynamicBatcher(a, replicas=[b, c], max_wait_ms=0)
    try:
        for text in TEXTS * 2:
            done, box = submit(batcher, text)
            assert done.wait(10) and box["exc"] is None  # none lost, none failed
        assert a.batch_sizes == [] and c.batch_sizes == []
        assert sum(b.batch_sizes) == 2 * len(TEXTS)
        assert batcher.queued_texts == 0
        assert batcher._serving == 2  # the first retired; the third never took a batch
    finally:
        batcher.close()


def test_a_lone_replica_borrows_no_more_threads_than_there_are_cores(
    fresh, monkeypatch, wait_idle
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("m3rag.serve.batching.available_cores", lambda: 3)
    for r in fresh:
        r.torch_threads = 2  # three replicas of 2 threads: 6, on 3 cores
    batcher = DynamicBatcher(fresh[0], replicas=fresh[1:], max_wait_ms=0)
    try:
        for text in TEXTS:
            done, box = submit(batcher, text)
            assert done.wait(10) and box["exc"] is None
            wait_idle(batcher)
        used = [n for r in fresh for n in r.threads_used]
        assert used == [3] * len(TEXTS)  # each ran alone: every core, not 6 threads
    finally:
        batcher.close()
        for r in fresh:
            r.torch_threads = 1


@pytest.mark.parametrize("policy", ["adaptive", "always"])
def test_lone_requests_all_run_on_the_first_replica(fresh, wait_idle, policy) -> None:  # type: ignore[no-untyped-def]
    # handed from worker to worker, a lone request's batches ran slower (each worker thread
    # keeps its own OpenMP team and caches); idle workers leave a job to the first
    batcher = DynamicBatcher(fresh[0], replicas=fresh[1:], max_wait_ms=1, wait_policy=policy)
    try:
        wait_idle(batcher)
        for text in TEXTS * 2:
            done, box = submit(batcher, text)
            assert done.wait(10) and box["exc"] is None
            wait_idle(batcher)
        assert [len(r.batch_sizes) for r in fresh] == [2 * len(TEXTS), 0, 0]
        assert len(fresh[0].threads) == 1
    finally:
        batcher.close()


@pytest.mark.parametrize("busy", [{0}, {1}, {0, 1}, {0, 2}, {1, 2}])
def test_while_some_replicas_are_busy_the_first_idle_one_takes_each_job(
    fresh, wait_idle, busy
) -> None:  # type: ignore[no-untyped-def]
    batcher = DynamicBatcher(fresh[0], replicas=fresh[1:], max_wait_ms=0)
    held = {}
    try:
        wait_idle(batcher)
        # make replicas 0..max(busy) busy one by one (each next request finds the ones
        # before it busy), then let those not in `busy` finish
        for i in range(max(busy) + 1):
            fresh[i].gate.clear()
            held[i] = submit(batcher, TEXTS[0])[0]
            assert fresh[i].started.wait(10), f"replica {i} did not take the request"
        for i in range(max(busy) + 1):
            if i not in busy:
                fresh[i].gate.set()
                assert held.pop(i).wait(10)
        first_idle = min(set(range(3)) - busy)
        for r in fresh:
            r.batch_sizes.clear()
        for text in TEXTS:  # one at a time: each goes to the first idle replica
            done, box = submit(batcher, text)
            assert done.wait(10) and box["exc"] is None
            wait_idle(batcher, first_idle)
        assert [len(r.batch_sizes) for r in fresh] == [
            len(TEXTS) if i == first_idle else 0 for i in range(3)
        ]
    finally:
        for r in fresh:
            r.gate.set()
        for done in held.values():
            assert done.wait(10)
        batcher.close()
