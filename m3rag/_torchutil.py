"""Device and dtype choice and CUDA out-of-memory detection (torch imported lazily)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["is_oom", "resolve_device", "resolve_dtype", "run_with_oom_backoff"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

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


def resolve_device(device: str | Any | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU; strings and ``torch.device`` pass through."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = f"device must be e.g. 'cpu', 'cuda' or 'cuda:1', got {device!r}"
        raise ValueError(msg) from exc


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
