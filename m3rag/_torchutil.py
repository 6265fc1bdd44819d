"""Device and dtype choice and CUDA out-of-memory detection (torch imported lazily)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from m3rag._inputs import check_positive_int

if TYPE_CHECKING:
    import torch

__all__ = [
    "CALIBRATION_ROUNDS",
    "CALIBRATION_TEXTS",
    "CALIBRATION_TOKENS",
    "CPU_BATCH_OVERHEAD",
    "BatchedModel",
    "available_cores",
    "available_devices",
    "is_oom",
    "prefer_passive_openmp",
    "resolve_device",
    "resolve_dtype",
    "run_with_oom_backoff",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound="BatchedModel")


def prefer_passive_openmp(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (``os.environ`` by default), if it can act.

    For a process where torch shares the cores with other work, as a server's event loop:
    OpenMP's threads otherwise spin at the end of every parallel region, taking the cores the
    loop (and, on one machine, the clients) need. It does nothing when the user chose a policy,
    and nothing once torch is imported into this process, since OpenMP reads the policy once,
    when torch loads; an ``environ`` given explicitly is always the caller's to decide on.

    Measured with `m3rag serve` on the 2-core machine (``bench_serve.py``; docs/serve.md keeps
    each run's figures), the runs disagree: with the tests' tiny checkpoint spinning threads got
    0.72-1.19x the requests per second of sleeping ones, with a mid-size checkpoint 0.85-1.18x.
    Sleeping is kept for where spinning measurably hurt: a model in a child process (a third of
    the throughput on ``/search``, in one run).

    Returns:
        Whether the policy was set.
    """
    if environ is None:
        if "torch" in sys.modules:
            return False
        environ = os.environ
    if "OMP_WAIT_POLICY" in environ:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


# How ``batch_overhead="auto"`` measures a forward pass's fixed cost on a CPU (see
# BatchedModel.batch_overhead): one text of CALIBRATION_TOKENS against CALIBRATION_TEXTS of them
# in one pass, about a thousand tokens, where a CPU's time per token stops falling.
CALIBRATION_TOKENS = 128
CALIBRATION_TEXTS = 8
CALIBRATION_ROUNDS = 8
# What ``batch_overhead="device"`` (the models' default) takes a CPU forward pass's fixed cost
# to be, without measuring: a typical figure. "auto" measured 53-230 token slots for a 6-layer,
# hidden-384 model at 1-2 torch threads and 94 for BGE-M3's shape on 2 cores; the cut is flat
# near the optimum, and what it prevents is passes padded to 2.5x their text (2026-11-30).
CPU_BATCH_OVERHEAD = 128

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover -- not Linux
        return os.cpu_count() or 1


def available_devices() -> list[str]:
    """The devices this torch build can use here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    import torch

    out = ["cpu"]
    out += (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        out += [f"xpu:{i}" for i in range(xpu.device_count())]
    return out


def resolve_device(device: str | Any | None) -> torch.device:
    """Parse and check ``device`` against what this machine has, before anything is loaded.

    ``None`` picks CUDA when available, else CPU. Strings (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"``, ``"xpu"``), ``torch.device`` and a CUDA index (``0``) are accepted when the device
    exists here; otherwise moving the weights would fail after loading them (an
    ``AssertionError`` on a CPU-only torch).

    Raises:
        ValueError: A malformed device (``"gpu"``, ``"cuda:x"``), a device type this build or
            machine lacks, or an index beyond the device count; the message lists the available
            devices.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    fix = f"available here: {available}; pass one of them, or device=None to pick automatically"
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        msg = f"device must be a string such as 'cpu' or 'cuda:1', got {type(device).__name__}"
        raise TypeError(msg)
    invalid = f"device={device!r} is not a valid device (e.g. 'cpu', 'cuda', 'cuda:1'); {fix}"
    if isinstance(device, int) and device < 0:
        raise ValueError(invalid)
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(invalid) from exc
    kind = dev.type
    if kind == "cpu":
        if dev.index not in (None, 0):
            msg = f"device={device!r}: there is one CPU device; use 'cpu'"
            raise ValueError(msg)
        return torch.device("cpu")  # "cpu:0" is the one CPU; one spelling for repr and checks
    if kind == "cuda":
        ok, count = torch.cuda.is_available(), torch.cuda.device_count()
        why = "torch.cuda.is_available() is False (no GPU, or a CPU-only torch build)"
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        ok, count = bool(mps is not None and mps.is_available()), 1
        why = "torch.backends.mps.is_available() is False"
    elif kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        ok = bool(xpu is not None and xpu.is_available())
        count = xpu.device_count() if ok and xpu is not None else 0
        why = "torch.xpu.is_available() is False"
    else:
        msg = f"device={device!r}: m3rag runs on cpu, cuda, mps or xpu, not {kind!r}; {fix}"
        raise ValueError(msg)
    if not ok:
        msg = f"device={device!r} is not available: {why}; {fix}"
        raise ValueError(msg)
    if dev.index is not None and dev.index >= count:
        msg = f"device={device!r}: this machine has {count} {kind} device(s); {fix}"
        raise ValueError(msg)
    return dev


def resolve_dtype(dtype: str | Any | None, device: torch.device) -> torch.dtype:
    """``None`` is fp16 on CUDA and fp32 elsewhere; accepts names or ``torch.dtype``."""
    import torch

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = _DTYPES.get(dtype.lower().removeprefix("torch."), "")
    else:
        name = ""
    if name not in {"float32", "float16", "bfloat16"}:
        msg = f"dtype must be one of float32, float16, bfloat16 (or None for auto), got {dtype!r}"
        raise ValueError(msg)
    return getattr(torch, name)  # type: ignore[no-any-return]


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator out-of-memory error worth retrying with smaller batches."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_with_oom_backoff(
    batches: Iterable[T],
    run: Callable[[T], R],
    *,
    split: Callable[[T], tuple[T, T] | None],
    on_oom: Callable[[T], None] | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(batch, run(batch))``; on an out-of-memory error, retry the batch in two halves.

    The halves are processed before the remaining batches and may split again; a batch that
    cannot be split (``split`` returns ``None``) re-raises. Other errors propagate untouched.

    Args:
        batches: The planned batches.
        run: The forward pass for one batch.
        split: Cuts a batch in two, or returns ``None`` for a single item.
        on_oom: Called with the failed batch, e.g. to shrink later batches.
    """
    pending: deque[T] = deque(batches)
    while pending:
        batch = pending.popleft()
        try:
            result = run(batch)
        except (RuntimeError, MemoryError) as exc:
            halves = split(batch) if is_oom(exc) else None
            if halves is None:
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning("out of memory on a batch; retrying it in two halves")
            if on_oom is not None:
                on_oom(batch)
            pending.extendleft(reversed(halves))
            continue
        yield batch, result


class BatchedModel:
    """Batching shared by the encoder and the reranker: padding, planning, OOM back-off.

    Subclasses call `_init_batching` and set ``device``, ``_pad_id`` and ``_model`` (the
    module a forward pass runs: ``input_ids`` and ``attention_mask`` in).
    """

    batch_size: int
    max_batch_tokens: int | None
    device: torch.device
    _pad_id: int
    _model: Any
    _batch_overhead: int | Literal["auto", "device"] | None

    def _init_batching(
        self,
        batch_size: int,
        max_batch_tokens: int | None,
        batch_overhead: int | Literal["auto", "device"] | None = "device",
    ) -> None:
        check_positive_int(batch_size, "batch_size")
        if max_batch_tokens is not None and (
            isinstance(max_batch_tokens, bool)
            or not isinstance(max_batch_tokens, int)
            or max_batch_tokens < 1
        ):
            msg = f"max_batch_tokens must be a positive int or None, got {max_batch_tokens!r}"
            raise ValueError(msg)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.batch_overhead = batch_overhead
        self._measured_overhead: int | None = None
        self._calibration_lock = threading.Lock()
        # a fast tokenizer used from two threads at once can fail ("Already borrowed"): every
        # call goes through _tokenizer_call, and thread copies share this lock
        self._tokenizer_lock = threading.RLock()

    @property
    def batch_overhead(self) -> int | None:
        """The fixed cost of one forward pass, in token slots, that cuts batches by cost.

        With it (and a token budget), each call's length-sorted texts are cut into the forward
        passes of least total ``batch_overhead + texts x longest`` slots (see
        `m3rag._batching`); ``None`` fills each pass to ``batch_size`` and
        ``max_batch_tokens``. On a CPU a padded slot costs as much as a real token, but a small
        pass runs far below the cores' peak, so both the padding and the passes count there:

        * ``"device"`` (the default): on a CPU, `CPU_BATCH_OVERHEAD` (128) slots, a typical
          figure, not measured; on GPUs ``None`` (not measured there). Filled passes of a
          call of a hundred mixed-length texts were padded to 2.5x their text at BGE-M3's
          shape, and ran at less than half the speed (see `docs/encoder.md`).
        * ``"auto"``: on a CPU, the cost measured on this model the first time it is read (one
          text of 128 tokens and eight in one pass, a few times each: about a second for a
          6-layer model on 2 cores, nine for BGE-M3's size), as `m3rag serve` does for its
          small gathered batches; on GPUs ``None``.

        Reads back the value in force.
        """
        mode = self._batch_overhead
        if not isinstance(mode, str):
            return mode
        if self.device.type != "cpu":
            return None
        if mode == "device":
            return CPU_BATCH_OVERHEAD
        with self._calibration_lock:
            if self._measured_overhead is None:
                self._measured_overhead = self._measure_batch_overhead()
        return self._measured_overhead

    @batch_overhead.setter
    def batch_overhead(self, value: int | Literal["auto", "device"] | None) -> None:
        if (
            value is not None
            and not (isinstance(value, str) and value in ("auto", "device"))
            and (isinstance(value, bool) or not isinstance(value, int) or value < 0)
        ):
            msg = (
                'batch_overhead must be a non-negative int, "auto", "device" or None, '
                f"got {value!r}"
            )
            raise ValueError(msg)
        self._batch_overhead = value

    def _measure_batch_overhead(self) -> int:
        """A forward pass's fixed cost in token slots, from the line through two passes.

        One text of `CALIBRATION_TOKENS` and `CALIBRATION_TEXTS` of them in one pass: the
        difference is the cost of the added slots, and what one text's pass costs beyond its
        own slots is the fixed part. After one run of each to warm them, the two passes take
        turns for up to `CALIBRATION_ROUNDS` rounds (at least two, and no more once a second
        has passed), and each is timed at its best: a busy machine only ever slows a pass.
        The texts are one token id repeated (the compute does not depend on which).
        """
        import time

        import torch

        length = min(CALIBRATION_TOKENS, getattr(self, "max_length", CALIBRATION_TOKENS))
        row = [0 if self._pad_id != 0 else 1] * length
        passes = [self._pad([row]), self._pad([row] * CALIBRATION_TEXTS)]
        best = [float("inf")] * 2
        start = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in passes:
                self._model(input_ids=ids, attention_mask=mask)
            for n in range(CALIBRATION_ROUNDS):
                if n >= 2 and time.perf_counter() - start > 1.0:
                    break
                for i, (ids, mask) in enumerate(passes):
                    t0 = time.perf_counter()
                    self._model(input_ids=ids, attention_mask=mask)
                    best[i] = min(best[i], time.perf_counter() - t0)
        one, full = best
        per_slot = (full - one) / ((CALIBRATION_TEXTS - 1) * length)
        # a full pass no slower than one text: the slots cost nothing next to the pass
        overhead = round(one / per_slot) - length if per_slot > 0 else 1 << 30
        overhead = max(0, overhead)
        logger.info("measured the fixed cost of a forward pass: %d token slots", overhead)
        return overhead

    def thread_copy(self: M) -> M:
        """A copy for another thread: the same weights and tokenizer (nothing copied).

        For running forward passes on several threads at once (as ``m3rag serve
        --model-threads`` does): torch modules in inference may be called from several threads.
        The tokenizer's calls take a lock that the model and all its copies share, since a fast
        tokenizer used from two threads at once can fail ("Already borrowed"); tokenising is a
        small part of a batch's time. The copy starts with this model's settings (token budget,
        ``batch_overhead``, measured or not); changing them on either afterwards leaves the
        other as it was.
        """
        import copy

        return copy.copy(self)

    def _tokenizer_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.tokenizer.<method>(*args, **kwargs)``, under the model's tokenizer lock.

        The model shares the lock with its thread copies (see `thread_copy`).
        """
        with self._tokenizer_lock:
            return getattr(self.tokenizer, method)(*args, **kwargs)  # type: ignore[attr-defined]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id rows with the pad id; returns ``(input_ids, attention_mask)``."""
        import numpy as np
        import torch

        longest = max(len(r) for r in rows)
        ids = np.full((len(rows), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def _plan(self, lengths: Any) -> list[Any]:
        """Length-sorted batches (indices into the input) under the current limits."""
        from m3rag._batching import plan_batches

        return plan_batches(
            lengths,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            batch_overhead=self.batch_overhead,
        )[1]

    @staticmethod
    def _split(batch: Any) -> tuple[Any, Any] | None:
        half = len(batch) // 2
        return None if half == 0 else (batch[:half], batch[half:])

    def _shrink(self, batch: Any) -> None:
        """After an OOM, keep later batches below the size that failed."""
        self.batch_size = max(1, min(self.batch_size, len(batch) // 2))
        if self.max_batch_tokens is not None:
            self.max_batch_tokens = max(1, self.max_batch_tokens // 2)

    def _run_batches(
        self, batches: Iterable[T], forward: Callable[[T], R]
    ) -> Iterator[tuple[T, R]]:
        """`run_with_oom_backoff` with this model's split and shrink rules."""
        return run_with_oom_backoff(batches, forward, split=self._split, on_oom=self._shrink)
