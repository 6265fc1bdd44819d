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


def test_ann_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        Collection.create(tmp_path / "a", heads=("dense",), dim=4, ann={"dtype": "f64"})
    with pytest.raises(ValueError, match="positive int"):
        Collection.create(tmp_path / "b", heads=("dense",), dim=4, ann={"connectivity": 0})
    with Collection.create(tmp_path / "c", heads=("dense",), dim=4, ann={"dtype": "i8"}) as col:
        assert col.manifest["ann"]["dtype"] == "i8"
    with Collection.create(tmp_path / "d", heads=("dense",), dim=4, ann=True) as col:
        assert col.manifest["ann"]["dtype"] == "f16"


def test_small_commits_do_not_rewrite_the_graph_each_time(tmp_path: Path) -> None:
    path = tmp_path / "c"
    out = random_outputs(40, seed=31, dim=16)
    assert out.dense_vecs is not None
    col = Collection.create(path, heads=("dense",), dim=16, ann=True)
    for i in range(40):
        col.add([f"t{i}"], ids=[str(i)], embeddings=out[i : i + 1])
        col.commit()
    # not due yet: the graph file is behind, and a reader covers the rest exactly
    assert not (path / "dense.usearch").exists()
    reader = Collection.open(path, read_only=True)
    assert reader.search_dense(out.dense_vecs[39], k=1).ids == ["39"]
    reader.close()
    col.close()  # closing the writer saves it
    reader = Collection.open(path, read_only=True)
    assert reader._ann is not None and len(reader._ann) == 40
    assert reader.search_dense(out.dense_vecs[7], k=1).ids == ["7"]
    reader.close()


def test_a_graph_from_before_the_dtype_option_opens_as_f32(tmp_path: Path) -> None:
    import json

    path = tmp_path / "c"
    vecs = _build(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["ann"].pop("dtype")
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "dense.usearch").unlink()  # a writer rebuilds it as f32
    with Collection.open(path) as col:
        assert col._ann is not None and col._ann.dtype == "f32"
        assert col.search_dense(vecs[5], k=1).ids == ["5"]
