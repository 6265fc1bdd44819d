"""End-to-end hybrid query latency on synthetic BGE-M3-like data, against the peers, same vectors.

m3rag: dense top-100 + lexical top-100 recall, every candidate scored on every path (ColBERT
MaxSim from the stored vectors where ColBERT is stored), weighted fusion, top-10. From
``--ann-min`` passages (default 1M) the collection keeps an HNSW graph and dense recall comes
from it; the same queries then also run with exact dense recall, and the overlap of the two
top-10s is reported. Before the timed queries the collection's files are read once, so they
run with the collection in the page cache (see ``_common.warm_page_cache``). Query encoding
is excluded on every side (the query embeddings are precomputed and handed in).

Peers on the same vectors:
* milvus-lite ``hybrid_search`` (dense FLAT/IP + sparse inverted index/IP, ``WeightedRanker``);
* LlamaIndex ``BGEM3Index.query`` with its model's ``encode`` replaced by the precomputed query
  embedding (its scoring loop is what is timed: dense matmul, a Python lexical score and a torch
  ColBERT score per passage);
* LangChain ``EnsembleRetriever(retrievers=[BM25Retriever, InMemoryVectorStore.as_retriever()],
  weights=[0.5, 0.5])`` (weighted reciprocal rank fusion), each sub-retriever asked for the same
  recall depth as m3rag (100), the top 10 of the fused list kept. LangChain has no BGE-M3
  lexical weights, so its BM25 (rank-bm25 ``BM25Okapi``, ``str.split``) runs over synthetic
  texts spelled from each passage's lexical token ids (``"w123 w4567 ..."``; a query's text from
  its 20 query tokens); its dense side gets the same vectors through an ``Embeddings`` that looks
  up the precomputed vector of a text (a dict lookup and a ``tolist()``, inside the timed
  ``invoke``; no model runs). Timed: ``retriever.invoke(query_text)``. Its build time covers
  ``BM25Retriever.from_texts`` and ``InMemoryVectorStore.add_texts`` and excludes generating the
  vectors and texts (``langchain_data_s``), whereas m3rag's and milvus-lite's ``build_s`` include
  generating the vectors, batch by batch, so the build figures are not compared as a ratio.

m3rag does more per query than this LangChain peer (BGE-M3 lexical recall and, up to
``--colbert-max``, ColBERT MaxSim on every candidate, vs BM25 + dense); the ratios are of latency
at that work, not of identical algorithms.

Run: ``.venv/bin/python benchmarks/bench_retriever.py [--quick] [--sizes 10000,100000,1000000]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    machine,
    percentiles,
    warm_page_cache,
    write_results,
    zipf_lexical,
    zipf_probabilities,
)

HERE = Path(__file__).resolve().parent


def data(n: int, *, dim: int, colbert_tokens: int, seed: int, zipf_p: np.ndarray) -> Any:
    from m3rag import M3Output

    rng = np.random.default_rng(seed)
    centroids = np.random.default_rng(12345).standard_normal((2000, dim), dtype=np.float32)
    dense = centroids[rng.integers(0, 2000, size=n)] + 0.6 * rng.standard_normal(
        (n, dim), dtype=np.float32
    )
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    lexical = zipf_lexical(n, tokens=60, rng=rng, p=zipf_p)
    colbert = None
    if colbert_tokens > 0:
        colbert = []
        for _ in range(n):
            m = rng.standard_normal((colbert_tokens, dim), dtype=np.float32)
            colbert.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    return M3Output.build(dense_vecs=dense, lexical_weights=lexical, colbert_vecs=colbert)


def ours(
    folder: Path, n: int, args: argparse.Namespace, zipf_p: np.ndarray, queries: Any
) -> dict[str, Any]:
    from m3rag import Collection, FusionConfig, HybridRetriever, M3Output

    with_colbert = n <= args.colbert_max
    with_ann = n >= args.ann_min
    heads = ("dense", "sparse", "colbert") if with_colbert else ("dense", "sparse")
    col = Collection.create(
        folder,
        heads=heads,
        dim=args.dim,
        colbert_dim=args.dim,
        dense_dtype="float16",
        colbert_dtype="int8",
        ann=with_ann,
    )
    start = time.perf_counter()
    for b in range(0, n, 10_000):
        m = min(10_000, n - b)
        out = data(
            m,
            dim=args.dim,
            colbert_tokens=args.colbert_tokens if with_colbert else 0,
            seed=b,
            zipf_p=zipf_p,
        )
        col.add([f"p{b + i}" for i in range(m)], ids=[str(b + i) for i in range(m)], embeddings=out)
        col.commit()
    build = time.perf_counter() - start
    col.close()
    warm_s = warm_page_cache(folder)
    col = Collection.open(folder, read_only=True)
    weights = (
        {"dense": 0.4, "lexical": 0.2, "colbert": 0.4}
        if with_colbert
        else {"dense": 0.4, "lexical": 0.2}
    )

    def run(*, exact_dense: bool | None) -> tuple[list[float], list[list[str]]]:
        retriever = HybridRetriever(
            col,
            encoder=_FakeEncoder(heads, args.dim),
            recall=("dense", "lexical"),
            fusion=FusionConfig(weights=weights),
            recall_k=100,
            exact_dense=exact_dense,
        )
        times, tops = [], []
        for i in range(len(queries)):
            q = queries[i]
            if not with_colbert:
                q = M3Output.build(dense_vecs=q.dense_vecs, lexical_weights=q.lexical_weights)
            t = time.perf_counter()
            res = retriever.retrieve("synthetic query", k=10, query_embeddings=q)
            times.append(time.perf_counter() - t)
            tops.append(res.ids)
        return times, tops

    times, tops = run(exact_dense=None)
    row: dict[str, Any] = {
        "m3rag": percentiles(times),
        "m3rag_colbert": with_colbert,
        "m3rag_dense_recall": "hnsw" if with_ann else "exact",
        "build_s": build,
        "warm_page_cache_s": warm_s,
        "top10": tops,
    }
    if with_ann:
        # the same queries with exact dense recall: its latency, and how many of the top 10
        # the graph's candidates change
        exact_times, exact_tops = run(exact_dense=True)
        row["m3rag_exact_dense"] = percentiles(exact_times)
        row["top10_overlap_with_exact_dense"] = float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(tops, exact_tops, strict=True)])
        )
    col.close()
    return row


class _FakeEncoder:
    """Stands in for the query encoder: queries are precomputed, so only the heads are read."""

    def __init__(self, heads: tuple[str, ...], dim: int) -> None:
        self.heads = heads
        self.dim = dim


def milvus(
    n: int, args: argparse.Namespace, zipf_p: np.ndarray, queries: Any, work: Path
) -> dict[str, Any]:
    from pymilvus import AnnSearchRequest, DataType, MilvusClient, WeightedRanker

    client = MilvusClient(str(work / f"milvus{n}.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=args.dim)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    index = client.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection("bench", schema=schema, index_params=index)
    start = time.perf_counter()
    for b in range(0, n, 5_000):
        m = min(5_000, n - b)
        out = data(m, dim=args.dim, colbert_tokens=0, seed=(b // 10_000) * 10_000, zipf_p=zipf_p)
        offset = b % 10_000
        if offset:  # the same vectors as m3rag's 10k batches
            out = data(
                10_000, dim=args.dim, colbert_tokens=0, seed=(b // 10_000) * 10_000, zipf_p=zipf_p
            )[offset : offset + m]
        rows = [
            {"id": b + i, "dense": out.dense_vecs[i].tolist(), "sparse": out.lexical_weights[i]}
            for i in range(m)
        ]
        client.insert("bench", rows)
    client.load_collection("bench")
    build = time.perf_counter() - start
    times = []
    for i in range(min(len(queries), args.peer_queries)):
        q = queries[i]
        reqs = [
            AnnSearchRequest([q.dense_vecs[0].tolist()], "dense", {"metric_type": "IP"}, limit=100),
            AnnSearchRequest([q.lexical_weights[0]], "sparse", {"metric_type": "IP"}, limit=100),
        ]
        t = time.perf_counter()
        client.hybrid_search("bench", reqs, WeightedRanker(0.4, 0.2), limit=10)
        times.append(time.perf_counter() - t)
    client.close()
    return {"milvus_lite_hybrid": percentiles(times), "milvus_build_s": build}


def bgem3index(
    n: int, args: argparse.Namespace, zipf_p: np.ndarray, queries: Any, ckpt: Path
) -> dict[str, Any]:
    from llama_index.core.schema import TextNode
    from llama_index.indices.managed.bge_m3 import BGEM3Index

    # BGEM3Index cannot be built empty (it encodes [] and crashes), so build it on one node
    # and then replace its stores with the benchmark's vectors
    index = BGEM3Index(
        nodes=[TextNode(id_="seed", text="seed")],
        model_name=str(ckpt),
        weights_for_different_modes=[0.4, 0.2, 0.4],
    )
    outs = [
        data(
            min(10_000, n - b),
            dim=args.dim,
            colbert_tokens=args.colbert_tokens,
            seed=b,
            zipf_p=zipf_p,
        )
        for b in range(0, n, 10_000)
    ]
    nodes = [TextNode(id_=str(i), text=f"p{i}") for i in range(n)]
    index.docstore.add_documents(nodes)
    index._docs_pos_to_node_id = {i: str(i) for i in range(n)}
    index._multi_embed_store = {
        "dense_vecs": np.concatenate([o.dense_vecs for o in outs]),
        "lexical_weights": [
            {str(k): np.float32(v) for k, v in d.items()} for o in outs for d in o.lexical_weights
        ],
        "colbert_vecs": [m for o in outs for m in o.colbert_vecs],
    }
    times = []
    for i in range(min(len(queries), args.peer_queries)):
        q = queries[i]
        embed = {
            "dense_vecs": q.dense_vecs[0],
            "lexical_weights": {str(k): np.float32(v) for k, v in q.lexical_weights[0].items()},
            "colbert_vecs": q.colbert_vecs[0],
        }
        index.model.encode = lambda *a, _e=embed, **kw: _e  # query encoding excluded
        t = time.perf_counter()
        index.query("synthetic query", top_k=10)
        times.append(time.perf_counter() - t)
    return {"bgem3index": percentiles(times)}


def lexical_text(weights: dict[int, float]) -> str:
    """A synthetic passage or query text spelled from its lexical token ids, for BM25."""
    return " ".join(f"w{t}" for t in weights)


def precomputed_embeddings(texts: list[str], vectors: np.ndarray) -> Any:
    """A LangChain ``Embeddings`` returning the benchmark's vectors, looked up by text.

    No model forward pass runs, as on every side; ``seconds`` adds up the lookups of
    ``embed_documents`` so a caller can take them out of an ingest time.
    """
    from langchain_core.embeddings import Embeddings

    class PrecomputedEmbeddings(Embeddings):
        def __init__(self) -> None:
            self.rows = {t: i for i, t in enumerate(texts)}
            if len(self.rows) != len(texts):
                msg = "synthetic texts repeat; a text would not name one vector"
                raise ValueError(msg)
            self.vectors = vectors
            self.seconds = 0.0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            start = time.perf_counter()
            out = [self.vectors[self.rows[t]].tolist() for t in texts]
            self.seconds += time.perf_counter() - start
            return out

        def embed_query(self, text: str) -> list[float]:
            return self.vectors[self.rows[text]].tolist()

    return PrecomputedEmbeddings()


def _ensemble_retriever_class() -> Any:
    try:  # LangChain 1.x moved the classic retrievers to langchain-classic
        from langchain_classic.retrievers import EnsembleRetriever
    except ImportError:
        from langchain.retrievers import EnsembleRetriever
    return EnsembleRetriever


def langchain_ensemble(
    n: int, args: argparse.Namespace, zipf_p: np.ndarray, queries: Any
) -> dict[str, Any]:
    import warnings

    from langchain_core.vectorstores import InMemoryVectorStore

    with warnings.catch_warnings():  # langchain-community announces its sunset on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.retrievers import BM25Retriever
    EnsembleRetriever = _ensemble_retriever_class()

    start = time.perf_counter()
    outs = [
        data(min(10_000, n - b), dim=args.dim, colbert_tokens=0, seed=b, zipf_p=zipf_p)
        for b in range(0, n, 10_000)
    ]  # the same vectors as m3rag's 10k batches
    texts = [lexical_text(d) for o in outs for d in o.lexical_weights]
    query_texts = [lexical_text(d) for d in queries.lexical_weights]
    embeddings = precomputed_embeddings(
        texts + query_texts,
        np.concatenate([*(o.dense_vecs for o in outs), queries.dense_vecs]),
    )
    ids = [str(i) for i in range(n)]
    data_s = time.perf_counter() - start
    del outs

    depth = 100  # m3rag's recall_k
    start = time.perf_counter()
    bm25 = BM25Retriever.from_texts(texts, ids=ids, k=depth)
    store = InMemoryVectorStore(embeddings)
    store.add_texts(texts, ids=ids)
    retriever = EnsembleRetriever(
        retrievers=[bm25, store.as_retriever(search_kwargs={"k": depth})], weights=[0.5, 0.5]
    )
    build = time.perf_counter() - start
    times = []
    for i in range(min(len(queries), args.peer_queries)):
        t = time.perf_counter()
        docs = retriever.invoke(query_texts[i])[:10]
        times.append(time.perf_counter() - t)
        if len(docs) != 10:
            msg = f"the LangChain ensemble returned {len(docs)} documents, not 10"
            raise RuntimeError(msg)
    return {
        "langchain_ensemble": percentiles(times),
        "langchain_build_s": build,
        "langchain_data_s": data_s,
        "langchain_recall_k": depth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--colbert-tokens", type=int, default=16)
    parser.add_argument(
        "--colbert-max", type=int, default=100_000, help="largest size with ColBERT stored"
    )
    parser.add_argument(
        "--ann-min",
        type=int,
        default=1_000_000,
        help="smallest size whose dense recall comes from an HNSW graph (ann=True)",
    )
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--peer-queries", type=int, default=5)
    parser.add_argument("--milvus-max", type=int, default=100_000)
    parser.add_argument("--bgem3-max", type=int, default=10_000)
    parser.add_argument(
        "--langchain-max",
        type=int,
        default=100_000,
        help="largest size for the LangChain ensemble (it keeps vectors as Python lists)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "retriever.json")
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")  # keep the full run's file
    if args.quick:
        args.sizes, args.dim, args.queries, args.peer_queries = "2000", 64, 5, 2
        args.ann_min = 2000  # the HNSW path runs in the quick form too
        args.milvus_max = args.bgem3_max = args.langchain_max = 2000
    zipf_p = zipf_probabilities()
    queries = data(
        args.queries, dim=args.dim, colbert_tokens=args.colbert_tokens, seed=424242, zipf_p=zipf_p
    )
    short = [dict(list(d.items())[:20]) for d in queries.lexical_weights]
    from m3rag import M3Output

    queries = M3Output.build(
        dense_vecs=queries.dense_vecs, lexical_weights=short, colbert_vecs=queries.colbert_vecs
    )
    work = Path(tempfile.mkdtemp(prefix="m3rag-bench-retriever-"))
    results: dict[str, Any] = {
        "benchmark": "retriever",
        "command": " ".join(["benchmarks/bench_retriever.py", *sys.argv[1:]]),
        "machine": machine(),
        "cores": os.cpu_count(),
        "dim": args.dim,
        "colbert_tokens": args.colbert_tokens,
        "rows": [],
    }
    ckpt = None
    try:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            row: dict[str, Any] = {"passages": n}
            row.update(ours(work / f"c{n}", n, args, zipf_p, queries))
            row.pop("top10")
            shutil.rmtree(work / f"c{n}", ignore_errors=True)
            if n <= args.milvus_max:
                row.update(milvus(n, args, zipf_p, queries, work))
                row["speedup_vs_milvus_lite"] = (
                    row["milvus_lite_hybrid"]["p50_ms"] / row["m3rag"]["p50_ms"]
                )
            if n <= args.bgem3_max:
                if ckpt is None:
                    from m3rag.testing import build_m3_checkpoint

                    ckpt = build_m3_checkpoint(work / "tiny")
                row.update(bgem3index(n, args, zipf_p, queries, ckpt))
                row["speedup_vs_bgem3index"] = row["bgem3index"]["p50_ms"] / row["m3rag"]["p50_ms"]
            if n <= args.langchain_max:
                row.update(langchain_ensemble(n, args, zipf_p, queries))
                row["speedup_vs_langchain_ensemble"] = (
                    row["langchain_ensemble"]["p50_ms"] / row["m3rag"]["p50_ms"]
                )
            results["rows"].append(row)
            print(json.dumps(row))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
