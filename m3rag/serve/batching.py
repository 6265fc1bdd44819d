"""Dynamic batching: texts from concurrent requests packed into token-budgeted forward passes.

A worker thread owns the model (and one more owns each replica, below). Requests put jobs (a
list of texts, query or passage truncation, the heads wanted) on a bounded queue and await a
future; the first free worker (the model's, then the replicas' in order) takes the oldest
job, then keeps taking jobs while the batch stays under ``max_batch_tokens`` (estimated) and
``max_wait_ms`` has not passed since the first one arrived, and encodes them together: one
[`M3Encoder.encode`][m3rag.M3Encoder.encode] call per truncation length, whose own length-sorted
token budgeting (``m3rag._batching``) cuts the forward passes. Each job gets its rows back.

``replicas``: further handles on the model, each owned by a worker thread of its own on the
same queue: while one runs a batch, the next gathers and runs on another. They are thread
replicas sharing one copy of the weights ([`m3rag.serve.threads`][]) or copies in child
processes ([`m3rag.serve.process`][]). A replica that starts a batch alone borrows the idle
ones' torch threads (`_lend_cores`). On the 2-core CPU a server with one model thread kept
about 1.4-1.5 of the cores busy at 32 clients; two threads of one core each served
``/embed_all`` 1.41-1.59x faster at 8 clients and 1.19-1.40x at 32 in three runs (81-90% of
offline encoding), and two processes as fast or faster (``bench_serve.py``; see
``docs/serve.md``).

When the first job waits (``wait_policy``): ``"adaptive"`` (the default) holds it for company
only when the batcher is under load, that is when other jobs are queued with it, or the last
batch gathered several jobs, or a job arrived while the last batch ran; a lone request on an
idle server goes to the model at once, as on a plain endpoint. Under load the wait is what
fills the batches. ``"always"`` holds every first job for ``max_wait_ms``.

Why a thread and not the event loop: a forward pass holds the GIL only between torch ops, so the
loop keeps accepting requests (and filling the next batch) while the model runs. Why a bound on
queued texts: without one a burst grows memory without limit; with one the server answers 503
with ``Retry-After`` and the client backs off (text-embeddings-inference answers 429 the same way).

The batch cut uses a cheap estimate (``len(text) // 3 + 2`` tokens, capped at the truncation
length) rather than tokenising twice; the encoder's own budget is exact.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from m3rag._inputs import check_positive_int, check_rerank_inputs
from m3rag._torchutil import available_cores
from m3rag.errors import M3RagError
from m3rag.rerank.cross_encoder import RerankResult, RerankScores, rank_passages
from m3rag.types import M3Output

__all__ = [
    "BatchedReranker",
    "BatcherStats",
    "DynamicBatcher",
    "QueueFullError",
    "WAIT_POLICIES",
    "RerankBatcher",
    "WaitPolicy",
    "check_max_wait_ms",
    "check_wait_policy",
    "estimate_tokens",
]

logger = logging.getLogger(__name__)

Kind = Literal["query", "passage"]
WaitPolicy = Literal["adaptive", "always"]
WAIT_POLICIES: tuple[WaitPolicy, ...] = ("adaptive", "always")


class QueueFullError(M3RagError, RuntimeError):
    """The batcher's queue holds ``max_queued_texts`` texts already; retry after a moment."""


def estimate_tokens(text: str, max_length: int) -> int:
    """A cheap upper-ish estimate of a text's token count, specials included, for batch cuts."""
    return min(max_length, len(text) // 3 + 2)


@dataclass
class _Job:
    """One request's share of a batch: its texts (or query-passage pairs) and its callback."""

    items: list[Any]
    tokens: int
    done: Callable[[Any, BaseException | None], None]
    kind: Kind = "passage"
    heads: tuple[bool, bool, bool] = (True, False, False)
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


@dataclass
class BatcherStats:
    """Counters the metrics endpoint reads (updated by the worker threads, under a lock)."""

    batches: int = 0
    texts: int = 0
    jobs: int = 0
    batch_sizes: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )


def check_max_wait_ms(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a number of milliseconds in [0, 10000]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= 10_000  # NaN fails too
    ):
        msg = f"max_wait_ms must be a number in [0, 10000], got {value!r}"
        raise ValueError(msg)


def check_wait_policy(policy: object) -> None:
    """Raise ``ValueError`` unless ``policy`` is one of `WAIT_POLICIES`."""
    if policy not in WAIT_POLICIES:
        msg = f"wait_policy must be one of {', '.join(WAIT_POLICIES)}, got {policy!r}"
        raise ValueError(msg)


class _SharedBatcher(abc.ABC):
    """The queue, the batch cut and the worker threads; subclasses say how a batch runs.

    A subclass builds `_Job`s, hands them to `_submit` (or awaits them with `_await`), and
    implements `_process`, which runs the live jobs of one gathered batch on a worker thread,
    with that thread's model, and calls each job's ``done``.
    """

    thread_name = "m3rag-batcher"

    def __init__(
        self,
        model: Any,
        /,
        *,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_queued_texts: int = 4096,
        wait_policy: WaitPolicy = "adaptive",
        on_batch: Callable[[int, float], None] | None = None,
        replicas: Sequence[Any] = (),
    ) -> None:
        check_wait_policy(wait_policy)
        check_positive_int(max_batch_tokens, "max_batch_tokens")
        check_positive_int(max_queued_texts, "max_queued_texts")
        check_max_wait_ms(max_wait_ms)
        self.model = model
        self.models: tuple[Any, ...] = (model, *replicas)
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.max_queued_texts = max_queued_texts
        self.wait_policy = wait_policy
        self.on_batch = on_batch
        self.stats = BatcherStats()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._closed = False
        # the load signal of the adaptive wait (guarded by _cond): how many batches are running,
        # how many jobs arrived while any ran, and whether the last batch showed load
        self._running = 0
        self._arrived_while_running = 0
        self._under_load = False
        self._serving = len(self.models)  # workers still taking batches (guarded by _cond)
        # the workers waiting for a job, by index (guarded by _cond; see _gather)
        self._idle: set[int] = set()
        # what a replica running alone may use: every replica's share (see _lend_cores)
        shares = [getattr(m, "torch_threads", None) for m in self.models]
        self._pooled_threads = (
            min(available_cores(), sum(n for n in shares if isinstance(n, int)))
            if len(shares) > 1
            and all(isinstance(n, int) for n in shares)
            and all(hasattr(m, "use_threads") for m in self.models)
            else None
        )
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(i, m),
                name=self.thread_name if i == 0 else f"{self.thread_name}-{i}",
                daemon=True,
            )
            for i, m in enumerate(self.models)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued_texts(self) -> int:
        """Texts (or pairs) waiting for the model."""
        return self._queued_texts

    def _submit(self, job: _Job) -> _Job:
        with self._cond:
            if self._closed:
                msg = "the batcher is closed"
                raise RuntimeError(msg)
            if self._queued_texts + len(job.items) > self.max_queued_texts and self._queue:
                msg = (
                    f"{self._queued_texts} texts are already waiting for the model "
                    f"(limit {self.max_queued_texts}); retry shortly"
                )
                raise QueueFullError(msg)
            self._queue.append(job)
            self._queued_texts += len(job.items)
            if self._running:
                self._arrived_while_running += 1
            # every waiter: the one notify() would wake may be a worker that must leave the job
            # to a preferred one, or the worker gathering company for its batch
            self._cond.notify_all()
        return job

    async def _await(
        self,
        make: Callable[[Callable[[Any, BaseException | None], None]], _Job],
        timeout: float | None,
    ) -> Any:
        """Queue the job ``make(done)`` builds, and await its result without blocking the loop.

        ``make`` only builds the job: queueing it is this method's (queued twice, it would run
        twice).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(out: Any, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(out)

        def done(out: Any, exc: BaseException | None) -> None:
            # the caller's event loop may be closed (nobody waits any more): never let that
            # reach the worker thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, out, exc)

        job = self._submit(make(done))
        try:
            return await asyncio.wait_for(future, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            job.cancelled = True
            raise

    def _wait(
        self,
        make: Callable[[Callable[[Any, BaseException | None], None]], _Job],
        timeout: float | None,
    ) -> Any:
        """Submit ``make(done)`` and block this (non-worker) thread until its result."""
        if threading.current_thread() in self._threads:
            msg = "the batcher's own threads cannot wait on it"
            raise RuntimeError(msg)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(out: Any, exc: BaseException | None) -> None:
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(out)

        job = self._submit(make(done))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            job.cancelled = True
            raise TimeoutError from None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers after the jobs already queued (``timeout`` seconds for them all)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- worker side --------------------------------------------------------------------------

    def _gather(self, index: int) -> list[_Job] | None:
        """The next batch's jobs for worker ``index``, or ``None`` once closed and drained.

        An idle worker leaves a job to an idle worker before it in `models`, so a lone request
        always runs on the same worker, not on whichever waited longest (``notify``'s order).
        Handed from one model thread to the other, a lone request's reranker batches kept 1.7
        of the 2-core CPU's cores busy and ran at 0.76-0.90x the speed of batches kept on one
        thread (2.0 cores busy), with OpenMP's threads spinning between ops (libgomp's
        default); with ``OMP_WAIT_POLICY=PASSIVE``, as `m3rag serve` sets it, the two were
        even (in-process, mid-size reranker, best of four rounds; see ``docs/serve.md``).
        """
        with self._cond:
            self._idle.add(index)
            try:
                while not self._queue or any(i < index for i in self._idle):
                    if self._closed and not self._queue:
                        return None
                    self._cond.wait()
            finally:
                self._idle.discard(index)
            first = self._queue.popleft()
            jobs, tokens = [first], first.tokens
            deadline = first.enqueued + self._wait_s()
            while tokens < self.max_batch_tokens:
                if self._queue:
                    nxt = self._queue[0]
                    if tokens + nxt.tokens > self.max_batch_tokens:
                        break
                    jobs.append(self._queue.popleft())
                    tokens += nxt.tokens
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            self._queued_texts -= sum(len(j.items) for j in jobs)
            if self._queue:  # what this batch left: for the next idle worker
                self._cond.notify_all()
            if not self._running:
                self._arrived_while_running = 0
            self._running += 1
            return jobs

    def _wait_s(self) -> float:
        """How long a batch's first job may wait for company (under ``_cond``, it popped)."""
        if self.wait_policy == "always" or self._queue or self._under_load:
            return self.max_wait_s
        return 0.0

    def _work(self, index: int, model: Any) -> None:
        while True:
            jobs = self._gather(index)
            if jobs is None:
                return
            if not getattr(model, "alive", True) and self._retire(jobs):
                return
            self._lend_cores(model)
            live = [j for j in jobs if not j.cancelled]
            start = time.perf_counter()
            if live:
                self._process(live, model)
            seconds = time.perf_counter() - start
            n = sum(len(j.items) for j in live)
            with self._cond:
                self._running -= 1
                self._under_load = (
                    len(jobs) > 1 or self._arrived_while_running > 0 or self._running > 0
                )
                if live:
                    self.stats.batches += 1
                    self.stats.jobs += len(live)
                    self.stats.texts += n
                    self.stats.batch_sizes.append(n)
            if live and self.on_batch is not None:
                self.on_batch(n, seconds)
            if not getattr(model, "alive", True) and self._retire([]):
                return

    def _lend_cores(self, model: Any) -> None:
        """Give a replica that starts a batch alone the torch threads of every replica.

        Replicas each start with a share of the cores (``torch_threads``); one running while
        the others idle (a lone request) would leave their shares unused, so it takes them
        all (as many as the process has cores at most), and its share again when it starts a
        batch beside another. A batch already running keeps its count, so the cores can be
        oversubscribed while two overlap.
        """
        if self._pooled_threads is None:
            return
        with self._cond:
            alone = self._running == 1
        try:
            model.use_threads(self._pooled_threads if alone else model.torch_threads)
        except Exception:  # a dead child: the batch's own call reports it
            logger.debug("could not set a replica's threads", exc_info=True)

    def _retire(self, jobs: list[_Job]) -> bool:
        """Whether a worker whose model died may stop, handing ``jobs`` back to the queue.

        A replica whose process died leaves the rest to serve (the server's probes report it
        down, so it gets restarted); the last worker stays, so requests get its error rather
        than wait for nobody.
        """
        with self._cond:
            if self._serving == 1:
                return False
            self._serving -= 1
            if jobs:  # gathered but not run: first in line again
                self._queue.extendleft(reversed(jobs))
                self._queued_texts += sum(len(j.items) for j in jobs)
                self._running -= 1
                self._cond.notify_all()
            logger.error("a model replica died; %d left serving", self._serving)
            return True

    @abc.abstractmethod
    def _process(self, jobs: list[_Job], model: Any) -> None:
        """Run one gathered batch's live jobs with ``model``; call each job's ``done``.

        ``model`` is the calling worker thread's own: the first model or a replica.
        """

    @staticmethod
    def _fan_out(
        jobs: list[_Job],
        run: Callable[[list[Any]], Any],
        share: Callable[[Any, slice, _Job], Any],
        what: str,
    ) -> None:
        """``run`` on the items of every job at once; each job gets ``share(out, its rows)``.

        A batch refused for its input (``ValueError``, ``TypeError``: a text the model cannot
        take) runs again one job at a time, so that only the job holding the bad input fails,
        with an error that counts its own items. The routes check their texts before they
        queue them; this is the batcher's own guard for callers that do not.
        """
        items = [x for j in jobs for x in j.items]
        try:
            out = run(items)
        except (ValueError, TypeError) as exc:
            if len(jobs) > 1:
                for j in jobs:
                    _SharedBatcher._fan_out([j], run, share, what)
            else:  # the request's own fault: its answer says so, the log need not
                logger.debug("%s refused a request's input: %s", what, exc)
                jobs[0].done(None, exc)
            return
        except BaseException as exc:  # every waiter must hear about it, whatever it is
            logger.exception("%s a batch of %d items failed", what, len(items))
            for j in jobs:
                j.done(None, exc)
            return
        start = 0
        for j in jobs:
            stop = start + len(j.items)
            j.done(share(out, slice(start, stop), j), None)
            start = stop


class DynamicBatcher(_SharedBatcher):
    """Packs concurrent encode requests into shared batches on a worker thread per model.

    Args:
        encoder: The [`M3Encoder`][m3rag.M3Encoder] (only its worker thread calls it).
        max_batch_tokens: Estimated tokens per gathered batch (the encoder cuts forward passes
            by its own ``max_batch_tokens`` inside it).
        max_wait_ms: How long the first job of a batch may wait for others to join it.
        max_queued_texts: Texts allowed to wait; beyond it [`submit`][] raises `QueueFullError`.
        wait_policy: ``"adaptive"`` waits only under load (see the module's docstring);
            ``"always"`` holds every batch's first job for ``max_wait_ms``.
        on_batch: Called by a worker after each batch with ``(texts, seconds)``.
        replicas: More copies of the encoder (e.g.
            [`ProcessEncoder`][m3rag.serve.process.ProcessEncoder]s of the same checkpoint),
            each with a worker thread of its own on the same queue.
    """

    @property
    def encoder(self) -> Any:
        """The first worker thread's encoder (``models`` holds every replica)."""
        return self.model

    def submit(
        self,
        texts: list[str],
        *,
        kind: Kind,
        dense: bool,
        sparse: bool,
        colbert: bool,
        done: Callable[[M3Output | None, BaseException | None], None],
    ) -> _Job:
        """Queue ``texts``; ``done(output, error)`` is called from a worker thread.

        Raises:
            QueueFullError: The queue is full (the caller answers 503 with ``Retry-After``).
            RuntimeError: The batcher is closed.
        """
        return self._submit(self._job(texts, kind, (dense, sparse, colbert), done))

    def _job(
        self,
        texts: list[str],
        kind: Kind,
        heads: tuple[bool, bool, bool],
        done: Callable[[Any, BaseException | None], None],
    ) -> _Job:
        length = (
            self.encoder.query_max_length if kind == "query" else self.encoder.passage_max_length
        )
        tokens = sum(estimate_tokens(t, length) for t in texts)
        return _Job(list(texts), tokens, done, kind, heads)

    async def encode(
        self,
        texts: list[str],
        *,
        kind: Kind,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        timeout: float | None = None,
    ) -> M3Output:
        """Encode ``texts`` in the next shared batch, awaiting the result without blocking.

        Raises:
            QueueFullError: The queue is full.
            TimeoutError: No result within ``timeout`` seconds (the job is dropped if it has
                not started).
        """

        def make(done: Callable[[Any, BaseException | None], None]) -> _Job:
            return self._job(texts, kind, (dense, sparse, colbert), done)

        out: M3Output = await self._await(make, timeout)
        return out

    def _process(self, jobs: list[_Job], model: Any) -> None:
        for kind in ("query", "passage"):
            group = [j for j in jobs if j.kind == kind]
            if group:
                self._run(group, kind, model)

    def _run(self, jobs: list[_Job], kind: Kind, model: Any) -> None:
        # One call for the group, with the union of the heads asked for: an extra head costs a
        # small linear layer on hidden states the backbone computes anyway.
        dense = any(j.heads[0] for j in jobs)
        sparse = any(j.heads[1] for j in jobs)
        colbert = any(j.heads[2] for j in jobs)
        encode = model.encode_queries if kind == "query" else model.encode_corpus
        self._fan_out(
            jobs,
            lambda texts: encode(texts, dense=dense, sparse=sparse, colbert=colbert),
            lambda out, rows, job: _only(out[np.arange(rows.start, rows.stop)], job.heads),
            "encoding",
        )


class RerankBatcher(_SharedBatcher):
    """Packs concurrent reranking requests into shared cross-encoder calls on one thread.

    Each job is a list of ``(query, passage)`` pairs; a gathered batch is scored by one
    [`Reranker.score`][m3rag.Reranker.score] call (raw logits), whose own length-sorted token
    budget cuts the forward passes, and each job gets its pairs' scores back. The worker threads
    own the reranker and its replicas: every caller, ``/rerank`` and reranked searches alike,
    goes through them.

    Args:
        reranker: The [`Reranker`][m3rag.Reranker].
        max_batch_tokens, max_wait_ms, max_queued_texts, wait_policy, on_batch, replicas: As
            for [`DynamicBatcher`][m3rag.serve.batching.DynamicBatcher]; a pair counts as a text.
    """

    thread_name = "m3rag-rerank-batcher"

    @property
    def reranker(self) -> Any:
        """The first worker thread's reranker (``models`` holds every replica)."""
        return self.model

    def _job(
        self, pairs: list[tuple[str, str]], done: Callable[[Any, BaseException | None], None]
    ) -> _Job:
        limit = self.reranker.max_length
        tokens = sum(min(limit, (len(q) + len(p)) // 3 + 4) for q, p in pairs)
        return _Job(list(pairs), tokens, done)

    async def score(
        self, pairs: list[tuple[str, str]], *, timeout: float | None = None
    ) -> RerankScores:
        """The pairs' raw scores from the next shared batch, awaited without blocking.

        Raises:
            QueueFullError: The queue is full.
            TimeoutError: No result within ``timeout`` seconds.
        """
        scores: RerankScores = await self._await(lambda done: self._job(pairs, done), timeout)
        return scores

    def score_blocking(
        self, pairs: list[tuple[str, str]], *, timeout: float | None = None
    ) -> RerankScores:
        """[`score`][] for a worker thread (e.g. a search reranking its hits)."""
        scores: RerankScores = self._wait(lambda done: self._job(pairs, done), timeout)
        return scores

    def _process(self, jobs: list[_Job], model: Any) -> None:
        self._fan_out(
            jobs,
            model.score,
            lambda got, rows, _: RerankScores(got.scores[rows], got.truncated[rows]),
            "reranking",
        )


class BatchedReranker:
    """A reranker whose calls go through a [`RerankBatcher`][]: what a search reranks with.

    ``rerank`` blocks its (worker) thread until the shared batch holding its pairs has run, and
    ranks exactly as [`Reranker.rerank`][m3rag.Reranker.rerank] does.
    """

    def __init__(self, batcher: RerankBatcher, *, timeout: float | None = None) -> None:
        self.batcher = batcher
        self.timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batcher.reranker, name)

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> RerankResult:
        """[`Reranker.rerank`][m3rag.Reranker.rerank], scored in the next shared batch.

        Raises:
            TypeError, ValueError: As [`Reranker.rerank`][m3rag.Reranker.rerank].
            QueueFullError: The batcher's queue is full.
            TimeoutError: No result within ``timeout`` seconds.
        """
        docs = check_rerank_inputs(query, passages, top_n)
        if not docs:
            return RerankResult(query, ())
        scores = self.batcher.score_blocking([(query, p) for p in docs], timeout=self.timeout)
        return rank_passages(query, docs, scores, top_n=top_n, normalize=normalize)


def _only(out: M3Output, heads: tuple[bool, bool, bool]) -> M3Output:
    """``out`` without the heads its job did not ask for."""
    return M3Output(
        out.dense_vecs if heads[0] else None,
        out.lexical_weights if heads[1] else None,
        out.colbert_vecs if heads[2] else None,
        out.token_counts,
        out.truncated,
    )
