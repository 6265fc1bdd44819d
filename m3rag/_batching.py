"""Length-sorted batching under a token budget, shared by the encoder and the reranker.

Texts are sorted by token count, longest first, with ``numpy.argsort(-lengths)`` -- the exact call
FlagEmbedding makes, so that with the budget switched off (``max_batch_tokens=None``) the batches
are the reference's batches and the outputs are bit-identical. With a budget, a batch holds at most
``batch_size`` texts and at most ``max_batch_tokens`` padded tokens: long texts get small batches
(an 8192-token document alone), short texts big ones, and padding stays small because neighbours
in the sorted order have similar lengths.

By default each batch is filled to those limits. ``batch_overhead`` cuts them by cost instead: a
forward pass is taken to cost ``batch_overhead + items x longest`` token slots, and the sorted
texts are cut into the contiguous batches of least total cost (dynamic programming, exact). It
pays where batches are few texts of any length, as a server gathers: filled to the budget, a
gathered batch pads its short texts to its longest, and on a CPU a padded slot costs about as
much as a real token; cut one text a pass, each pass pays its fixed cost, which on a CPU is
large (small matrix products run far below the cores' peak). In ``bench_serve``'s latest
mid-size run (6 layers, hidden 384, 2 cores), one text of 32-512 tokens took as long as 87-122
more tokens in a full pass, and random groups of 16 texts ran at 53.7 texts/s cut by cost
against 44.4 filled. With the tests' tiny checkpoint, whose passes are mostly fixed cost, the
measured overhead (568 slots) keeps the groups nearly whole and the cut changes little (761
against 729 texts/s; the fill was 4% ahead in the run before). ``docs/serve.md`` keeps the
figures of each run. Over a sorted corpus many times a pass's size neighbours pad little
anyway, but a call of a hundred mixed-length texts is not one: filled to a 16384-token budget,
96 texts at BGE-M3's shape went in 2 passes padded to 2.53x their tokens and ran at 1.12
texts/s, against 2.57 in passes of 2048 tokens (2 cores). So on a CPU the models cut by a
typical cost by default (``batch_overhead="device"``, see ``m3rag._torchutil``).
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
    batch_overhead: int | None = None,
) -> tuple[npt.NDArray[np.intp], list[npt.NDArray[np.intp]]]:
    """Sort by length (descending) and cut into batches.

    Args:
        lengths: Token count of each item.
        batch_size: Maximum items per batch.
        max_batch_tokens: Maximum ``items x longest item`` per batch, or ``None`` for fixed
            ``batch_size`` chunks (the reference's batching).
        batch_overhead: With a token budget, the fixed cost of one batch in token slots: the
            batches are then the cut of least total ``batch_overhead + items x longest``.
            ``None`` fills each batch to the limits. Ignored without a budget.

    Returns:
        ``(order, batches)``: the sort order, and each batch as indices into the *input*.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens)
    if max_batch_tokens is None:
        return order, [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    caps = _caps(lens[order], batch_size, max_batch_tokens)
    if batch_overhead is None:
        stops = _filled(caps)
    else:
        # an overhead above every cut's padding counts only passes; capped there, the costs
        # stay within int64 for any corpus
        widest = max(max_batch_tokens, int(lens.max(initial=1)))
        stops = _least_cost(lens[order], caps, min(batch_overhead, len(lens) * widest + 1))
    # each batch runs from the previous stop (0 for the first) to its own
    return order, [order[a:b] for a, b in zip([0, *stops], stops, strict=False)]


def _caps(ordered: npt.NDArray[np.int64], batch_size: int, max_batch_tokens: int) -> list[int]:
    """How many items a batch starting at each position may hold (at least the first one)."""
    n = len(ordered)
    longest = np.maximum(ordered, 1)
    fit = np.maximum(1, max_batch_tokens // longest)
    room = n - np.arange(n)
    return np.minimum(np.minimum(fit, batch_size), room).tolist()  # type: ignore[no-any-return]


def _filled(caps: list[int]) -> list[int]:
    """Each batch as full as the limits allow: its end positions."""
    stops, start = [], 0
    while start < len(caps):
        start += caps[start]
        stops.append(start)
    return stops


def _least_cost(ordered: npt.NDArray[np.int64], caps: list[int], overhead: int) -> list[int]:
    """The end positions of the contiguous cut of least ``sum(overhead + items x longest)``.

    ``best[j]`` is the least cost of the first ``j`` items; a batch starting at ``i`` (its
    longest item, since the order is descending) may end at ``i + 1 .. i + caps[i]``. On a tie
    the earlier start -- the bigger last batch -- is kept.
    """
    n = len(ordered)
    best = np.zeros(n + 1, dtype=np.int64)
    best[1:] = np.iinfo(np.int64).max
    start = np.zeros(n + 1, dtype=np.intp)
    for i in range(n):
        cap = caps[i]
        cost = best[i] + overhead + max(int(ordered[i]), 1) * np.arange(1, cap + 1)
        ends = slice(i + 1, i + 1 + cap)
        better = cost < best[ends]
        best[ends] = np.where(better, cost, best[ends])
        start[ends] = np.where(better, i, start[ends])
    stops = []
    j = n
    while j > 0:
        stops.append(j)
        j = int(start[j])
    return stops[::-1]
