"""Model threads: batcher workers sharing one in-process model's weights, each on its own cores."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag.serve.batching import DynamicBatcher, RerankBatcher
from m3rag.serve.threads import ThreadReplica, thread_replicas

pytestmark = pytest.mark.model

torch = pytest.importorskip("torch")

TEXTS = ["What is BGE M3?", "北京是中国的首都。", "", "a b c " * 40, "Paris is in France.", "x"]


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """A worker's ``use_threads`` also sets the default of threads started later: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_thread_copy_shares_the_weights_and_the_tokenizer_lock(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    twin = tiny_encoder.thread_copy()
    assert type(twin) is type(tiny_encoder) and twin is not tiny_encoder
    assert twin._model is tiny_encoder._model  # one copy of the weights
    assert twin._colbert is tiny_encoder._colbert and twin._sparse is tiny_encoder._sparse
    assert twin.tokenizer is tiny_encoder.tokenizer
    assert twin._tokenizer_lock is tiny_encoder._tokenizer_lock
    twin.max_batch_tokens = 77  # its settings are its own from now on
    assert tiny_encoder.max_batch_tokens != 77


def test_a_copy_tokenizes_only_while_no_other_thread_does(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    """The shared lock keeps two threads out of the tokenizer at once (transformers' fast
    tokenizers can raise "Already borrowed" when one thread changes the truncation while
    another encodes)."""
    twin = tiny_encoder.thread_copy()
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (twin.encode_corpus(TEXTS, dense=True), done.set()), daemon=True
    )
    with tiny_encoder._tokenizer_lock:  # the original tokenizing, as far as the copy knows
        worker.start()
        assert not done.wait(0.5)  # the copy waits for the tokenizer
    assert done.wait(30)  # and runs once it is free


def test_a_reranker_thread_copy_scores_as_the_original(tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag import Reranker

    rr = Reranker(tiny_reranker_path, device="cpu")
    twin = rr.thread_copy()
    assert twin._model is rr._model and twin._tokenizer_lock is rr._tokenizer_lock
    pairs = [("q", "passage one"), ("北京", "北京是中国的首都。")]
    np.testing.assert_array_equal(twin.score(pairs).scores, rr.score(pairs).scores)
    with rr._tokenizer_lock:  # its tokenizer calls take the shared lock too
        worker = threading.Thread(target=twin.score, args=(pairs,), daemon=True)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()
    worker.join(30)
    assert not worker.is_alive()


def test_use_threads_sets_the_calling_threads_count_only() -> None:
    replicas = [ThreadReplica(object(), 1), ThreadReplica(object(), 1)]
    seen: dict[int, int] = {}
    ready = threading.Barrier(2)

    def run(i: int) -> None:
        replicas[i].use_threads(i + 1)
        ready.wait(10)  # both counts set before either is read
        x = torch.ones(64, 64)
        x @ x
        seen[i] = torch.get_num_threads()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # each worker keeps its own count, whichever set it last (ATen's per-thread OpenMP count)
    assert seen == {0: 1, 1: 2}


def test_a_replica_reads_through_to_its_model(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    first, second = thread_replicas(tiny_encoder, 2, cores=6)
    assert first.model is tiny_encoder and second.model is not tiny_encoder
    assert first.torch_threads == second.torch_threads == 3
    assert first.heads == tiny_encoder.heads and first.alive
    assert second.max_batch_tokens == tiny_encoder.max_batch_tokens
    with pytest.raises(AttributeError):
        first.no_such_attribute  # noqa: B018
    assert thread_replicas(tiny_encoder, 4, cores=2)[0].torch_threads == 1  # one at least


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_counts_are_refused(bad, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError)):
        thread_replicas(tiny_encoder, bad)
    with pytest.raises((TypeError, ValueError)):
        ThreadReplica(tiny_encoder, bad)


def encode(batcher: DynamicBatcher, texts: list[str]) -> list[Any]:
    """Each text as a request of its own, all in flight at once; their outputs."""

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *(
                batcher.encode([t], kind="passage", dense=True, sparse=True, colbert=True)
                for t in texts
            )
        )

    return asyncio.run(all_at_once())


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(2, 3),
    picks=st.lists(st.integers(0, len(TEXTS) - 1), min_size=1, max_size=24),
)
def test_threads_running_batches_at_once_give_every_request_its_rows(
    tiny_encoder, n, picks
) -> None:  # type: ignore[no-untyped-def]
    replicas = thread_replicas(tiny_encoder, n, cores=n)
    batcher = DynamicBatcher(replicas[0], replicas=replicas[1:], max_wait_ms=1)
    want = tiny_encoder.encode_corpus(TEXTS, dense=True, sparse=True, colbert=True)
    try:
        outs = encode(batcher, [TEXTS[i] for i in picks])
        for i, got in zip(picks, outs, strict=True):
            # another thread count may sum in another order: equal to float32's last bits
            np.testing.assert_allclose(got.dense_vecs[0], want.dense_vecs[i], atol=1e-6)
            assert got.lexical_weights[0].keys() == want.lexical_weights[i].keys()
            for token, w in got.lexical_weights[0].items():
                assert abs(w - want.lexical_weights[i][token]) <= 1e-6
            np.testing.assert_allclose(got.colbert_vecs[0], want.colbert_vecs[i], atol=1e-6)
    finally:
        batcher.close()
    assert batcher.stats.texts == len(picks)


def test_a_replica_alone_borrows_the_others_cores(tiny_m3_path, monkeypatch, wait_idle) -> None:  # type: ignore[no-untyped-def]
    from m3rag import M3Encoder

    monkeypatch.setattr("m3rag.serve.batching.available_cores", lambda: 4)
    enc = M3Encoder(tiny_m3_path, device="cpu")
    counts: list[int] = []
    real = enc.encode_corpus

    def recording(*args: Any, **kw: Any) -> Any:  # the thread count the pass runs with
        counts.append(torch.get_num_threads())
        return real(*args, **kw)

    enc.encode_corpus = recording  # type: ignore[method-assign]
    replicas = thread_replicas(enc, 2, cores=4)
    batcher = DynamicBatcher(replicas[0], replicas=replicas[1:], max_wait_ms=0)
    try:
        for text in TEXTS[:3]:  # one at a time: each runs alone
            encode(batcher, [text])
            wait_idle(batcher)
    finally:
        batcher.close()
    assert counts == [4, 4, 4]  # every replica's share, not its own 2


def test_reranker_threads_score_as_one_reranker(tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag import Reranker

    rr = Reranker(tiny_reranker_path, device="cpu")
    pairs = [("q", t) for t in TEXTS] + [("北京", t) for t in TEXTS]
    want = rr.score(pairs).scores
    replicas = thread_replicas(rr, 2, cores=2)
    batcher = RerankBatcher(replicas[0], replicas=replicas[1:], max_wait_ms=1)
    try:
        with ThreadPoolExecutor(8) as pool:  # callers at once: both replicas get batches
            results = list(pool.map(lambda p: batcher.score_blocking([p], timeout=60), pairs))
    finally:
        batcher.close()
    got = np.array([r.scores[0] for r in results])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_pool_thread_pinned_at_start_ignores_the_default_model_threads_leave() -> None:
    from m3rag.serve.threads import current_torch_threads, pin_torch_threads

    full = current_torch_threads()
    assert full == torch.get_num_threads()

    def model_thread() -> None:  # what a model thread's use_threads leaves behind
        torch.get_num_threads()
        torch.set_num_threads(1)

    t = threading.Thread(target=model_thread)
    t.start()
    t.join(30)
    with ThreadPoolExecutor(1) as plain:
        assert plain.submit(torch.get_num_threads).result() == 1  # the default it left
    with ThreadPoolExecutor(1, initializer=pin_torch_threads, initargs=(None,)) as left:
        assert left.submit(torch.get_num_threads).result() == 1  # None: as it was
    with ThreadPoolExecutor(1, initializer=pin_torch_threads, initargs=(full + 1,)) as pinned:
        assert pinned.submit(torch.get_num_threads).result() == full + 1


@pytest.mark.parametrize(
    ("device", "cores", "expected"), [("cpu", 2, 2), ("cpu", 16, 2), ("cpu", 1, 1), ("cuda", 8, 1)]
)
def test_auto_model_threads(device, cores, expected, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from m3rag.serve.threads import auto_model_threads

    monkeypatch.setattr("m3rag.serve.threads.available_cores", lambda: cores)
    assert auto_model_threads(device) == expected
