"""Lexical search through the head-token impact table stays exact (vs a numpy oracle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3rag import Collection, M3Output
from m3rag.index import impacts
from m3rag.index.impacts import HeadImpacts
from m3rag.scoring import lexical_matching_score
from m3rag.testing import random_outputs

N = 600


@pytest.fixture(autouse=True)
def small_head(monkeypatch: pytest.MonkeyPatch) -> None:
    # the table is built from 1 document up and holds every token in 5% of the documents
    monkeypatch.setattr(impacts, "MIN_DOCS", 1)
    monkeypatch.setattr(impacts, "HEAD_FRACTION", 0.05)
    monkeypatch.setattr(impacts, "_CHUNK", 7)  # many chunks of documents


def _brute_force(
    docs: dict[str, tuple[dict[int, float], dict[str, object]]],
    q: dict[int, float],
    k: int,
    keep: object = None,
) -> list[tuple[str, float]]:
    rows = []
    for doc_id, (weights, meta) in docs.items():
        if keep is not None and not keep(meta):  # type: ignore[operator]
            continue
        score = lexical_matching_score(q, weights)
        if score > 0:
            rows.append((doc_id, score))
    return sorted(rows, key=lambda r: -r[1])[:k]


def _check(col: Collection, docs, queries, k: int, flt=None, keep=None) -> None:  # type: ignore[no-untyped-def]
    for q in queries:
        got = list(col.search_lexical(q, k=k, filter=flt))
        want = _brute_force(docs, q, k, keep)
        assert len(got) == len(want)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        for (gid, gs), (wid, ws) in zip(got, want, strict=True):
            assert gid == wid or abs(gs - ws) < 1e-5


def _outputs(n: int, seed: int) -> Any:
    return random_outputs(n, seed=seed, vocab_size=300, lexical_tokens=20)


@pytest.fixture
def built(
    tmp_path: Path,
) -> tuple[Collection, dict[str, tuple[dict[int, float], dict[str, object]]]]:
    out = _outputs(N, 1)
    ids = [f"d{i}" for i in range(N)]
    metas: list[dict[str, object]] = [{"group": i % 3} for i in range(N)]
    col = Collection.create(tmp_path / "c", heads=("sparse",))
    col.add([f"t{i}" for i in range(N)], ids=ids, metadata=metas, embeddings=out)
    col.commit()
    docs = {ids[i]: (out.lexical_weights[i], metas[i]) for i in range(N)}  # type: ignore[index]
    col.delete([f"d{i}" for i in range(0, N, 10)])
    for i in range(0, N, 10):
        del docs[f"d{i}"]
    col.commit()
    return col, docs


def _queries(seed: int, count: int = 12) -> list[dict[int, float]]:
    out = random_outputs(count, seed=seed, vocab_size=300, lexical_tokens=8)
    return list(out.lexical_weights)


@pytest.mark.parametrize("k", [1, 10, 700])
def test_split_search_matches_brute_force(built, k: int) -> None:  # type: ignore[no-untyped-def]
    col, docs = built
    queries = _queries(11)
    _check(col, docs, queries, k)
    table = col._head_impacts()
    assert table is not None and len(table) > 0
    assert any(t in table for q in queries for t in q)
    col.close()


def test_split_search_with_filters(built) -> None:  # type: ignore[no-untyped-def]
    col, docs = built
    _check(col, docs, _queries(12), 10, {"group": 1}, lambda m: m["group"] == 1)
    _check(col, docs, _queries(13), 5, {"group": {"$in": [0, 2]}}, lambda m: m["group"] != 1)
    col.close()


def test_split_search_deepens_the_tail_list(built, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(impacts, "TAIL_DEPTH", 2)
    monkeypatch.setattr(impacts, "MAX_TAIL_DEPTH", 2)
    monkeypatch.setattr(impacts, "RESCORE_CAP", 1)
    col, docs = built
    _check(col, docs, _queries(14), 3)
    col.close()


def test_table_follows_commits_and_rechooses_when_weights_outgrow_it(built) -> None:  # type: ignore[no-untyped-def]
    col, docs = built
    queries = _queries(15)
    _check(col, docs, queries, 10)
    first = col._head_impacts()
    assert first is not None
    # a small commit (weights within the table's range) extends the same table
    halved = [{t: w / 2 for t, w in d.items()} for d in _outputs(40, 2).lexical_weights]  # type: ignore[union-attr]
    more = M3Output.build(lexical_weights=halved)
    ids = [f"e{i}" for i in range(40)]
    col.add([f"e{i}" for i in range(40)], ids=ids, embeddings=more)
    col.commit()
    for i, doc_id in enumerate(ids):
        docs[doc_id] = (more.lexical_weights[i], {"group": -1})  # type: ignore[index]
    _check(col, docs, queries, 10)
    assert col._head_impacts() is first
    assert first.docs == N + 40
    # a head token weighted far above anything seen: the table is chosen again
    token = int(first.tokens[0])
    big = M3Output.build(lexical_weights=[{token: 3.0, 7: 0.2}])
    col.upsert(["huge"], ids=["d1"], embeddings=big)
    col.commit()
    docs["d1"] = ({token: 3.0, 7: 0.2}, {"group": -1})
    _check(col, docs, [*queries, {token: 0.5}], 10)
    assert col._head_impacts() is not first
    col.close()


def test_readers_see_the_same_results(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    col, docs = built
    col.close()
    reader = Collection.open(tmp_path / "c", read_only=True)
    _check(reader, docs, _queries(16), 10)
    reader.close()


def test_no_table_below_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(impacts, "MIN_DOCS", 10_000)
    out = _outputs(50, 3)
    with Collection.create(tmp_path / "c", heads=("sparse",)) as col:
        col.add([f"t{i}" for i in range(50)], embeddings=out)
        col.commit()
        assert col._head_impacts() is None
        assert len(col.search_lexical(_queries(17)[0], k=5)) > 0


def test_table_error_bound_holds() -> None:
    rng = np.random.default_rng(0)
    docs = 300
    lengths = rng.integers(1, 9, docs)
    ids = np.concatenate([rng.choice(20, size=n, replace=False) for n in lengths]).astype(np.int32)
    weights = rng.uniform(1e-4, 2.0, len(ids)).astype(np.float32)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    offsets = np.stack([starts, lengths], axis=1).astype(np.int64)
    table = HeadImpacts.choose(ids, weights, offsets, docs)
    assert table is not None
    q = {
        int(t): float(w)
        for t, w in zip(table.tokens, rng.uniform(0.01, 1.0, len(table)), strict=True)
    }
    approx, error = table.scores(q, docs)
    exact = np.zeros(docs)
    for d in range(docs):
        s, n = offsets[d]
        for t, w in zip(ids[s : s + n], weights[s : s + n], strict=True):
            exact[d] += q.get(int(t), 0.0) * float(w)
    assert (np.abs(approx - exact) <= error).all()


def test_a_collection_without_head_is_not_rescanned_per_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impacts, "HEAD_FRACTION", 0.99)  # no token is that frequent
    calls = []
    original = HeadImpacts.choose.__func__  # type: ignore[attr-defined]

    def counting(cls, *args):  # type: ignore[no-untyped-def]
        calls.append(args[-1])
        return original(cls, *args)

    monkeypatch.setattr(HeadImpacts, "choose", classmethod(counting))
    with Collection.create(tmp_path / "c", heads=("sparse",)) as col:
        col.add([f"t{i}" for i in range(80)], embeddings=_outputs(80, 5))
        col.commit()
        for q in _queries(18, 5):
            col.search_lexical(q, k=3)
        assert calls == [80]
        col.add(["more"], embeddings=_outputs(1, 6))
        col.commit()
        col.search_lexical(_queries(19, 1)[0], k=3)
        assert calls == [80, 81]


def test_tail_depth_grows_with_the_collection() -> None:
    assert impacts.tail_depth(60_000, 10) == impacts.TAIL_DEPTH
    assert impacts.tail_depth(500_000, 10) == 500_000 // 256
    assert impacts.tail_depth(10_000_000, 10) == impacts.MAX_TAIL_DEPTH
    assert impacts.tail_depth(60_000, 1000) == 16_000  # never fewer than 16 k
