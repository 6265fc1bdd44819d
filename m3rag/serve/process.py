"""Models in a child process, so the server's event loop never shares a GIL with them.

Why: a forward pass releases the GIL inside each torch op and takes it back between ops. When
another thread of the same process is busy in Python (the event loop parsing requests and
writing responses), every take-back can wait for that thread's switch interval, so hundreds of
small ops each wait their turn. Measured on this project's 2-core machine with the tests' tiny
checkpoint (16 short texts a call, one torch thread): 6.3 ms a call alone, 11-13 ms beside a busy
*process* (two processes on two cores), 27-32 ms beside a busy *thread* (the GIL). On a GPU the
ops are all launches, so the effect is expected to be the same or worse (not measured yet). Where
the model and the server share the cores (the 2-core CPU machine) the child's gain was mixed in
``bench_serve.py``'s runs (0.80-1.29x on ``/search``, 0.89-1.11x on ``/embed_all``), so
``m3rag serve`` keeps the models in-process unless given ``--model-process`` (or
``--model-workers``, which builds on it).

[`ModelProcess`][m3rag.serve.process.ModelProcess] starts a child with the ``spawn`` method (safe
with CUDA and with the parent's threads), builds the model there from a recipe (a function of
this package and its keyword arguments), and forwards calls over a pipe, one at a time: the
batchers have one thread each, so nothing is lost by serialising. The pipe carries Python objects
with ``multiprocessing``'s own pickling, between this process and the child it spawned; nothing
is persisted and nothing crosses a network.

[`ProcessEncoder`][m3rag.serve.process.ProcessEncoder] and
[`ProcessReranker`][m3rag.serve.process.ProcessReranker] give the child's model the interface
the app, the batchers and the retriever use, with the attributes read once at start-up.

If the child dies (out of memory, a crash), every call after that raises
[`ModelProcessError`][m3rag.errors.ModelProcessError] and ``alive`` turns false, which the
server's ``/health`` and ``/ready`` report as 503 so an orchestrator restarts it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Sequence
from typing import Any

from m3rag._inputs import check_positive_int
from m3rag._torchutil import prefer_passive_openmp
from m3rag.errors import ModelProcessError

__all__ = ["ModelProcess", "ProcessEncoder", "ProcessReranker"]

# What the parent reads once from each model (plain values; dtypes and devices as strings, so
# the parent never needs torch to unpickle them).
ENCODER_ATTRIBUTES = (
    "heads",
    "dim",
    "colbert_dim",
    "vocab_size",
    "max_length",
    "query_max_length",
    "passage_max_length",
    "model_name_or_path",
    "pooling",
    "batch_size",
    "max_batch_tokens",
    "batch_overhead",
)
RERANKER_ATTRIBUTES = (
    "max_length",
    "model_name_or_path",
    "batch_size",
    "max_batch_tokens",
    "batch_overhead",
)


def build_encoder(**kwargs: Any) -> Any:
    """The child's recipe for an [`M3Encoder`][m3rag.M3Encoder]."""
    from m3rag.encoder import M3Encoder

    return M3Encoder(**kwargs)


def build_reranker(**kwargs: Any) -> Any:
    """The child's recipe for a [`Reranker`][m3rag.Reranker]."""
    from m3rag.rerank import Reranker

    return Reranker(**kwargs)


_RECIPES = {"encoder": build_encoder, "reranker": build_reranker}


def _portable(exc: BaseException) -> tuple[str, str, BaseException | None]:
    """An exception as the pipe can carry it: its name, message, and itself if it pickles."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 -- our own bytes, just made
    except Exception:
        return name, str(exc), None
    return name, str(exc), exc


def _child(
    conn: Any,
    recipe: str,
    kwargs: dict[str, Any],
    attributes: Sequence[str],
    torch_threads: int | None = None,
) -> None:
    """The child's loop: build the model, report its attributes, then answer calls."""
    # Ctrl-C at a terminal reaches the whole process group: the parent decides when the child
    # stops (it closes the pipe or terminates it), so the child ignores the interrupt
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # before torch loads (OpenMP reads it once): in a process of their own, spinning OpenMP
    # threads would take the cores of the server's threads. On the 2-core machine (mid-size
    # checkpoint) /search at 8 clients fell to 11.6 req/s against 32.6 with the model on a
    # thread, in a run before the child set it; with it, 29.4 against 31.4
    prefer_passive_openmp()
    try:
        import torch

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        model = _RECIPES[recipe](**kwargs)
        described: dict[str, Any] = {}
        for name in attributes:
            if hasattr(model, name):
                described[name] = getattr(model, name)
        for name in ("dtype", "device"):
            if hasattr(model, name):
                described[name] = str(getattr(model, name)).removeprefix("torch.")
        if hasattr(model, "fingerprint"):
            described["fingerprint"] = model.fingerprint()
        described["torch_threads"] = torch.get_num_threads()
    except BaseException as exc:
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ok", described))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        op, name, args, kw = message
        try:
            if op == "threads":
                torch.set_num_threads(args[0])
                out = torch.get_num_threads()
            elif op == "call":
                out = getattr(model, name)(*args, **kw)
            else:
                out = getattr(model, name)
        except BaseException as exc:
            conn.send(("error", _portable(exc)))
            continue
        try:
            conn.send(("ok", out))
        except Exception as exc:
            conn.send(("error", _portable(exc)))


def _raise(portable: tuple[str, str, BaseException | None]) -> None:
    name, message, exc = portable
    if exc is not None:
        raise exc
    msg = f"{name}: {message}"
    raise ModelProcessError(msg)


class ModelProcess:
    """A model built and run in a child process; calls are forwarded one at a time.

    Args:
        recipe: ``"encoder"`` ([`M3Encoder`][m3rag.M3Encoder]) or ``"reranker"``
            ([`Reranker`][m3rag.Reranker]).
        kwargs: The model's constructor arguments (plain values: they cross to the child).
        attributes: Attributes read once after loading, kept in ``attributes`` (with
            ``torch_threads``, the child's torch thread count, besides).
        torch_threads: Threads for torch's CPU ops in the child (``None``: torch's default,
            one per core); give several replicas sharing the cores a share each.

    Raises:
        Whatever the model's constructor raises in the child (the same exception type when it
        can cross the pipe, else [`ModelProcessError`][m3rag.errors.ModelProcessError] naming
        it); ``ModelProcessError`` when the child exits before it reports.
    """

    def __init__(
        self,
        recipe: str,
        kwargs: dict[str, Any],
        attributes: Sequence[str] = (),
        *,
        torch_threads: int | None = None,
    ) -> None:
        if recipe not in _RECIPES:
            msg = f"recipe must be one of {sorted(_RECIPES)}, got {recipe!r}"
            raise ValueError(msg)
        if torch_threads is not None:
            check_positive_int(torch_threads, "torch_threads")
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        self._lock = threading.Lock()
        self._exitcode: int | None = None
        self.recipe = recipe
        self._process = ctx.Process(
            target=_child,
            args=(child_end, recipe, kwargs, tuple(attributes), torch_threads),
            name=f"m3rag-{recipe}",
            daemon=True,  # never outlives the server
        )
        self._process.start()
        child_end.close()  # the child holds the only other end: its death is an EOF here
        try:
            self.attributes: dict[str, Any] = self._receive()
        except BaseException:
            self._process.terminate()  # still loading, or failed: nothing to wait for
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the child is running and answering."""
        return self._exitcode is None and self._process.is_alive()

    def _died(self) -> ModelProcessError:
        self._process.join(5)
        code = self._process.exitcode
        self._exitcode = code if code is not None else -1
        msg = (
            f"the {self.recipe} process (pid {self._process.pid}) exited with code "
            f"{self._exitcode}; restart the server (out of memory is the usual cause)"
        )
        return ModelProcessError(msg)

    def _receive(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if status == "error":
            _raise(payload)
        return payload

    def _ask(self, op: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if self._exitcode is not None:
                msg = f"the {self.recipe} process exited with code {self._exitcode}"
                raise ModelProcessError(msg)
            try:
                self._conn.send((op, name, args, kwargs))
            except (BrokenPipeError, OSError):
                raise self._died() from None
            return self._receive()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``model.method(*args, **kwargs)`` in the child; its exceptions are raised here."""
        return self._ask("call", method, args, kwargs)

    def fetch(self, name: str) -> Any:
        """``model.name`` from the child (for what ``attributes`` did not read)."""
        return self._ask("get", name, (), {})

    def set_torch_threads(self, n: int) -> int:
        """Set the child's torch thread count (for its next calls); returns the count now."""
        check_positive_int(n, "torch_threads")
        out: int = self._ask("threads", "", (n,), {})
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child: politely when no call is running, else (or if it lingers) by force.

        A call still running when ``timeout`` passes is ended by the child's termination (it
        raises `ModelProcessError`). Calls after ``close`` raise.
        """
        idle = self._lock.acquire(timeout=timeout)
        try:
            if idle and self._process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(None)
                self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout)
            if self._process.is_alive():  # pragma: no cover -- SIGTERM ignored
                self._process.kill()
                self._process.join(timeout)
            if self._exitcode is None:
                self._exitcode = self._process.exitcode or 0
        finally:
            if idle:
                self._conn.close()
                self._lock.release()

    def __enter__(self) -> ModelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Remote:
    """The attributes read at start-up, then anything else fetched (once) from the child."""

    _ATTRIBUTES: tuple[str, ...] = ()
    _RECIPE = ""

    def __init__(self, *, torch_threads: int | None = None, **kwargs: Any) -> None:
        self._proc = ModelProcess(
            self._RECIPE, kwargs, self._ATTRIBUTES, torch_threads=torch_threads
        )
        self._fetched: dict[str, Any] = {}
        self._threads_now = self._proc.attributes["torch_threads"]

    @property
    def process(self) -> ModelProcess:
        """The child process the model runs in."""
        return self._proc

    @property
    def alive(self) -> bool:
        """Whether the model's process is running."""
        return self._proc.alive

    def __getattr__(self, name: str) -> Any:
        proc = self.__dict__.get("_proc")
        if name.startswith("_") or proc is None:  # private, or the constructor failed
            raise AttributeError(name)
        if name in proc.attributes:
            return proc.attributes[name]
        fetched = self.__dict__["_fetched"]
        if name not in fetched:
            try:
                fetched[name] = proc.fetch(name)
            except AttributeError:
                raise AttributeError(name) from None
        return fetched[name]

    def use_threads(self, n: int) -> None:
        """Run the next calls on ``n`` torch threads (a message to the child only on a change).

        A batcher with several replicas lends one running alone the cores of the idle ones.
        """
        if n != self._threads_now:
            self._threads_now = self._proc.set_torch_threads(n)

    def close(self) -> None:
        """Stop the model's process."""
        self._proc.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProcessEncoder(_Remote):
    """An [`M3Encoder`][m3rag.M3Encoder] running in a child process, with the same interface.

    Takes `M3Encoder`'s keyword arguments (``model_name_or_path``, ``device``, ``dtype``,
    ``max_batch_tokens`` ...), and ``torch_threads`` (see
    [`ModelProcess`][m3rag.serve.process.ModelProcess]). The encode methods return the same
    [`M3Output`][m3rag.M3Output] the encoder gives in-process; attributes (``heads``, ``dim``,
    ``fingerprint()`` ...) are read once after loading.
    """

    _ATTRIBUTES = ENCODER_ATTRIBUTES
    _RECIPE = "encoder"

    def __init__(self, *, torch_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(torch_threads=torch_threads, **kwargs)
        # the tokenizer fetched here for count_tokens, used from the server's threads
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        a = self._proc.attributes
        return (
            f"ProcessEncoder({a.get('model_name_or_path')!r}, heads={a.get('heads')}, "
            f"device={a.get('device')}, pid={self._proc.pid})"
        )

    def fingerprint(self) -> dict[str, Any]:
        """See [`M3Encoder.fingerprint`][m3rag.M3Encoder.fingerprint]."""
        return dict(self._proc.attributes["fingerprint"])

    def encode_queries(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """See [`M3Encoder.encode_queries`][m3rag.M3Encoder.encode_queries]."""
        return self._proc.call("encode_queries", _plain(texts), **kwargs)

    def encode_corpus(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """See [`M3Encoder.encode_corpus`][m3rag.M3Encoder.encode_corpus]."""
        return self._proc.call("encode_corpus", _plain(texts), **kwargs)

    def encode(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """See [`M3Encoder.encode`][m3rag.M3Encoder.encode]."""
        return self._proc.call("encode", _plain(texts), **kwargs)

    def count_tokens(self, texts: str | Sequence[str], *, max_length: int | None = None) -> Any:
        """See [`M3Encoder.count_tokens`][m3rag.M3Encoder.count_tokens].

        Counted in this process, with the model's tokenizer (fetched from the child once), so a
        count never waits behind a batch the child is running.
        """
        from m3rag._inputs import validate_texts
        from m3rag.encoder.m3 import count_with, truncation_length

        items = validate_texts(texts)
        length = truncation_length(self, max_length)
        tokenizer = self.tokenizer
        with self._count_lock:  # a fast tokenizer must not be used from two threads at once
            return count_with(tokenizer, items, length)


class ProcessReranker(_Remote):
    """A [`Reranker`][m3rag.Reranker] running in a child process, with the same interface.

    Takes `Reranker`'s keyword arguments and ``torch_threads`` (see
    [`ModelProcess`][m3rag.serve.process.ModelProcess]).
    """

    _ATTRIBUTES = RERANKER_ATTRIBUTES
    _RECIPE = "reranker"

    def __repr__(self) -> str:
        a = self._proc.attributes
        return f"ProcessReranker({a.get('model_name_or_path')!r}, pid={self._proc.pid})"

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> Any:
        """See [`Reranker.score`][m3rag.Reranker.score]."""
        return self._proc.call("score", _plain(pairs), **kwargs)

    def rerank(self, query: str, passages: Sequence[str], **kwargs: Any) -> Any:
        """See [`Reranker.rerank`][m3rag.Reranker.rerank]."""
        return self._proc.call("rerank", query, _plain(passages), **kwargs)


def _plain(items: Any) -> Any:
    """A sequence as a list (a generator or a custom sequence may not cross the pipe)."""
    if isinstance(items, (str, bytes)):
        return items
    try:
        return list(items)
    except TypeError:
        return items
