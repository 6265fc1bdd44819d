from __future__ import annotations

import itertools

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
    st.lists(st.integers(min_value=1, max_value=600), min_size=0, max_size=80),
    st.integers(min_value=1, max_value=40),
    st.one_of(st.none(), st.integers(min_value=1, max_value=5000)),
)
def test_batches_cover_every_item_once_within_limits(
    lengths: list[int], batch_size: int, budget: int | None
) -> None:
    _, batches = plan_batches(lengths, batch_size=batch_size, max_batch_tokens=budget)
    seen = sorted(i for b in batches for i in b.tolist())
    assert seen == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= batch_size
        if budget is not None and len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= budget


@given(
    st.lists(st.integers(min_value=1, max_value=600), min_size=0, max_size=80),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=5000),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_a_padding_bound_keeps_every_batch_within_it(
    lengths: list[int], batch_size: int, budget: int, max_padding: float
) -> None:
    _, batches = plan_batches(
        lengths, batch_size=batch_size, max_batch_tokens=budget, max_padding=max_padding
    )
    seen = sorted(i for b in batches for i in b.tolist())
    assert seen == list(range(len(lengths)))
    for b in batches:
        lens = [lengths[i] for i in b]
        slots = len(b) * max(lens)
        assert 1 <= len(b) <= batch_size
        if len(b) > 1:
            assert slots <= budget
            assert slots - sum(lens) <= max_padding * slots + 1e-9
    # each cut is forced: the next item would have broken one of the limits
    for b, nxt in itertools.pairwise(batches):
        lens = [lengths[i] for i in [*b.tolist(), int(nxt[0])]]
        slots = len(lens) * max(lens)
        assert len(lens) > batch_size or slots > budget or slots - sum(lens) > max_padding * slots


def test_no_padding_bound_is_the_budget_alone_and_none_is_the_reference() -> None:
    lengths = [300, 20, 290, 75, 60]
    free = plan_batches(lengths, batch_size=256, max_batch_tokens=2048, max_padding=1.0)
    assert [b.tolist() for b in free[1]] == [[0, 2, 3, 4, 1]]
    bounded = plan_batches(lengths, batch_size=256, max_batch_tokens=2048, max_padding=0.1)
    assert [b.tolist() for b in bounded[1]] == [[0, 2], [3, 4], [1]]
    # without a budget the reference's batches stand, whatever the bound
    ref = plan_batches(lengths, batch_size=2, max_batch_tokens=None, max_padding=0.0)
    assert [b.tolist() for b in ref[1]] == [[0, 2], [3, 4], [1]]
