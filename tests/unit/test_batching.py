from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from m3rag._batching import plan_batches


def test_fixed_batches_follow_the_reference_sort() -> None:
    lengths = [5, 9, 9, 2, 7]
    order, batches = plan_batches(lengths, batch_size=2, max_batch_tokens=None)
    assert order.tolist() == np.argsort([-x for x in lengths]).tolist()
    assert [b.tolist() for b in batches] == [
        order[:2].tolist(),
        order[2:4].tolist(),
        order[4:].tolist(),
    ]


def test_token_budget_gives_long_texts_small_batches() -> None:
    lengths = [8192, 8000, 100, 90, 80, 70, 10]
    _, batches = plan_batches(lengths, batch_size=256, max_batch_tokens=8192)
    sizes = [len(b) for b in batches]
    assert sizes[0] == 1 and sizes[1] == 1  # each long text alone
    assert sum(sizes) == len(lengths)
    assert len(batches[2]) == 5  # all short ones together


@given(
    st.lists(st.integers(min_value=0, max_value=600), min_size=0, max_size=80),
    st.integers(min_value=1, max_value=40),
    st.one_of(st.none(), st.integers(min_value=1, max_value=5000)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**30)),
)
def test_batches_cover_every_item_once_within_limits(
    lengths: list[int], batch_size: int, budget: int | None, overhead: int | None
) -> None:
    order, batches = plan_batches(
        lengths, batch_size=batch_size, max_batch_tokens=budget, batch_overhead=overhead
    )
    # contiguous runs of the sorted order, in that order
    assert np.concatenate([order[:0], *batches]).tolist() == order.tolist()
    for b in batches:
        assert 1 <= len(b) <= batch_size
        if budget is not None and len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= budget


def _cost(lengths: list[int], batches: list[np.ndarray], overhead: int) -> int:
    return sum(overhead + len(b) * max(max(lengths[i] for i in b), 1) for b in batches)


def _least_cost_by_search(ordered: list[int], batch_size: int, budget: int, overhead: int) -> int:
    """Every cut of the sorted order (2^(n-1) of them) that keeps the limits; the cheapest."""
    n, best = len(ordered), None
    for mask in range(2 ** max(n - 1, 0)):
        stops = [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        runs = [ordered[a:b] for a, b in zip([0, *stops[:-1]], stops, strict=True)]
        if any(len(r) > batch_size or (len(r) > 1 and len(r) * max(r) > budget) for r in runs):
            continue
        cost = sum(overhead + len(r) * max(r[0], 1) for r in runs)
        best = cost if best is None else min(best, cost)
    return best or 0


@given(
    st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=10),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=1500),
    st.integers(min_value=0, max_value=500),
)
def test_the_cost_cut_is_the_cheapest_cut(
    lengths: list[int], batch_size: int, budget: int, overhead: int
) -> None:
    _, batches = plan_batches(
        lengths, batch_size=batch_size, max_batch_tokens=budget, batch_overhead=overhead
    )
    ordered = sorted(lengths, reverse=True)
    assert _cost(lengths, batches, overhead) == _least_cost_by_search(
        ordered, batch_size, budget, overhead
    )


@given(
    st.lists(st.integers(min_value=0, max_value=600), min_size=0, max_size=80),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=5000),
)
def test_the_cost_cut_ends_between_fill_and_no_padding(
    lengths: list[int], batch_size: int, budget: int
) -> None:
    def plan(overhead: int | None) -> list[np.ndarray]:
        return plan_batches(
            lengths, batch_size=batch_size, max_batch_tokens=budget, batch_overhead=overhead
        )[1]

    filled = plan(None)
    # a pass with no fixed cost: no padding at all (every batch's texts of one length)
    for b in plan(0):
        assert len({max(lengths[i], 1) for i in b}) == 1
    # a fixed cost above any padding: as few passes as filling them, which is the fewest
    huge = plan(10**30)
    assert len(huge) == len(filled)
    assert _cost(lengths, huge, 0) <= _cost(lengths, filled, 0)


def test_the_cost_cut_pays_padding_only_where_a_pass_costs_more() -> None:
    lengths = [300, 20, 290, 75, 60]

    def plan(**kw: int | None) -> list[list[int]]:
        return [b.tolist() for b in plan_batches(lengths, batch_size=256, **kw)[1]]  # type: ignore[arg-type]

    assert plan(max_batch_tokens=2048) == [[0, 2, 3, 4, 1]]  # filled: 20 pads to 300
    # 100 a pass: 300 and 290 together (10 slots of padding), the short three together
    assert plan(max_batch_tokens=2048, batch_overhead=100) == [[0, 2], [3, 4, 1]]
    assert plan(max_batch_tokens=2048, batch_overhead=0) == [[0], [2], [3], [4], [1]]
    assert plan(max_batch_tokens=2048, batch_overhead=10**6) == [[0, 2, 3, 4, 1]]
    # without a budget the reference's batches stand, whatever the overhead
    assert plan(max_batch_tokens=None, batch_overhead=0) == [[0, 2, 3, 4, 1]]
