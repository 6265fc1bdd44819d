"""End-to-end retrieval with the tiny checkpoints: fusion vs compute_score, reranking, roll-up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from m3rag import (
    Chunker,
    Collection,
    FusionConfig,
    HybridRetriever,
    M3Encoder,
    Reranker,
    UnsupportedOutputError,
)
from m3rag.testing import MULTILINGUAL_SAMPLES, multilingual_corpus

pytestmark = pytest.mark.model

DOCS = [s for v in MULTILINGUAL_SAMPLES.values() for s in v] + multilingual_corpus(
    60, seed=31, max_words=80
)
QUERIES = [
    "What is the capital of France?",
    "北京是中国的首都",
    "検索システム",
    "القاهرة عاصمة مصر",
]


@pytest.fixture(scope="module")
def collection(tiny_encoder, tmp_path_factory: pytest.TempPathFactory) -> Collection:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("retr") / "c"
    col = Collection.create(path, encoder=tiny_encoder, colbert_dtype="float32")
    col.add(
        DOCS,
        ids=[f"d{i}" for i in range(len(DOCS))],
        metadata=[{"i": i, "lang": "x" if i % 2 else "y"} for i in range(len(DOCS))],
    )
    col.commit()
    return col


@pytest.mark.parametrize("weights", [(0.4, 0.2, 0.4), (1.0, 0.3, 1.0), (0.0, 1.0, 0.0)])
def test_weighted_none_fusion_ranks_as_compute_score(collection, tiny_m3_path, weights) -> None:  # type: ignore[no-untyped-def]
    w_d, w_s, w_c = weights
    fusion = FusionConfig(weights={"dense": w_d, "lexical": w_s, "colbert": w_c})
    retriever = HybridRetriever(collection, fusion=fusion, recall_k=20)
    # one pair per compute_score batch: no padding, so its ColBERT scores are the exact MaxSim
    oracle = M3Encoder(tiny_m3_path, device="cpu", batch_size=1)
    for q in QUERIES:
        results = retriever.retrieve(q, k=1000)
        assert len(results) == results.candidates
        pairs = [(q, h.text) for h in results]
        want = oracle.compute_score(pairs, weights=weights)["colbert+sparse+dense"]
        got = np.array([h.fused_score for h in results])
        np.testing.assert_allclose(got, want, atol=1e-5)
        # the retriever's order is the order compute_score gives (up to float ties)
        assert (np.diff(got) <= 1e-12).all()
        assert (np.diff(want) <= 2e-5).all()


def test_every_candidate_is_scored_on_every_path(collection) -> None:  # type: ignore[no-untyped-def]
    retriever = HybridRetriever(collection, recall_k=5)
    results = retriever.retrieve("北京是中国的首都", k=5)
    assert set(results.paths) == {"dense", "lexical", "colbert", "bm25"}
    recalled_any = 0
    for hit in results:
        assert set(hit.paths) == {"dense", "lexical", "colbert", "bm25"}
        recalled_any += any(p.recalled for p in hit.paths.values())
        assert all(p.rank >= 1 for p in hit.paths.values())
    assert recalled_any == len(results)
    assert results.candidates <= 15  # three paths, five each
    text = str(results)
    assert "dense" in text and "bm25" in text and "北京" in text
    assert "rank" in results[0].explain()


def test_reranker_order_is_final_and_scores_are_kept(collection, tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    reranker = Reranker(tiny_reranker_path, device="cpu")
    retriever = HybridRetriever(collection, reranker=reranker, recall_k=10, rerank_top_n=8)
    plain = HybridRetriever(collection, recall_k=10)
    for q in QUERIES:
        fused = plain.retrieve(q, k=8)
        results = retriever.retrieve(q, k=8)
        expected = reranker.rerank(q, [h.text for h in fused])
        assert results.ids == [fused[r.index].id for r in expected]
        for hit, r in zip(results, expected, strict=True):
            assert hit.rerank_score == pytest.approx(r.score, abs=1e-6)
            assert hit.score == hit.rerank_score
            assert hit.fused_score == pytest.approx(fused[r.index].fused_score)
            assert hit.paths == fused[r.index].paths


def test_rrf_and_normalised_fusions_run(collection) -> None:  # type: ignore[no-untyped-def]
    for fusion in (
        FusionConfig(method="rrf", weights={"dense": 1, "lexical": 1, "bm25": 1}),
        FusionConfig(weights={"dense": 1, "bm25": 1}, normalization="zscore"),
        FusionConfig(weights={"bm25": 1}, normalization="minmax"),
    ):
        results = HybridRetriever(collection, fusion=fusion).retrieve("capital of France", k=5)
        assert len(results) == 5
        assert results.scores == sorted(results.scores, reverse=True)


def test_filters_batches_and_async(collection, run_counting_ticks) -> None:  # type: ignore[no-untyped-def]
    # raw scores: a z-score depends on the candidate set, which float noise between a batched
    # and a single encoding can change at the recall boundary
    retriever = HybridRetriever(collection, recall_k=10, fusion=FusionConfig())
    results = retriever.retrieve("capital", k=5, filter={"lang": "x"})
    assert len(results) == 5 and all(h.metadata["lang"] == "x" for h in results)
    batch = retriever.retrieve_batch(QUERIES, k=4)
    for q, res in zip(QUERIES, batch, strict=True):
        single = retriever.retrieve(q, k=4)
        assert res.ids == single.ids
        np.testing.assert_allclose(res.scores, single.scores, atol=1e-5)

    res, ticks = run_counting_ticks(lambda: retriever.aretrieve("北京", k=3))
    assert len(res) == 3 and ticks > 1


def test_k_larger_than_the_collection_returns_everything(collection) -> None:  # type: ignore[no-untyped-def]
    retriever = HybridRetriever(collection, recall_k=5)
    results = retriever.retrieve("the", k=10_000)
    assert len(results) == collection.count()


def test_bad_input(collection, minlm_collection) -> None:  # type: ignore[no-untyped-def]
    retriever = HybridRetriever(collection)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            retriever.retrieve(bad)
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            retriever.retrieve("q", k=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recall"):
        HybridRetriever(collection, recall=("splade",))
    with pytest.raises(ValueError, match="valid paths"):
        HybridRetriever(collection, fusion=FusionConfig(weights={"sparse": 1}))
    with pytest.raises(UnsupportedOutputError, match="lexical"):
        HybridRetriever(minlm_collection, fusion=FusionConfig(weights={"dense": 1, "lexical": 1}))
    with pytest.raises(UnsupportedOutputError, match="lexical"):
        HybridRetriever(
            minlm_collection, recall=("dense", "lexical"), fusion=FusionConfig(weights={"dense": 1})
        )
    ok = HybridRetriever(
        minlm_collection,
        recall=("dense", "bm25"),
        fusion=FusionConfig(weights={"dense": 1, "bm25": 1}, normalization="minmax"),
    )
    assert len(ok.retrieve("a man eating", k=2)) == 2


@pytest.fixture(scope="module")
def minlm_collection(minilm_path, tmp_path_factory: pytest.TempPathFactory) -> Collection:  # type: ignore[no-untyped-def]
    enc = M3Encoder(minilm_path, device="cpu")
    col = Collection.create(tmp_path_factory.mktemp("minilm") / "c", encoder=enc)
    col.add(
        ["A man is eating food.", "A monkey plays drums.", "北京是中国的首都"], ids=["a", "b", "c"]
    )
    col.commit()
    return col


def test_chunks_roll_up_to_parents(tiny_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tiny_encoder.tokenizer, max_tokens=48, overlap=8)
    parents = {
        "beijing": ("北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 6),
        "paris": ("Paris is the capital and most populous city of France. " * 8),
        "rain": ("Rainfall in the northern valleys doubled this year. " * 8),
    }
    col = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    for pid, text in parents.items():
        chunks = chunker.split(text, parent_id=pid)
        assert len(chunks) > 1
        col.add(
            [c.text for c in chunks],
            ids=[c.id for c in chunks],
            metadata=[{"parent_id": pid, "start": c.start, "end": c.end} for c in chunks],
        )
    col.commit()
    # the default rolls chunks up; rollup=None keeps them
    assert HybridRetriever(col, recall_k=50).rollup == "max"
    chunk_results = HybridRetriever(col, recall_k=50, rollup=None).retrieve(
        "capital of France", k=100
    )
    assert len(chunk_results) == col.count()
    for mode in ("max", "max_mean"):
        retriever = HybridRetriever(col, recall_k=50, rollup=mode)
        results = retriever.retrieve("capital of France", k=10)
        assert sorted(results.ids) == sorted(parents)
        for hit in results:
            members = [h for h in chunk_results if h.parent_id == hit.id]
            best = max(members, key=lambda h: h.fused_score)
            assert hit.chunk_id == best.id and hit.text == best.text
            assert hit.chunks == len(members)
            want = best.fused_score + (
                0.3 * np.mean([h.fused_score for h in members]) if mode == "max_mean" else 0
            )
            assert hit.score == pytest.approx(want)
    col.close()


def test_precomputed_query_embeddings(collection, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    retriever = HybridRetriever(collection, recall_k=10)
    q = "北京是中国的首都"
    enc = tiny_encoder.encode_queries([q])
    assert retriever.retrieve(q, k=5, query_embeddings=enc).ids == retriever.retrieve(q, k=5).ids
    with pytest.raises(ValueError, match="one entry per query"):
        retriever.retrieve_batch([q, q], k=5, query_embeddings=enc)


def test_colbert_precision_bfloat16(collection) -> None:  # type: ignore[no-untyped-def]
    q = "北京是中国的首都"
    exact = HybridRetriever(collection, recall_k=20).retrieve(q, k=8)
    fast = HybridRetriever(collection, recall_k=20, colbert_precision="bfloat16").retrieve(q, k=8)
    e = {h.id: h.paths["colbert"].raw for h in exact}
    f = {h.id: h.paths["colbert"].raw for h in fast}
    assert e.keys() & f.keys()
    for doc_id in e.keys() & f.keys():
        assert abs(e[doc_id] - f[doc_id]) <= 3 * 2.0**-8
    with pytest.raises(ValueError, match="colbert_precision"):
        HybridRetriever(collection, colbert_precision="half")


def test_only_returned_hits_are_built_but_ranks_cover_every_candidate(collection) -> None:  # type: ignore[no-untyped-def]
    retriever = HybridRetriever(collection, recall_k=20)
    q = QUERIES[0]
    everything = retriever.retrieve(q, k=20)  # the same recall depth
    top = retriever.retrieve(q, k=3)
    assert len(top) == 3 < top.candidates
    # ranks are among all candidates, not among the three built
    assert max(p.rank for h in top for p in h.paths.values()) > 3
    assert top.candidates == everything.candidates
    assert top.ids == everything.ids[:3]
    for short, full in zip(top, everything, strict=False):
        assert short.paths == full.paths  # raw, normalised, rank over all candidates


def test_dense_recall_from_the_graph_or_exact(tmp_path: Path) -> None:
    pytest.importorskip("usearch")
    from types import SimpleNamespace

    from m3rag.testing import random_outputs

    # random vectors with a numpy oracle (the tiny model's dense vectors are near-duplicates)
    out = random_outputs(40, seed=41, dim=32)
    col = Collection.create(tmp_path / "c", heads=("dense",), dim=32, ann=True)
    col.add([f"t{i}" for i in range(40)], ids=[f"d{i}" for i in range(40)], embeddings=out)
    col.commit()
    calls: list[object] = []
    search = col.search_dense

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("exact"))
        return search(*args, **kwargs)

    col.search_dense = spy  # type: ignore[method-assign]
    encoder = SimpleNamespace(heads=("dense",), dim=32)
    query = random_outputs(1, seed=42, dim=32)
    fusion = FusionConfig(weights={"dense": 1.0})
    results = [
        HybridRetriever(
            col,
            encoder=encoder,  # type: ignore[arg-type]
            recall=("dense",),
            recall_k=10,
            fusion=fusion,
            exact_dense=flag,
        ).retrieve("q", k=5, query_embeddings=query)
        for flag in (None, True)
    ]
    approx, exact = results
    assert calls == [None, True]
    vecs, q = out.dense_vecs, query.dense_vecs
    assert vecs is not None and q is not None
    oracle = vecs @ q[0]
    # exact recall returns the brute-force top 5; graph recall is approximate (its recall is
    # tested in tests/index/test_ann.py) but every score it reports is the exact product
    assert exact.ids == [f"d{i}" for i in np.lexsort((np.arange(40), -oracle))[:5]]
    for hits in (approx, exact):
        want = [oracle[int(h.id[1:])] for h in hits]
        np.testing.assert_allclose([h.paths["dense"].raw for h in hits], want, atol=1e-6)
    with pytest.raises(ValueError, match="exact_dense"):
        HybridRetriever(col, encoder=encoder, exact_dense=False)  # type: ignore[arg-type]
    col.close()


class _Remote:
    """A collection posing as a remote store: ``concurrent_reads``, and slow searches."""

    concurrent_reads = True

    def __init__(self, inner: Collection) -> None:
        self.inner = inner
        self.threads: dict[str, str] = {}
        self.lock = threading.Lock()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        value = getattr(self.inner, name)
        if not name.startswith("search_"):
            return value

        def search(*a, **kw):  # type: ignore[no-untyped-def]
            with self.lock:
                self.threads[name] = threading.current_thread().name
            time.sleep(0.05)  # a round trip
            return value(*a, **kw)

        return search


def test_recall_runs_together_on_a_store_that_allows_it(collection) -> None:  # type: ignore[no-untyped-def]
    remote = _Remote(collection)
    want = HybridRetriever(collection, recall_k=20)
    got = HybridRetriever(remote, recall_k=20)  # type: ignore[arg-type]
    for query in ("capital of France", "北京", "embedding model"):
        a, b = want.retrieve(query, k=5), got.retrieve(query, k=5)
        assert a.ids == b.ids and a.scores == pytest.approx(b.scores)
        assert set(remote.threads) == {"search_dense", "search_lexical", "search_bm25"}
        names = set(remote.threads.values())
        assert len(names) == 3 and all(n.startswith("m3rag-recall") for n in names)
        remote.threads.clear()
    # an embedded collection searches on the caller's thread, one path after another
    assert not getattr(collection, "concurrent_reads", False)
