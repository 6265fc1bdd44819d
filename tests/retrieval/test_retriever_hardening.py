"""Hostile input to HybridRetriever and FusionConfig (issue #14): typed errors, never a crash."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from m3rag import Collection, FusionConfig, HybridRetriever, M3Output
from m3rag.testing import random_outputs

FAST = settings(max_examples=25, deadline=None)
N = 8


class _QueryEncoder:
    """Stands in for the query encoder: every query comes precomputed in these tests."""

    heads = ("dense", "sparse", "colbert")

    def encode_queries(self, *_: Any, **__: Any) -> M3Output:
        msg = "queries are precomputed in these tests"
        raise AssertionError(msg)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Any:
    col = Collection.create(
        tmp_path_factory.mktemp("retriever") / "c",
        heads=("dense", "sparse", "colbert"),
        dim=16,
        colbert_dim=8,
        vocab_size=600,
    )
    col.add(
        [f"harbour text number {i}" for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
        embeddings=random_outputs(N, seed=3),
    )
    col.commit()
    yield col
    col.close()


def _query(**changes: Any) -> M3Output:
    good = random_outputs(1, seed=11)
    dense = changes.get("dense", np.asarray(good.dense_vecs, np.float64))
    lexical = changes.get("lexical", [dict((good.lexical_weights or [{}])[0])])
    colbert = changes.get("colbert", [np.asarray(m, np.float64) for m in good.colbert_vecs or []])
    return M3Output(dense, lexical, colbert, good.token_counts.copy(), good.truncated.copy())


def test_retrieve_with_any_k_returns_at_most_the_collection(collection: Collection) -> None:
    retriever = HybridRetriever(collection, encoder=_QueryEncoder(), recall_k=5)  # type: ignore[arg-type]
    q = _query()

    @FAST
    @given(k=st.integers(min_value=1, max_value=sys.maxsize))
    @example(k=10**9)
    @example(k=sys.maxsize)
    def check(k: int) -> None:
        results = retriever.retrieve("harbour", k=k, query_embeddings=q)
        assert len(results) == min(k, N)
        assert all(math.isfinite(hit.score) for hit in results)

    @FAST
    @given(k=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.none()))
    def refuse(k: Any) -> None:
        with pytest.raises(ValueError, match="k must be a positive int"):
            retriever.retrieve("harbour", k=k, query_embeddings=q)

    check()
    refuse()
    deep = HybridRetriever(collection, encoder=_QueryEncoder(), recall_k=sys.maxsize)  # type: ignore[arg-type]
    assert len(deep.retrieve("harbour", k=3, query_embeddings=q)) == 3


def test_precomputed_query_embeddings_are_checked(collection: Collection) -> None:
    retriever = HybridRetriever(collection, encoder=_QueryEncoder())  # type: ignore[arg-type]
    bad = st.sampled_from([math.nan, math.inf, -math.inf, 1e39])

    @FAST
    @given(head=st.sampled_from(["dense", "colbert", "sparse-id", "sparse-weight"]), value=bad)
    def check(head: str, value: float) -> None:
        if head == "dense":
            dense = np.ones((1, 16))
            dense[0, 3] = value
            q = _query(dense=dense)
        elif head == "colbert":
            m = np.ones((3, 8))
            m[1, 1] = value
            q = _query(colbert=[m])
        elif head == "sparse-id":
            q = _query(lexical=[{-1 if value > 0 else 2**40: 0.5}])
        else:
            q = _query(lexical=[{5: value}])
        with pytest.raises(ValueError, match="query"):
            retriever.retrieve("harbour", k=3, query_embeddings=q)

    check()


def test_fusion_and_rollup_refuse_non_finite_numbers(collection: Collection) -> None:
    @FAST
    @given(value=st.floats())
    @example(value=math.nan)
    @example(value=-math.inf)
    @example(value=math.inf)
    def check(value: float) -> None:
        if math.isfinite(value) and value >= 0:
            config = FusionConfig(method="rrf", rrf_k=value)
            assert config.rrf_k == value
            retriever = HybridRetriever(
                collection,
                encoder=_QueryEncoder(),  # type: ignore[arg-type]
                rollup="max_mean",
                rollup_alpha=value,
            )
            assert retriever.rollup_alpha == value
            return
        with pytest.raises(ValueError, match="rrf_k"):
            FusionConfig(method="rrf", rrf_k=value)
        with pytest.raises(ValueError, match="rollup_alpha"):
            HybridRetriever(collection, encoder=_QueryEncoder(), rollup_alpha=value)  # type: ignore[arg-type]

    check()


def test_rrf_scores_stay_finite(collection: Collection) -> None:
    retriever = HybridRetriever(
        collection,
        encoder=_QueryEncoder(),  # type: ignore[arg-type]
        fusion=FusionConfig(method="rrf", rrf_k=0, weights={"dense": 1, "bm25": 1}),
    )
    results = retriever.retrieve("harbour", k=N, query_embeddings=_query())
    assert len(results) == N and all(math.isfinite(h.score) for h in results)


def test_query_embeddings_missing_a_needed_head_are_refused(collection: Collection) -> None:
    good = _query()
    dense_only = M3Output(
        np.asarray(good.dense_vecs), None, None, good.token_counts.copy(), good.truncated.copy()
    )
    retriever = HybridRetriever(collection, encoder=_QueryEncoder())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lack the head"):
        retriever.retrieve("harbour", query_embeddings=dense_only)
    just_dense = HybridRetriever(
        collection,
        encoder=_QueryEncoder(),  # type: ignore[arg-type]
        recall=("dense",),
        fusion=FusionConfig(weights={"dense": 1}),
    )
    assert len(just_dense.retrieve("harbour", k=2, query_embeddings=dense_only)) == 2
