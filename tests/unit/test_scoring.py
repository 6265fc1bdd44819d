from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from m3rag import (
    colbert_score,
    colbert_scores,
    dense_scores,
    lexical_matching_score,
    lexical_scores,
)


def test_lexical_score_reproduces_the_reference_example() -> None:
    # FlagEmbedding README: "What is BGE M3?" vs "Defination of BM25" share no token -> 0.
    q = {
        4865: 0.08356,
        83: 0.0814,
        335: 0.1296,
        11679: 0.252,
        276: 0.1702,
        363: 0.2695,
        32: 0.04092,
    }
    d = {262: 0.05005, 5983: 0.1368, 2320: 0.04498, 111: 0.0633, 90017: 0.2515, 2588: 0.3335}
    assert lexical_matching_score(q, d) == 0.0
    self_score = np.float32(0)
    for v in q.values():
        self_score = np.float32(self_score + np.float32(v) * np.float32(v))
    assert lexical_matching_score(q, q) == float(self_score)


def test_lexical_score_accumulates_in_float32_in_query_order() -> None:
    q = {1: 0.1, 2: 0.7, 3: 0.3}
    d = {3: 0.9, 1: 0.2}
    expected = np.float32(0)
    expected = np.float32(expected + np.float32(0.1) * np.float32(0.2))
    expected = np.float32(expected + np.float32(0.3) * np.float32(0.9))
    assert lexical_matching_score(q, d) == float(expected)


def test_colbert_score_hand_computed() -> None:
    q = np.array([[1, 0], [0, 1]], np.float32)
    d = np.array([[0.6, 0.8], [1, 0]], np.float32)
    # row 0 best = 1.0 (second doc row), row 1 best = 0.8
    assert abs(colbert_score(q, d) - 0.9) < 1e-7
    assert colbert_score(q, np.zeros((0, 2), np.float32)) == 0.0


def test_dense_scores_shapes() -> None:
    q = np.ones(3, np.float32)
    docs = np.eye(3, dtype=np.float32)
    assert dense_scores(q, docs).tolist() == [1.0, 1.0, 1.0]
    assert dense_scores(np.eye(2, 3, dtype=np.float32), docs).shape == (2, 3)


weights = st.dictionaries(
    st.integers(min_value=0, max_value=50), st.floats(min_value=0.001, max_value=3.0), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(weights, st.lists(weights, max_size=8))
def test_vectorised_lexical_matches_pairwise(
    q: dict[int, float], docs: list[dict[int, float]]
) -> None:
    got = lexical_scores(q, docs)
    want = np.array([lexical_matching_score(q, d) for d in docs], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(0, 7), max_size=6), st.integers(0, 10_000))
def test_vectorised_colbert_matches_pairwise(tq: int, sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((tq, 5)).astype(np.float32)
    docs = [rng.standard_normal((s, 5)).astype(np.float32) for s in sizes]
    got = colbert_scores(q, docs)
    want = np.array([colbert_score(q, d) for d in docs], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
