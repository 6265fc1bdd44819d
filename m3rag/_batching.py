"""Length-sorted batching under a token budget, shared by the encoder and the reranker.

Texts are sorted by token count, longest first, with ``numpy.argsort(-lengths)`` -- the exact call
FlagEmbedding makes, so that with the budget switched off (``max_batch_tokens=None``) the batches
are the reference's batches and the outputs are bit-identical. With a budget, a batch holds at most
``batch_size`` texts and at most ``max_batch_tokens`` padded tokens: long texts get small batches
(an 8192-token document alone), short texts big ones, and padding stays small because neighbours
in the sorted order have similar lengths.

``max_padding`` bounds it further: a batch stops growing before padding would take more than that
share of its slots. It pays where batches are few texts of any length, as a server gathers: on
a CPU a padded slot costs as much as a real token, so with a mid-size checkpoint (6 layers,
hidden 384) on 2 cores, four texts of random lengths (2.2 slots per real token together) ran at
39 texts/s in one pass and 59-66 texts/s under a 0.1 bound. Over a sorted corpus, where
neighbours pad little anyway and a bound adds passes of short texts, each with its fixed cost, it
is no default: with `bench_encoder`'s 400 texts of up to 512 tokens, bf16 (the fast path) ran
2.4x slower under a 0.1 bound (7.6 s against 3.2 s, one benchmark run each, same day); fp32
came out 23% faster in those runs and up to a fifth slower in an A/B beside another job.
So the models set no bound by default, and `m3rag serve` sets one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["plan_batches"]


def plan_batches(
    lengths: Sequence[int] | npt.NDArray[np.integer],
    *,
    batch_size: int,
    max_batch_tokens: int | None,
    max_padding: float = 1.0,
) -> tuple[npt.NDArray[np.intp], list[npt.NDArray[np.intp]]]:
    """Sort by length (descending) and cut into batches.

    Args:
        lengths: Token count of each item.
        batch_size: Maximum items per batch.
        max_batch_tokens: Maximum ``items x longest item`` per batch, or ``None`` for fixed
            ``batch_size`` chunks (the reference's batching).
        max_padding: With a token budget, the largest share of a batch's ``items x longest``
            slots that padding may take (1.0: no bound); ignored without one.

    Returns:
        ``(order, batches)``: the sort order, and each batch as indices into the *input*.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens)
    batches: list[npt.NDArray[np.intp]] = []
    n = len(order)
    start = 0
    while start < n:
        if max_batch_tokens is None:
            stop = min(n, start + batch_size)
        else:
            longest = max(int(lens[order[start]]), 1)
            fit = max(1, max_batch_tokens // longest)
            stop = min(n, start + min(batch_size, fit))
            if max_padding < 1.0:
                stop = start + _unpadded(lens[order[start:stop]], longest, max_padding)
        batches.append(order[start:stop])
        start = stop
    return order, batches


def _unpadded(run: npt.NDArray[np.int64], longest: int, max_padding: float) -> int:
    """How many of ``run`` (descending lengths) fit one batch with padding within the bound."""
    count = np.arange(1, len(run) + 1)
    padding = count * longest - np.cumsum(run)
    fits = padding <= max_padding * count * longest
    # the first item alone never pads; the batch ends before the first item that breaks it
    return int(np.argmin(fits)) if not fits.all() else len(run)
