"""Tied scores on a MilvusStore: ordered by id, the same top-k prefix for every k.

The server picks which of many tied documents it returns; when the last one it returned ties
with the k-th place, the store asks again with a larger window, so the order is by id among all
the tied documents (up to 16,384 of them). Identical vectors score identically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from m3rag.index.milvus import MilvusStore
from m3rag.testing import FakeEncoder
from m3rag.types import M3Output

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
hnp = pytest.importorskip("hypothesis.extra.numpy")
pytest.importorskip("pymilvus")

TIED = [f"d{i:02d}" for i in reversed(range(40))]  # written in reverse order of id


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder(dim=16, colbert_dim=8)


@pytest.fixture(scope="module")
def tied(milvus_uri: str, encoder: FakeEncoder) -> Iterator[MilvusStore]:
    store = MilvusStore(milvus_uri, f"ties_{uuid.uuid4().hex[:8]}", encoder=encoder, create=True)
    store.add(["same text"] * len(TIED), ids=TIED)
    store.add(["other words"], ids=["a-other"])
    store.commit()
    yield store
    store.drop()


@pytest.mark.parametrize("k", [1, 2, 3, 5, 17, 39, 40, 41])
def test_ties_by_id_and_stable_across_k(tied: MilvusStore, encoder: FakeEncoder, k: int) -> None:
    q = encoder.encode_queries(["same text"])
    expected = sorted(TIED)[:k]
    lexical = tied.search_lexical(q.lexical_weights[0], k=k)  # type: ignore[index]
    bm25 = tied.search_bm25("same text", k=k)
    dense = tied.search_dense(q.dense_vecs[0], k=k)  # type: ignore[index]
    assert list(lexical.ids)[: len(expected)] == expected
    assert list(bm25.ids)[: len(expected)] == expected
    assert list(dense.ids)[: len(expected)] == expected
    for hits in (lexical, bm25, dense):
        top = hits.scores[: len(expected)]
        assert np.all(top == top[0])  # a tie, exactly


@pytest.fixture(scope="module")
def copies(milvus_uri: str) -> Iterator[tuple[MilvusStore, list[str], list[str]]]:
    """64-d vectors, one of them stored 12 times among 150 others."""
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((162, 64)).astype(np.float32)
    twins = list(range(3, 162, 13))[:12]
    vecs[twins] = vecs[0]
    ids = [f"v{i:03d}" for i in range(len(vecs))]
    store = MilvusStore(
        milvus_uri, f"twins_{uuid.uuid4().hex[:8]}", heads=["dense"], dim=64, create=True
    )
    store.add(["t"] * len(ids), ids=ids, embeddings=M3Output.build(dense_vecs=vecs))
    store.commit()
    same = [ids[0]] + [ids[i] for i in twins]
    yield store, ids, same
    store.drop()


def test_identical_vectors_score_identically(
    copies: tuple[MilvusStore, list[str], list[str]],
) -> None:
    store, ids, same = copies
    keys = store.search_dense(np.ones(64, np.float32), k=len(ids)).keys
    by_id = dict(zip(store._ids_for(keys), keys.tolist(), strict=True))
    order = np.array([by_id[i] for i in ids], dtype=np.int64)  # every row, in a mixed order

    @hypothesis.settings(max_examples=40, deadline=None, database=None)
    @hypothesis.given(
        hnp.arrays(np.float32, 64, elements=st.floats(-4, 4, width=32)),
        st.randoms(use_true_random=False),
    )
    def check(q: np.ndarray, shuffle: object) -> None:
        mixed = list(order)
        shuffle.shuffle(mixed)  # type: ignore[attr-defined]
        scores = store.dense_scores(q, np.array(mixed, dtype=np.int64))
        where = {store._ids_for([k])[0]: s for k, s in zip(mixed, scores.tolist(), strict=True)}
        assert len({where[i] for i in same}) == 1, [where[i] for i in same]
        tie = where[same[0]]
        hypothesis.assume(all(where[i] != tie for i in ids if i not in same))
        full = list(store.search_dense(q, k=len(ids)).ids)
        first = full.index(min(same))
        assert full[first : first + len(same)] == sorted(same)  # tied: together, by id
        cut = store.search_dense(q, k=first + 3)  # k falls inside the tied group
        assert list(cut.ids) == full[: first + 3]

    check()
