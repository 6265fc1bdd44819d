"""Index search vs brute-force numpy oracles on the same vectors: dense, lexical, ColBERT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3rag import Collection, Filter, M3Output
from m3rag.scoring import colbert_score, lexical_matching_score
from m3rag.testing import random_outputs

N = 500
LANGS = ("en", "zh", "ja", "ar")
FILTERS = [
    None,
    {"lang": "zh"},
    {"lang": {"$in": ["en", "ja"]}},
    {"year": {"$gte": 2010, "$lt": 2015}},
    {"lang": "ar", "year": {"$gt": 2018}},
]


def _meta(i: int) -> dict[str, object]:
    return {"lang": LANGS[i % 4], "year": 2000 + (i * 7) % 25, "even": i % 2 == 0}


class Oracle:
    """The collection's live content as plain arrays, updated alongside it."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[M3Output, dict[str, object]]] = {}

    def put(self, ids: list[str], out: M3Output, metas: list[dict[str, object]]) -> None:
        for j, doc_id in enumerate(ids):
            self.docs[doc_id] = (out[j], metas[j])

    def live(self, flt: dict[str, object] | None) -> list[str]:
        parsed = Filter.parse(flt)
        return [i for i, (_, m) in self.docs.items() if parsed is None or parsed.matches(m)]

    def dense(
        self, q: np.ndarray, k: int, flt: dict[str, object] | None
    ) -> list[tuple[str, float]]:
        ids = self.live(flt)
        scores = [float(self.docs[i][0].dense_vecs[0] @ q) for i in ids]  # type: ignore[index]
        return sorted(zip(ids, scores, strict=True), key=lambda x: -x[1])[:k]

    def lexical(
        self, q: dict[int, float], k: int, flt: dict[str, object] | None
    ) -> list[tuple[str, float]]:
        rows = []
        for i in self.live(flt):
            s = lexical_matching_score(q, self.docs[i][0].lexical_weights[0])  # type: ignore[index]
            if s > 0:
                rows.append((i, s))
        return sorted(rows, key=lambda x: -x[1])[:k]


def _assert_same(hits, want: list[tuple[str, float]], *, atol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    got = list(hits)
    assert len(got) == len(want)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=atol, rtol=0)
    # ids must agree except where scores tie within tolerance
    for (gid, gs), (wid, ws) in zip(got, want, strict=True):
        if gid != wid:
            assert abs(gs - ws) < atol


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Oracle]:
    out = random_outputs(N, seed=3, vocab_size=400)
    ids = [f"d{i}" for i in range(N)]
    metas = [_meta(i) for i in range(N)]
    oracle = Oracle()
    with Collection.create(
        tmp_path / "c", heads=("dense", "sparse", "colbert"), dim=16, colbert_dim=8
    ) as col:
        col.add([f"text {i}" for i in range(N)], ids=ids, metadata=metas, embeddings=out)
        oracle.put(ids, out, metas)
        col.commit()
        # deletes and upserts
        gone = [f"d{i}" for i in range(0, N, 9)]
        col.delete(gone)
        for g in gone:
            del oracle.docs[g]
        new = random_outputs(40, seed=4, vocab_size=400)
        up_ids = [f"d{i}" for i in range(1, 80, 2)]
        up_meta = [_meta(i + 1) for i in range(1, 80, 2)]
        col.upsert([f"new {i}" for i in up_ids], ids=up_ids, metadata=up_meta, embeddings=new)
        oracle.put(up_ids, new, up_meta)
    return tmp_path / "c", oracle


@pytest.mark.parametrize("flt", FILTERS)
def test_dense_and_lexical_match_brute_force(built: tuple[Path, Oracle], flt) -> None:  # type: ignore[no-untyped-def]
    path, oracle = built
    queries = random_outputs(12, seed=77, vocab_size=400)
    for reopen in (False, True):
        col = Collection.open(path, read_only=reopen)
        try:
            assert col.count() == len(oracle.docs)
            for j in range(len(queries)):
                q = queries[j]
                for k in (1, 10, 1000):
                    _assert_same(
                        col.search_dense(q.dense_vecs[0], k=k, filter=flt),
                        oracle.dense(q.dense_vecs[0], k, flt),
                    )  # type: ignore[index]
                    _assert_same(
                        col.search_lexical(q.lexical_weights[0], k=k, filter=flt),
                        oracle.lexical(q.lexical_weights[0], k, flt),
                    )  # type: ignore[index]
        finally:
            col.close()


def test_filtered_searches_return_k_when_k_match(built: tuple[Path, Oracle]) -> None:
    path, oracle = built
    col = Collection.open(path, read_only=True)
    flt = {"lang": "ar", "year": {"$gt": 2018}}
    matching = len(oracle.live(flt))
    assert matching > 5
    q = random_outputs(1, seed=5, vocab_size=400)
    assert len(col.search_dense(q.dense_vecs[0], k=5, filter=flt)) == 5  # type: ignore[index]
    assert len(col.search_dense(q.dense_vecs[0], k=10_000, filter=flt)) == matching  # type: ignore[index]
    hits = col.search_bm25("text new", k=matching, filter=flt)
    assert len(hits) == matching
    assert all(Filter.parse(flt).matches(d.metadata) for d in col.get(hits.ids))  # type: ignore[union-attr]
    col.close()


@pytest.mark.parametrize("colbert_dtype", ["float16", "int8"])
def test_colbert_maxsim_matches_brute_force(tmp_path: Path, colbert_dtype: str) -> None:
    out = random_outputs(60, seed=8)
    with Collection.create(
        tmp_path / "c", heads=("colbert",), colbert_dim=8, colbert_dtype=colbert_dtype
    ) as col:
        col.add([f"t{i}" for i in range(60)], ids=[str(i) for i in range(60)], embeddings=out)
    col = Collection.open(tmp_path / "c")
    q = random_outputs(1, seed=9).colbert_vecs[0]  # type: ignore[index]
    keys = np.array([5, 0, 59, 17, 17])
    got = col.colbert_scores(q, keys)
    stored = col.colbert_vecs(keys)
    want = [colbert_score(q, m) for m in stored]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # and the stored form is the documented rounding of the original
    for key, m in zip(keys, stored, strict=True):
        original = out.colbert_vecs[key]  # type: ignore[index]
        if colbert_dtype == "float16":
            np.testing.assert_array_equal(m, original.astype(np.float16).astype(np.float32))
        else:
            scale = np.abs(original).max(axis=1, keepdims=True) / 127
            assert np.abs(m - original).max() <= scale.max() / 2 + 1e-7
    exact = [colbert_score(q, out.colbert_vecs[k]) for k in keys]  # type: ignore[index]
    np.testing.assert_allclose(got, exact, atol=2e-3 if colbert_dtype == "float16" else 2e-2)
    col.close()


def test_rescoring_every_path_on_a_candidate_set(built: tuple[Path, Oracle]) -> None:
    path, oracle = built
    col = Collection.open(path, read_only=True)
    q = random_outputs(1, seed=11, vocab_size=400)
    hits = col.search_dense(q.dense_vecs[0], k=20)  # type: ignore[index]
    dense = col.dense_scores(q.dense_vecs[0], hits.keys)  # type: ignore[index]
    np.testing.assert_allclose(dense, hits.scores, atol=1e-6)
    lex = col.lexical_scores(q.lexical_weights[0], hits.keys)  # type: ignore[index]
    want = [
        lexical_matching_score(q.lexical_weights[0], oracle.docs[i][0].lexical_weights[0])
        for i in hits.ids
    ]  # type: ignore[index]
    np.testing.assert_allclose(lex, want, atol=1e-6)
    bm25 = col.bm25_scores("text", hits.keys)
    assert bm25.shape == (20,)
    col.close()


def test_float16_dense_store(tmp_path: Path) -> None:
    out = random_outputs(100, seed=12)
    with Collection.create(tmp_path / "c", heads=("dense",), dim=16, dense_dtype="float16") as col:
        col.add([f"t{i}" for i in range(100)], ids=[str(i) for i in range(100)], embeddings=out)
    col = Collection.open(tmp_path / "c", read_only=True)
    q = random_outputs(1, seed=13).dense_vecs[0]  # type: ignore[index]
    stored = out.dense_vecs.astype(np.float16).astype(np.float32)  # type: ignore[union-attr]
    want = stored @ q
    order = np.argsort(-want, kind="stable")[:10]
    hits = col.search_dense(q, k=10)
    assert hits.ids == [str(i) for i in order]
    np.testing.assert_allclose(hits.scores, want[order], atol=1e-6)
    col.close()
