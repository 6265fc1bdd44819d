"""Length-sorted batching under a token budget, shared by the encoder and the reranker.

Texts are sorted by token count, longest first, with ``numpy.argsort(-lengths)`` -- the exact call
FlagEmbedding makes, so that with the budget switched off (``max_batch_tokens=None``) the batches
are the reference's batches and the outputs are bit-identical. With a budget, a batch holds at most
``batch_size`` texts and at most ``max_batch_tokens`` padded tokens: long texts get small batches
(an 8192-token document alone), short texts big ones, and padding stays small because neighbours
in the sorted order have similar lengths.
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
) -> tuple[npt.NDArray[np.intp], list[npt.NDArray[np.intp]]]:
    """Sort by length (descending) and cut into batches.

    Args:
        lengths: Token count of each item.
        batch_size: Maximum items per batch.
        max_batch_tokens: Maximum ``items x longest item`` per batch, or ``None`` for fixed
            ``batch_size`` chunks (the reference's batching).

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
        batches.append(order[start:stop])
        start = stop
    return order, batches
