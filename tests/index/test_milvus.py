"""MilvusStore against the embedded Collection as the oracle, on a milvus-lite server.

The same FakeEncoder embeddings go into both; dense, lexical and ColBERT scores and top-k must
agree to float tolerance, and so must the hybrid retriever end to end on those paths. BM25 is
the server's own (another tokenizer, see docs/milvus.md), compared by rank overlap.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3rag import Collection, FusionConfig, HybridRetriever
from m3rag.errors import (
    CollectionNotFoundError,
    CommitError,
    DuplicateIdError,
    EmbeddingMismatchError,
    EncoderMismatchError,
    IndexFormatError,
    InvalidDocumentError,
    ReadOnlyError,
    RemoteStoreError,
    UnknownIdError,
)
from m3rag.index.milvus import ColbertLayout, MilvusStore, analyzer_params
from m3rag.index.milvus_expr import compile_filter, literal
from m3rag.index.uri import open_store, parse_milvus_uri
from m3rag.testing import FakeEncoder
from m3rag.types import M3Output

pytest.importorskip("pymilvus")

WORDS = [
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "valley",
    "island",
    "glacier",
    "canyon",
    "meadow",
    "engine",
    "rocket",
    "signal",
    "circuit",
    "battery",
    "magnet",
    "laser",
    "sensor",
    "robot",
    "network",
    "apple",
    "bread",
    "cheese",
    "honey",
    "lemon",
    "pepper",
    "rice",
    "salt",
    "sugar",
    "tomato",
    "music",
    "poem",
    "novel",
    "canvas",
    "theatre",
    "dance",
    "opera",
    "violin",
    "guitar",
    "sculpture",
]
N = 300


def _corpus(seed: int = 7) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    texts, ids, metas = [], [], []
    for i in range(N):
        words = rng.choice(WORDS, size=int(rng.integers(4, 14)))
        texts.append(" ".join(words))
        ids.append(f"doc-{i}")
        meta: dict[str, Any] = {
            "n": int(rng.integers(0, 10)),
            "tag": str(rng.choice(["a", "b", "c"])),
        }
        if i % 3 == 0:
            meta["x"] = float(rng.uniform(-1, 1))
        if i % 5 == 0:
            meta["flag"] = bool(i % 2)
        if i % 7 == 0:
            meta["mixed"] = [1, True, "1", 1.0, None][i % 5]
        metas.append(meta)
    return texts, ids, metas


QUERIES = [
    "river forest",
    "rocket engine signal",
    "honey lemon bread",
    "violin opera music poem",
    "glacier",
]


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder(dim=16, colbert_dim=8)


def _jittered(emb: M3Output) -> M3Output:
    """FakeEncoder gives a word the same weight in every document: break the ties.

    Tied scores at the k-th place are an arbitrary choice on either engine (Collection breaks
    them by insertion order, MilvusStore by id), so the oracle data has none.
    """
    rng = np.random.default_rng(3)
    lexical = [
        {t: w * float(rng.uniform(0.5, 1.5)) for t, w in d.items()}
        for d in emb.lexical_weights or []
    ]
    return M3Output.build(
        dense_vecs=emb.dense_vecs, lexical_weights=lexical, colbert_vecs=emb.colbert_vecs
    )


@pytest.fixture(scope="module")
def pair(
    milvus_uri: str, encoder: FakeEncoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Collection, MilvusStore]]:
    texts, ids, metas = _corpus()
    emb = _jittered(encoder.encode_corpus(texts))
    col = Collection.create(
        tmp_path_factory.mktemp("oracle") / "c", encoder=encoder, colbert_dtype="float32", lang="en"
    )
    col.add(texts, ids=ids, metadata=metas, embeddings=emb)
    col.commit()
    store = MilvusStore(milvus_uri, f"parity_{uuid.uuid4().hex[:8]}", encoder=encoder, create=True)
    store.add(texts, ids=ids, metadata=metas, embeddings=emb)
    store.commit()
    yield col, store
    store.drop()
    col.close()


@pytest.fixture
def fresh(milvus_uri: str, encoder: FakeEncoder) -> Iterator[MilvusStore]:
    store = MilvusStore(milvus_uri, f"t_{uuid.uuid4().hex[:8]}", encoder=encoder, create=True)
    yield store
    if not store._closed:
        store.drop()


FILTERS = [None, {"tag": "a"}, {"n": {"$gte": 5}}, {"tag": {"$in": ["b", "c"]}, "n": {"$lt": 7}}]


@pytest.mark.parametrize("flt", FILTERS)
def test_dense_and_lexical_topk_match_the_collection(
    pair: tuple[Collection, MilvusStore], encoder: FakeEncoder, flt: Any
) -> None:
    col, store = pair
    q = encoder.encode_queries(QUERIES)
    for i in range(len(QUERIES)):
        a, b = (
            col.search_dense(q.dense_vecs[i], k=10, filter=flt),
            store.search_dense(q.dense_vecs[i], k=10, filter=flt),
        )
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
        a, b = (
            col.search_lexical(q.lexical_weights[i], k=10, filter=flt),
            store.search_lexical(q.lexical_weights[i], k=10, filter=flt),
        )
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_exact_scores_on_every_path_match(
    pair: tuple[Collection, MilvusStore], encoder: FakeEncoder
) -> None:
    col, store = pair
    q = encoder.encode_queries(QUERIES[:2])
    hits = store.search_dense(q.dense_vecs[0], k=40)
    ref = col.search_dense(q.dense_vecs[0], k=40)
    assert hits.ids == ref.ids
    np.testing.assert_allclose(
        store.colbert_scores(q.colbert_vecs[1], hits.keys),
        col.colbert_scores(q.colbert_vecs[1], ref.keys),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        store.lexical_scores(q.lexical_weights[1], hits.keys),
        col.lexical_scores(q.lexical_weights[1], ref.keys),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(store.dense_vecs(hits.keys), col.dense_vecs(ref.keys), atol=0)
    assert store.documents(hits.keys) == col.documents(ref.keys)


def test_retriever_end_to_end_matches(pair: tuple[Collection, MilvusStore]) -> None:
    col, store = pair
    fusion = FusionConfig(
        weights={"dense": 1.0, "lexical": 1.0, "colbert": 1.0}, normalization="zscore"
    )
    kw: dict[str, Any] = {"fusion": fusion, "recall": ["dense", "lexical"], "recall_k": 30}
    ra, rb = HybridRetriever(col, **kw), HybridRetriever(store, **kw)
    for query in QUERIES:
        a, b = ra.retrieve(query, k=10), rb.retrieve(query, k=10)
        assert a.ids == b.ids
        assert a.candidates == b.candidates
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        for ha, hb in zip(a, b, strict=True):
            for path in ("dense", "lexical", "colbert"):
                assert ha.paths[path].rank == hb.paths[path].rank
                assert ha.paths[path].recalled == hb.paths[path].recalled
                assert ha.paths[path].raw == pytest.approx(hb.paths[path].raw, rel=1e-5, abs=1e-6)
            assert ha.metadata == hb.metadata and ha.text == hb.text
    # the default fusion (BM25 included) runs on both
    assert len(HybridRetriever(store).retrieve(QUERIES[0], k=5)) == 5


def test_concurrent_queries_agree_with_sequential_ones(
    pair: tuple[Collection, MilvusStore],
) -> None:
    """A retriever's recall searches run together on a MilvusStore, and several retrievers may
    share one store across threads: the keys and rows it hands out stay consistent."""
    from concurrent.futures import ThreadPoolExecutor

    _, store = pair
    assert store.concurrent_reads is True
    retriever = HybridRetriever(store, recall_k=20)
    want = {q: retriever.retrieve(q, k=8) for q in QUERIES}
    store.refresh()
    asked = QUERIES * 3
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: retriever.retrieve(q, k=8), asked))
    for q, res in zip(asked, got, strict=True):
        assert res.ids == want[q].ids
        np.testing.assert_allclose(res.scores, want[q].scores, rtol=1e-5, atol=1e-6)
    keys = store.search_dense(np.ones(store.dim or 0, np.float32), k=50).keys
    assert len(set(keys.tolist())) == len(keys)  # no key handed out twice
    assert (
        store.documents(keys)[0].id
        == store.search_dense(np.ones(store.dim or 0, np.float32), k=1).ids[0]
    )


def test_bm25_rank_overlap(pair: tuple[Collection, MilvusStore]) -> None:
    col, store = pair
    overlaps = []
    for query in QUERIES:
        a, b = col.search_bm25(query, k=10), store.search_bm25(query, k=10)
        assert (b.scores > 0).all()  # milvus-lite's negative distances are turned around
        assert list(b.scores) == sorted(b.scores, reverse=True)
        overlaps.append(len(set(a.ids) & set(b.ids)) / 10)
        # the server's BM25 for given keys agrees with its own search
        np.testing.assert_allclose(store.bm25_scores(query, b.keys), b.scores, rtol=1e-5)
    assert np.mean(overlaps) >= 0.7, overlaps


def test_hybrid_search_fast_mode(
    pair: tuple[Collection, MilvusStore], encoder: FakeEncoder
) -> None:
    _, store = pair
    q = encoder.encode_queries([QUERIES[0]])
    hits = store.hybrid_search(QUERIES[0], q, k=5)
    assert len(hits) == 5
    weighted = store.hybrid_search(QUERIES[0], q, k=5, ranker="weighted", filter={"tag": "a"})
    assert set(weighted.ids) <= set(store.ids_matching({"tag": "a"}))
    with pytest.raises(ValueError, match="ranker"):
        store.hybrid_search(QUERIES[0], q, ranker="max")


FILTER_FAMILY = [
    {"n": 3},
    {"n": 3.0},
    {"n": True},
    {"flag": True},
    {"flag": 1},
    {"mixed": 1},
    {"mixed": "1"},
    {"mixed": True},
    {"mixed": {"$gte": 1}},
    {"mixed": {"$in": [True, "1"]}},
    {"x": {"$gt": 0}},
    {"x": {"$gte": -0.5, "$lt": 0.5}, "tag": "b"},
    {"tag": {"$in": []}},
    {"missing": "a"},
    {"n": {"$in": [1, 2, 3]}, "flag": False},
    {"n": {"$lte": 0}},
]


@pytest.mark.parametrize("flt", FILTER_FAMILY, ids=str)
def test_filters_agree_with_the_collection(pair: tuple[Collection, MilvusStore], flt: Any) -> None:
    col, store = pair
    assert sorted(store.ids_matching(flt)) == sorted(col.ids_matching(flt))


def test_filters_hypothesis(pair: tuple[Collection, MilvusStore]) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    col, store = pair
    scalar = st.one_of(
        st.integers(-1, 10), st.booleans(), st.sampled_from(["a", "b", "1"]), st.floats(-1, 10)
    )
    cond = st.one_of(
        scalar,
        st.fixed_dictionaries({"$in": st.lists(scalar, max_size=3)}),
        st.fixed_dictionaries({"$gte": st.floats(-1, 10)}, optional={"$lt": st.integers(0, 10)}),
    )
    spec = st.dictionaries(st.sampled_from(["n", "x", "tag", "flag", "mixed"]), cond, max_size=2)

    @hypothesis.settings(max_examples=25, deadline=None, database=None)
    @hypothesis.given(spec)
    def check(flt: dict[str, Any]) -> None:
        assert sorted(store.ids_matching(flt)) == sorted(col.ids_matching(flt))

    check()


def test_metadata_reads(pair: tuple[Collection, MilvusStore]) -> None:
    col, store = pair
    assert store.count() == col.count() == N
    assert sorted(store.ids()) == sorted(col.ids())
    assert store.metadata_values("tag") == col.metadata_values("tag")
    assert store.has_metadata("flag") and not store.has_metadata("nope")
    texts, _, metas = _corpus()
    assert store.has_content(texts[:3], metas[:3]) == [True, True, True]
    assert store.has_content(["unknown"]) == [False]


def test_staged_writes_commit_upsert_delete(fresh: MilvusStore, encoder: FakeEncoder) -> None:
    store = fresh
    assert store.add(["river glacier", "rocket laser"], ids=["a", "b"], metadata={"k": 1}) == [
        "a",
        "b",
    ]
    assert store.count() == 2  # staged adds count, as in Collection
    assert store.get("a")[0].text == "river glacier"
    q = encoder.encode_queries(["river glacier"])
    assert len(store.search_dense(q.dense_vecs[0], k=5)) == 0  # not visible before commit
    assert store.commit() == 1
    assert store.search_dense(q.dense_vecs[0], k=5).ids[0] == "a"
    with pytest.raises(DuplicateIdError):
        store.add(["again"], ids=["a"])
    # upsert twice converges: the same count, the new text, ColBERT rows of the new length
    for _ in range(2):
        store.upsert(["river"], ids=["a"], metadata=[{"k": 2}])
        store.commit()
    assert store.count() == 2
    doc = store.get(["a"])[0]
    assert doc.text == "river" and doc.metadata == {"k": 2}
    hits = store.search_dense(encoder.encode_queries(["river"]).dense_vecs[0], k=1)
    assert (
        store.colbert_vecs(hits.keys)[0].shape
        == encoder.encode_corpus(["river"]).colbert_vecs[0].shape
    )
    store.delete("b")
    assert store.count() == 1
    store.commit()
    assert store.count() == 1 and store.ids() == ["a"]
    with pytest.raises(UnknownIdError):
        store.delete(["b"])
    with pytest.raises(UnknownIdError):
        store.get(["b"])


def test_bad_input_changes_nothing(fresh: MilvusStore, encoder: FakeEncoder) -> None:
    store = fresh
    store.add(["ok"], ids=["ok"])
    good = encoder.encode_corpus(["x"])
    bad_dense = good.dense_vecs.copy()
    bad_dense[0, 0] = np.nan
    nan = M3Output.build(
        dense_vecs=bad_dense, lexical_weights=good.lexical_weights, colbert_vecs=good.colbert_vecs
    )
    cases: list[tuple[type[Exception], Any]] = [
        (InvalidDocumentError, lambda: store.add([" "], ids=["e"])),
        (InvalidDocumentError, lambda: store.add(["x"], ids=["i" * 600])),
        (InvalidDocumentError, lambda: store.add(["x" * 70_000], ids=["long"])),
        (InvalidDocumentError, lambda: store.add(["x"], ids=["m"], metadata=[{"v": float("nan")}])),
        (EmbeddingMismatchError, lambda: store.add(["x"], ids=["n"], embeddings=nan)),
        (DuplicateIdError, lambda: store.add(["x", "y"], ids=["d", "d"])),
        (TypeError, lambda: store.add([3], ids=["t"])),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
    assert list(store._staged) == ["ok"]
    with pytest.raises(ValueError, match="dimensions"):
        store.search_dense([1.0, 2.0])
    with pytest.raises(ValueError, match="filter"):
        store.search_dense(
            encoder.encode_queries(["x"]).dense_vecs[0], filter={"a": {"$regex": "x"}}
        )
    with pytest.raises(ValueError, match="keys"):
        store.dense_scores(encoder.encode_queries(["x"]).dense_vecs[0], np.array([99]))


def test_empty_sparse_documents_and_queries(fresh: MilvusStore, encoder: FakeEncoder) -> None:
    store = fresh
    emb = encoder.encode_corpus(["river"])
    empty = M3Output.build(
        dense_vecs=emb.dense_vecs, lexical_weights=[{}], colbert_vecs=emb.colbert_vecs
    )
    store.add(["river"], ids=["e"], embeddings=empty)  # Milvus refuses empty sparse vectors
    store.commit()
    assert len(store.search_lexical({}, k=3)) == 0  # an empty query skips the server
    assert len(store.search_lexical({5: 0.0}, k=3)) == 0
    q = encoder.encode_queries(["river"])
    assert store.search_lexical(q.lexical_weights[0], k=3).ids == []
    assert (
        store.lexical_scores(q.lexical_weights[0], store.search_dense(q.dense_vecs[0]).keys)[0] == 0
    )


def test_awkward_ids_round_trip(fresh: MilvusStore) -> None:
    ids = ['q"uote', "back\\slash", "new\nline", "tab\t", "\x01ctl", "émoji😀", "it's"]
    fresh.add(["river"] * len(ids), ids=ids, metadata=[{'we"ird\\key': i} for i in range(len(ids))])
    fresh.commit()
    assert [d.id for d in fresh.get(ids)] == ids
    assert sorted(fresh.ids_matching({'we"ird\\key': {"$gte": 3}})) == sorted(ids[3:])
    fresh.delete(ids[:2])
    fresh.commit()
    assert fresh.count() == len(ids) - 2


def test_open_existing_checks_encoder_and_format(
    milvus_uri: str, fresh: MilvusStore, raw_milvus_client: Any
) -> None:
    fresh.add(["river"], ids=["a"])
    fresh.commit()
    again = MilvusStore(milvus_uri, fresh.name, read_only=True)
    assert again.heads == fresh.heads and again.count() == 1
    with pytest.raises(ReadOnlyError):
        again.add(["x"])
    again.close()
    with pytest.raises(EncoderMismatchError):
        MilvusStore(milvus_uri, fresh.name, encoder=FakeEncoder(dim=8))
    with pytest.raises(CollectionNotFoundError):
        MilvusStore(milvus_uri, "no_such_collection")
    from pymilvus import DataType

    client = raw_milvus_client
    name = f"foreign_{uuid.uuid4().hex[:6]}"
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=8)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index)
    try:
        with pytest.raises(IndexFormatError, match="not made by m3rag"):
            MilvusStore(milvus_uri, name)
    finally:
        client.drop_collection(name)


def test_server_errors_are_wrapped(fresh: MilvusStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh.add(["river"], ids=["a"])

    def broken(*_: Any, **__: Any) -> Any:
        from pymilvus.exceptions import MilvusException

        raise MilvusException(code=1, message="disk on fire")

    monkeypatch.setattr(fresh._client, "upsert", broken)
    with pytest.raises(CommitError, match="disk on fire") as info:
        fresh.commit()
    assert isinstance(info.value.__cause__, RemoteStoreError)
    assert list(fresh._staged) == ["a"]  # kept for the retry
    monkeypatch.undo()
    fresh.commit()
    assert fresh.count() == 1
    with pytest.raises(RemoteStoreError, match=r"connect|has_collection"):
        MilvusStore("http://127.0.0.1:1", "x", timeout=1)


def test_open_store_specs(milvus_uri: str, tmp_path: Path, encoder: FakeEncoder) -> None:
    assert parse_milvus_uri("milvus://h:19530/docs") == ("http://h:19530", "docs", None)
    assert parse_milvus_uri("milvus+https://h/docs?db=x") == ("https://h", "docs", "x")
    for bad in (
        "milvus://user:pw@h:1/docs",
        "milvus://h:1/",
        "milvus://h:1/a?token=t",
        "http://h/x",
    ):
        with pytest.raises(ValueError):
            parse_milvus_uri(bad)
    col = open_store(tmp_path / "c", encoder=encoder, create=True)
    assert isinstance(col, Collection)
    col.close()
    assert isinstance(open_store(tmp_path / "c", read_only=True), Collection)
    if not milvus_uri.startswith("http://127.0.0.1"):
        return
    name = f"spec_{uuid.uuid4().hex[:6]}"
    store = open_store(
        f"milvus://{milvus_uri.removeprefix('http://')}/{name}", encoder=encoder, create=True
    )
    assert isinstance(store, MilvusStore)
    store.drop()


def test_expressions_and_analyzers() -> None:
    assert literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert compile_filter({"n": {"$gte": 2}}) == '(meta["n"] >= 2 and mtypes["n"] == "n")'
    assert compile_filter(None) == ""
    assert analyzer_params("zh") == {"tokenizer": "jieba"}
    assert {"type": "stemmer", "language": "german"} in analyzer_params("de")["filter"]
    assert analyzer_params("ja") == {"tokenizer": "standard", "filter": ["lowercase"]}


# -- the packed ColBERT layout ------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 3, 7, 64, 1024, 12_287])
def test_packed_layout_round_trips_bit_for_bit(dim: int) -> None:
    layout = ColbertLayout.for_dim(dim)
    rng = np.random.default_rng(dim)
    step = layout.tokens_per_chunk
    for ntok in sorted({0, 1, step - 1, step, step + 1, 2 * step + 3}):
        if ntok < 0:
            continue
        m = rng.standard_normal((ntok, dim)).astype(np.float32)
        if m.size:
            m.flat[0] = -0.0
            m.flat[-1] = np.float32(1e-45)  # a subnormal
        chunks = layout.pack(m)
        assert len(chunks) == layout.chunks(ntok)
        assert all(len(c) <= 65_535 for c in chunks)
        back = layout.unpack(dict(enumerate(chunks)), ntok)
        assert back.dtype == np.float32 and back.shape == (ntok, dim)
        assert back.tobytes() == m.tobytes()  # exact, signs of zeros included


def test_packed_layout_limits_and_bad_chunks() -> None:
    with pytest.raises(ValueError, match="too large"):
        ColbertLayout.for_dim(12_288)
    layout = ColbertLayout.for_dim(4)
    with pytest.raises(IndexFormatError, match="whole"):
        layout.unpack({0: "AAAA"}, 1)  # 3 bytes
    with pytest.raises(IndexFormatError, match="base64"):
        layout.unpack({0: "not base64!"}, 1)
    # a missing chunk reads as zeros (a concurrent writer), never as another document's rows
    assert not layout.unpack({}, 2).any()


@pytest.fixture
def odd(milvus_uri: str) -> Iterator[MilvusStore]:
    store = MilvusStore(
        milvus_uri, f"odd_{uuid.uuid4().hex[:8]}", heads=["colbert"], colbert_dim=5, create=True
    )
    yield store
    if not store._closed:
        store.drop()


def _colbert_only(mats: list[np.ndarray]) -> M3Output:
    return M3Output.build(colbert_vecs=mats)


def _side_rows(store: MilvusStore) -> list[str]:
    rows = store._client.query(store.side, filter="chunk >= 0", output_fields=["pk"], limit=1000)
    return sorted(str(r["pk"]) for r in rows)


def test_packed_colbert_on_the_server_exact_and_shrinking(odd: MilvusStore) -> None:
    step = odd._colbert.layout.tokens_per_chunk if odd._colbert else 0
    rng = np.random.default_rng(0)
    lengths = {"empty": 0, "one": 1, "edge": step, "long": 2 * step + 1, "q'\"\\": 3}
    mats = {i: rng.standard_normal((n, 5)).astype(np.float32) for i, n in lengths.items()}
    ids = list(mats)
    odd.add(["text"] * len(ids), ids=ids, embeddings=_colbert_only([mats[i] for i in ids]))
    odd.commit()
    hits = odd.search_bm25("text", k=10)
    got = dict(zip(hits.ids, odd.colbert_vecs(hits.keys), strict=True))
    assert set(got) == set(ids)
    for i in ids:
        assert got[i].dtype == np.float32 and got[i].tobytes() == mats[i].tobytes()
    assert len(_side_rows(odd)) == sum(-(-n // step) for n in lengths.values())
    # a shorter version leaves no stale chunk; writing it twice changes nothing
    short = rng.standard_normal((1, 5)).astype(np.float32)
    for _ in range(2):
        odd.upsert(["text"], ids=["long"], embeddings=_colbert_only([short]))
        odd.commit()
        assert [p for p in _side_rows(odd) if p.endswith(":long")] == ["0:long"]
    odd.refresh()
    key = odd.search_bm25("text", k=10)
    again = dict(zip(key.ids, odd.colbert_vecs(key.keys), strict=True))
    assert again["long"].tobytes() == short.tobytes()
    # longer again, then empty, then deleted: the side rows follow
    odd.upsert(["text"], ids=["one"], embeddings=_colbert_only([mats["long"]]))
    odd.upsert(["text"], ids=["edge"], embeddings=_colbert_only([mats["empty"]]))
    odd.delete(["q'\"\\"])
    odd.commit()
    rows = _side_rows(odd)
    assert sum(p.endswith(":one") for p in rows) == 3
    assert not [p for p in rows if p.endswith((":edge", ":q'\"\\"))]


def test_old_per_token_layout_is_refused(milvus_uri: str, odd: MilvusStore) -> None:
    import json

    from m3rag.index.milvus import CONFIG_KEY

    config = dict(odd._config, version=1, colbert_storage="side_collection")
    config.pop("colbert_layout")
    odd._client.alter_collection_properties(odd.name, {CONFIG_KEY: json.dumps(config)})
    with pytest.raises(IndexFormatError, match="one row per token"):
        MilvusStore(milvus_uri, odd.name)
    config = dict(odd._config, colbert_layout={"kind": "packed-int8", "version": 9})
    odd._client.alter_collection_properties(odd.name, {CONFIG_KEY: json.dumps(config)})
    with pytest.raises(IndexFormatError, match="ColBERT layout"):
        MilvusStore(milvus_uri, odd.name)


def test_has_metadata_is_cached_until_commit_or_refresh(
    fresh: MilvusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh.add(["river"], ids=["a"], metadata={"k": 1})
    fresh.commit()
    calls = []
    query = fresh._client.query
    monkeypatch.setattr(fresh._client, "query", lambda *a, **kw: calls.append(1) or query(*a, **kw))
    assert fresh.has_metadata("k") and not fresh.has_metadata("parent_id")
    assert fresh.has_metadata("k") and not fresh.has_metadata("parent_id")
    assert len(calls) == 2
    fresh.add(["lake"], ids=["b"], metadata={"parent_id": "x"})
    assert not fresh.has_metadata("parent_id")  # staged, as in Collection
    fresh.commit()
    before = len(calls)
    assert fresh.has_metadata("parent_id") and len(calls) == before + 1
    fresh.refresh()
    assert fresh.has_metadata("parent_id") and len(calls) == before + 2
