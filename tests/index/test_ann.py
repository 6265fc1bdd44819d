"""The optional HNSW graph: recall against exact search, filters, and recovery of a stale graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3rag import Collection
from m3rag.testing import random_outputs

pytest.importorskip("usearch")

N = 3000


def _build(path: Path) -> np.ndarray:
    out = random_outputs(N, seed=21, dim=32)
    with Collection.create(path, heads=("dense",), dim=32, ann=True) as col:
        col.add(
            [f"t{i}" for i in range(N)],
            ids=[str(i) for i in range(N)],
            metadata=[{"group": i % 10} for i in range(N)],
            embeddings=out,
        )
    assert out.dense_vecs is not None
    return out.dense_vecs


def test_ann_recall_and_exact_scores(tmp_path: Path) -> None:
    _build(tmp_path / "c")
    col = Collection.open(tmp_path / "c", read_only=True)
    queries = random_outputs(30, seed=22, dim=32).dense_vecs
    assert queries is not None
    recall = []
    for q in queries:
        approx = col.search_dense(q, k=10)
        exact = col.search_dense(q, k=10, exact=True)
        recall.append(len(set(approx.ids) & set(exact.ids)) / 10)
        # scores of returned ids are exact inner products
        np.testing.assert_allclose(approx.scores, col.dense_scores(q, approx.keys), atol=1e-6)
    assert np.mean(recall) >= 0.9
    col.close()


def test_ann_with_filters_returns_k_matching(tmp_path: Path) -> None:
    _build(tmp_path / "c")
    col = Collection.open(tmp_path / "c", read_only=True)
    q = random_outputs(1, seed=23, dim=32).dense_vecs[0]  # type: ignore[index]
    hits = col.search_dense(q, k=10, filter={"group": 3})
    assert len(hits) == 10
    assert all(int(i) % 10 == 3 for i in hits.ids)
    rare = col.search_dense(q, k=5, filter={"group": {"$in": [7]}, "group2": 1})
    assert len(rare) == 0
    col.close()


def test_stale_or_missing_graph_is_completed(tmp_path: Path) -> None:
    vecs = _build(tmp_path / "c")
    (tmp_path / "c" / "dense.usearch").unlink()
    reader = Collection.open(tmp_path / "c", read_only=True)  # no graph: the tail is exact
    assert reader.search_dense(vecs[17], k=1).ids == ["17"]
    reader.close()
    writer = Collection.open(tmp_path / "c")  # rebuilds the graph from the matrix
    assert (tmp_path / "c" / "dense.usearch").exists()
    assert writer.search_dense(vecs[2999], k=1).ids == ["2999"]
    writer.add(["new"], ids=["new"], embeddings=random_outputs(1, seed=5, dim=32))
    writer.commit()
    new = random_outputs(1, seed=5, dim=32).dense_vecs[0]  # type: ignore[index]
    assert writer.search_dense(new, k=1).ids == ["new"]
    writer.close()


def test_ann_needs_the_dense_head(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dense"):
        Collection.create(tmp_path / "c", heads=("sparse",), ann=True)
    with pytest.raises(ValueError, match="unknown ann options"):
        Collection.create(tmp_path / "d", heads=("dense",), dim=4, ann={"m": 3})
