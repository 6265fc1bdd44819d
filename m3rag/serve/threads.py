"""Model threads: several batcher workers running one in-process model's weights at once.

[`thread_replicas`][m3rag.serve.threads.thread_replicas] wraps a loaded encoder or reranker
into ``n`` [`ThreadReplica`][m3rag.serve.threads.ThreadReplica]s for a batcher's ``model`` and
``replicas`` (``m3rag serve --model-threads N``): each batcher worker thread runs its own batches
on its own share of the CPU cores, while the weights stay one copy in memory. The first replica
wraps the model itself; the others wrap [`thread_copy`][m3rag.M3Encoder.thread_copy]s, which
share the weights and the tokenizer (whose calls take a lock the copies share: a fast tokenizer
used from two threads at once can fail).

Why: on a CPU one forward pass of a small batch keeps only part of the cores busy (its serial
parts leave the other threads idle), so two passes side by side on one thread each get more done
than one pass after the other on two threads. That is what ``--model-workers`` does with a copy
of the model in each of several processes, at the price of a copy of the weights each; here the
copies are threads of the server's process, and what they share instead is the GIL, which a
forward pass holds between torch ops (see [`m3rag.serve.process`][]).

Thread counts: ATen's OpenMP backend keeps a thread count per thread, taken from the process's
default the first time a thread uses torch. ``ThreadReplica.use_threads`` sets it on the
calling thread, which for a batcher is the replica's own worker, before each batch (only when
it changes), so the batcher can lend a replica running alone the idle ones' cores. Setting a
thread's count also sets the process's default for threads that have not used torch yet, so
the server pins its index thread's count when the thread starts
([`pin_torch_threads`][m3rag.serve.threads.pin_torch_threads]).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from m3rag._inputs import check_positive_int
from m3rag._torchutil import available_cores

__all__ = [
    "ThreadReplica",
    "auto_model_threads",
    "current_torch_threads",
    "pin_torch_threads",
    "thread_replicas",
]


class ThreadReplica:
    """One batcher worker's handle on a shared in-process model.

    Everything but the thread count is the wrapped model's: attribute reads and method calls go
    to it (set the model's options before wrapping it).

    Args:
        model: An [`M3Encoder`][m3rag.M3Encoder] or [`Reranker`][m3rag.Reranker] (or a
            ``thread_copy`` of one), used by one worker thread at a time.
        torch_threads: Threads for torch's CPU ops on the thread that runs this replica's
            batches, until ``use_threads`` changes it.
    """

    alive = True  # in this process: it lives as long as the server

    def __init__(self, model: Any, torch_threads: int) -> None:
        check_positive_int(torch_threads, "torch_threads")
        self._model = model
        self.torch_threads = torch_threads
        # the count set on each thread that ran use_threads (one worker thread, in a batcher)
        self._threads_now: dict[int, int] = {}

    @property
    def model(self) -> Any:
        """The wrapped model."""
        return self._model

    def __getattr__(self, name: str) -> Any:
        model = self.__dict__.get("_model")
        if model is None:
            raise AttributeError(name)
        return getattr(model, name)

    def use_threads(self, n: int) -> None:
        """Run the calling thread's next torch ops on ``n`` threads.

        A batcher calls it on the replica's own worker thread before each batch: with its
        share (``torch_threads``), or with every replica's share when it runs alone.
        """
        check_positive_int(n, "n")
        ident = threading.get_ident()
        if self._threads_now.get(ident) == n:
            return
        pin_torch_threads(n)
        self._threads_now[ident] = n

    def __repr__(self) -> str:
        return f"ThreadReplica({self._model!r}, torch_threads={self.torch_threads})"


def current_torch_threads() -> int | None:
    """The calling thread's torch thread count, or ``None`` when torch is not loaded."""
    if "torch" not in sys.modules:
        return None
    import torch

    return int(torch.get_num_threads())


def pin_torch_threads(n: int | None) -> None:
    """Set the calling thread's torch thread count to ``n`` (``None``: leave it).

    For a thread pool's ``initializer``: a thread otherwise takes the process's default at its
    first use of torch, which is whatever count a model thread set last.
    """
    if n is None:
        return
    import torch

    # ATen sets a thread's count from the process default on the thread's first use of torch;
    # take that first use now, or it would undo the count set next
    torch.get_num_threads()
    torch.set_num_threads(n)


def auto_model_threads(device: str) -> int:
    """``--model-threads auto``: two on a CPU (``device`` ``"cpu"``) with 2 cores or more, else one.

    Two, not one a core: measured on a 2-core machine only, and every model thread shares the
    server's GIL. One on a GPU, whose passes queue on the device anyway (not measured there).
    """
    return 2 if device == "cpu" and available_cores() >= 2 else 1


def thread_replicas(model: Any, n: int, *, cores: int | None = None) -> list[ThreadReplica]:
    """``n`` replicas of ``model`` for a batcher, splitting ``cores`` between them.

    Args:
        model: A loaded encoder or reranker with ``thread_copy`` (its options already set:
            the copies take them as they are).
        n: Worker threads, each with its own replica.
        cores: The cores to split (default: those this process may run on); each replica gets
            ``cores // n`` torch threads (the first ones one more while cores are left over),
            and at least one.

    Returns:
        The replicas: the first wraps ``model`` itself, the others its ``thread_copy``s.
    """
    check_positive_int(n, "n")
    total = cores if cores is not None else available_cores()
    check_positive_int(total, "cores")
    shares = [max(1, total // n + (i < total % n)) for i in range(n)]
    return [
        ThreadReplica(model if i == 0 else model.thread_copy(), share)
        for i, share in enumerate(shares)
    ]
