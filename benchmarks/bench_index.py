"""Index benchmark on synthetic data with BGE-M3-like statistics (model excluded).

Passages get Zipf-distributed token ids over a 250,002-token vocabulary (~60 lexical tokens
each, weights in (0, 0.5]), unit-norm dense vectors (1024-d by default) and, for the ColBERT
part, unit-norm token matrices (~200 x 1024). Reported per size: store ingest rate, query
p50/p95 per path (dense exact, lexical exact, ColBERT MaxSim over 100 candidates), disk size
and the peak RSS of a fresh process that opens the index and queries it (the index's files
are read once first, so queries run with them in the page cache; plain reads, not counted in
RSS). The lexical path is compared in the same run with a brute-force ``scipy.sparse``
product on the same weights (and checked to return the same top-10).

Run: ``.venv/bin/python benchmarks/bench_index.py [--quick] [--sizes 100000,1000000]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    VOCAB,
    colbert_mats,
    percentiles,
    warm_page_cache,
    write_results,
    zipf_lexical,
    zipf_probabilities,
)

HERE = Path(__file__).resolve().parent


def clustered(
    n: int, *, dim: int, seed: int, clusters: int = 2000, spread: float = 0.6
) -> np.ndarray:
    """Unit vectors around random topic centroids: closer to real embeddings than uniform noise
    (which is the worst case for graph indexes, every point being nearly orthogonal to all)."""
    centroids = np.random.default_rng(12345).standard_normal((clusters, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    vecs = centroids[rng.integers(0, clusters, size=n)] + spread * rng.standard_normal(
        (n, dim), dtype=np.float32
    )
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def synthetic(
    n: int, *, dim: int, tokens: int, seed: int, zipf_p: np.ndarray, dense_kind: str = "uniform"
) -> tuple[np.ndarray, list[dict[int, float]]]:
    if dense_kind == "clustered":
        return clustered(n, dim=dim, seed=seed), []
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, dim), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    # the lexical part has its own stream, so it does not depend on the dense size
    lexical = zipf_lexical(n, tokens=tokens, rng=np.random.default_rng(seed + 1_000_003), p=zipf_p)
    return dense, lexical


def build(
    folder: Path, n: int, args: argparse.Namespace, zipf_p: np.ndarray, *, ann: bool = False
) -> dict[str, Any]:
    from m3rag import Collection, M3Output

    heads = ("dense",) if ann else ("dense", "sparse")
    col = Collection.create(
        folder, heads=heads, dim=args.dim, dense_dtype=args.dense_dtype, ann=ann
    )
    batch = 10_000
    gen_time = 0.0
    start = time.perf_counter()
    for b in range(0, n, batch):
        t0 = time.perf_counter()
        m = min(batch, n - b)
        kind = "clustered" if ann else "uniform"
        dense, lexical = synthetic(
            m, dim=args.dim, tokens=args.tokens, seed=b, zipf_p=zipf_p, dense_kind=kind
        )
        out = M3Output.build(dense_vecs=dense, lexical_weights=lexical if not ann else None)
        gen_time += time.perf_counter() - t0
        col.add(
            [f"passage {b + i}" for i in range(m)],
            ids=[str(b + i) for i in range(m)],
            embeddings=out,
        )
        col.commit()
    elapsed = time.perf_counter() - start - gen_time
    col.close()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"passages": n, "ingest_per_s": n / elapsed, "ingest_s": elapsed, "disk_mb": size / 1e6}


QUERY_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
sys.path[:0] = json.loads(sys.argv[3])
from m3rag import Collection
folder, spec = sys.argv[1], json.loads(sys.argv[2])
col = Collection.open(folder, read_only=True)
qs = np.load(spec["queries"], allow_pickle=False)
lex = json.loads(open(spec["lexical"]).read())
out = {"dense": [], "lexical": [], "lexical_top10": [], "ann": [], "ann_recall": []}
for q in qs[: spec["dense_queries"]]:
    t = time.perf_counter()
    exact = col.search_dense(q, k=10, exact=True)
    out["dense"].append(time.perf_counter() - t)
    if spec.get("ann"):
        t = time.perf_counter()
        approx = col.search_dense(q, k=10)
        out["ann"].append(time.perf_counter() - t)
        out["ann_recall"].append(len(set(approx.ids) & set(exact.ids)) / 10)
if spec.get("ann"):
    lex = []
if lex:
    # the first lexical query of a large collection builds the head-token impact table
    t = time.perf_counter()
    col.search_lexical({int(k): v for k, v in lex[0].items()}, k=10)
    out["lexical_first_query_s"] = time.perf_counter() - t
for w in lex:
    w = {int(k): v for k, v in w.items()}
    t = time.perf_counter()
    hits = col.search_lexical(w, k=10)
    out["lexical"].append(time.perf_counter() - t)
    out["lexical_top10"].append(hits.ids)
# VmHWM, not ru_maxrss: Linux carries the parent's maxrss over fork + exec
status = open("/proc/self/status").read()
field = lambda name: int(status.split(name + ":")[1].split()[0]) / 1024
out["peak_rss_mb"] = field("VmHWM")
# at the end: anonymous memory (the process's own) vs file pages mapped from the page cache
# (the memory-mapped stores; shared and reclaimable), which RSS counts alike
out["rss_anon_mb_end"], out["rss_file_mb_end"] = field("RssAnon"), field("RssFile")
out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def query(
    folder: Path, n: int, args: argparse.Namespace, zipf_p: np.ndarray, work: Path
) -> dict[str, Any]:
    import scipy.sparse as sp

    q_dense, q_lex = synthetic(
        args.queries, dim=args.dim, tokens=args.query_tokens, seed=999_999, zipf_p=zipf_p
    )
    np.save(work / "q.npy", q_dense, allow_pickle=False)
    (work / "lex.json").write_text(json.dumps([{str(k): v for k, v in d.items()} for d in q_lex]))
    warm_s = warm_page_cache(folder)
    spec = {
        "queries": str(work / "q.npy"),
        "lexical": str(work / "lex.json"),
        "dense_queries": args.dense_queries,
    }
    res = subprocess.run(  # noqa: S603 - our own script and interpreter
        [sys.executable, "-c", QUERY_SCRIPT, str(folder), json.dumps(spec), json.dumps(sys.path)],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = json.loads(res.stdout.strip().splitlines()[-1])

    # brute force: the same weights as a CSR matrix, regenerated with the same seeds
    rows, cols, vals = [], [], []
    for b in range(0, n, 10_000):
        m = min(10_000, n - b)
        _, lexical = synthetic(m, dim=args.dim, tokens=args.tokens, seed=b, zipf_p=zipf_p)
        for i, d in enumerate(lexical):
            rows.extend([b + i] * len(d))
            cols.extend(d.keys())
            vals.extend(d.values())
    matrix = sp.csr_matrix(
        (np.array(vals, np.float32), (np.array(rows), np.array(cols))), shape=(n, VOCAB)
    )
    brute_times, agree = [], 0
    for qi, w in enumerate(q_lex):
        t = time.perf_counter()
        qv = sp.csr_matrix(
            (
                np.fromiter(w.values(), np.float32),
                (np.zeros(len(w), int), np.fromiter(w.keys(), int)),
            ),
            shape=(1, VOCAB),
        )
        scores = (matrix @ qv.T).toarray().ravel()
        top = np.argsort(-scores, kind="stable")[:10]
        brute_times.append(time.perf_counter() - t)
        expected = [str(i) for i in top if scores[i] > 0]
        agree += int(expected == ours["lexical_top10"][qi][: len(expected)])
    return {
        "dense_exact": percentiles(ours["dense"]),
        "lexical": percentiles(ours["lexical"]),
        "lexical_first_query_s": ours.get("lexical_first_query_s"),
        "lexical_scipy_bruteforce": percentiles(brute_times),
        "lexical_top10_identical": f"{agree}/{len(q_lex)}",
        "lexical_top10_ids": ours["lexical_top10"],
        "warm_page_cache_s": warm_s,
        "peak_rss_mb_query_process": ours["peak_rss_mb"],
        "rss_anon_mb_end": ours.get("rss_anon_mb_end"),
        "rss_file_mb_end": ours.get("rss_file_mb_end"),
    }


def ann_part(n: int, args: argparse.Namespace, zipf_p: np.ndarray, work: Path) -> dict[str, Any]:
    folder = work / f"ann{n}"
    row = build(folder, n, args, zipf_p, ann=True)
    q_dense, _ = synthetic(
        args.queries, dim=args.dim, tokens=1, seed=999_999, zipf_p=zipf_p, dense_kind="clustered"
    )
    np.save(work / "qa.npy", q_dense, allow_pickle=False)
    (work / "lexa.json").write_text("[]")
    spec = {
        "queries": str(work / "qa.npy"),
        "lexical": str(work / "lexa.json"),
        "dense_queries": args.dense_queries,
        "ann": True,
    }
    res = subprocess.run(  # noqa: S603 - our own script and interpreter
        [sys.executable, "-c", QUERY_SCRIPT, str(folder), json.dumps(spec), json.dumps(sys.path)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    shutil.rmtree(folder)
    return {
        "passages": n,
        "ingest_with_hnsw_per_s": row["ingest_per_s"],
        "dense_exact": percentiles(out["dense"]),
        "dense_hnsw": percentiles(out["ann"]),
        "hnsw_recall@10": float(np.mean(out["ann_recall"])),
    }


def milvus_part(n: int, args: argparse.Namespace, zipf_p: np.ndarray, work: Path) -> dict[str, Any]:
    """milvus-lite's sparse inverted index (IP) on the same lexical weights and queries."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(work / "milvus.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    index = client.prepare_index_params()
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection("bench", schema=schema, index_params=index)
    elapsed = 0.0
    for b in range(0, n, 10_000):
        m = min(10_000, n - b)
        _, lexical = synthetic(m, dim=8, tokens=args.tokens, seed=b, zipf_p=zipf_p)
        rows = [{"id": b + i, "sparse": d} for i, d in enumerate(lexical)]
        t = time.perf_counter()
        client.insert("bench", rows)
        elapsed += time.perf_counter() - t
    t = time.perf_counter()
    client.load_collection("bench")
    elapsed += time.perf_counter() - t
    _, q_lex = synthetic(args.queries, dim=8, tokens=args.query_tokens, seed=999_999, zipf_p=zipf_p)
    times, tops = [], []
    for w in q_lex[: args.milvus_queries]:
        t = time.perf_counter()
        res = client.search(
            "bench", data=[w], anns_field="sparse", limit=10, search_params={"metric_type": "IP"}
        )
        times.append(time.perf_counter() - t)
        tops.append([str(hit["id"]) for hit in res[0]])
    client.close()
    return {
        "passages": n,
        "milvus_lite_ingest_per_s": n / elapsed,
        "milvus_lite_sparse": percentiles(times),
        "top10": tops,
    }


def colbert_part(n: int, dtype: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from m3rag import Collection, M3Output

    folder = work / f"colbert-{dtype}-{n}"
    col = Collection.create(folder, heads=("colbert",), colbert_dim=args.dim, colbert_dtype=dtype)
    batch = 500
    elapsed = 0.0
    for b in range(0, n, batch):
        mats = colbert_mats(min(batch, n - b), dim=args.dim, rows=args.colbert_rows, seed=b)
        out = M3Output.build(colbert_vecs=mats)
        t = time.perf_counter()
        col.add(
            [f"p{b + i}" for i in range(len(mats))],
            ids=[str(b + i) for i in range(len(mats))],
            embeddings=out,
        )
        col.commit()
        elapsed += time.perf_counter() - t
    q = colbert_mats(1, dim=args.dim, rows=32, seed=7)[0]
    # each candidate set is read once before it is timed, so both precisions are measured
    # with its rows in the page cache (compute, not disk; a cold read of 100 x 200 rows from
    # disk costs far more than either)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.queries + 1):
        keys = rng.choice(n, size=100, replace=False)
        col.colbert_scores(q, keys)
        for precision, spent in times.items():
            t = time.perf_counter()
            col.colbert_scores(q, keys, precision=precision)
            spent.append(time.perf_counter() - t)
    # the first set also sizes the buffers
    timed = {precision: percentiles(spent[1:]) for precision, spent in times.items()}
    col.close()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return {
        "passages": n,
        "dtype": dtype,
        "ingest_per_s": n / elapsed,
        "disk_mb": size / 1e6,
        "maxsim_100": timed["float32"],
        "maxsim_100_bfloat16": timed["bfloat16"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--dense-dtype", default="float16")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--query-tokens", type=int, default=20)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dense-queries", type=int, default=50)
    parser.add_argument("--colbert", default="10000:float16,10000:bfloat16,20000:int8")
    parser.add_argument("--colbert-rows", type=int, default=200)
    parser.add_argument("--ann", default="100000", help="sizes to also build with HNSW")
    parser.add_argument("--milvus", default="100000", help="sizes to compare with milvus-lite")
    parser.add_argument("--milvus-queries", type=int, default=10, help="milvus-lite is slow")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index.json")
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")  # keep the full run's file
    if args.quick:
        args.sizes, args.dim, args.queries, args.colbert = (
            "5000",
            64,
            10,
            "500:float16,500:bfloat16,500:int8",
        )
        args.ann = "5000"
        args.milvus = "5000"
    zipf_p = zipf_probabilities()

    results: dict[str, Any] = {
        "benchmark": "index",
        "cores": os.cpu_count(),
        "dim": args.dim,
        "dense_dtype": args.dense_dtype,
        "tokens_per_passage": args.tokens,
        "query_tokens": args.query_tokens,
        "sizes": [],
        "colbert": [],
        "ann": [],
        "milvus_lite": [],
    }
    work = Path(tempfile.mkdtemp(prefix="m3rag-bench-index-"))
    try:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            folder = work / f"c{n}"
            row = build(folder, n, args, zipf_p)
            row.update(query(folder, n, args, zipf_p, work))
            results["sizes"].append(row)
            print(json.dumps(row))
            shutil.rmtree(folder)
        for n in [int(s) for s in args.milvus.split(",") if s]:
            row = milvus_part(n, args, zipf_p, work)
            ours = next((r for r in results["sizes"] if r["passages"] == n), None)
            if ours is not None:
                same = sum(
                    a == b[: len(a)]
                    for a, b in zip(row["top10"], ours.get("lexical_top10_ids", []), strict=False)
                )
                row["top10_identical_to_m3rag"] = f"{same}/{len(row['top10'])}"
            row.pop("top10")
            results["milvus_lite"].append(row)
            print(json.dumps(row))
        for n in [int(s) for s in args.ann.split(",") if s]:
            row = ann_part(n, args, zipf_p, work)
            results["ann"].append(row)
            print(json.dumps(row))
        for part in args.colbert.split(","):
            if part:
                n, dtype = part.split(":")
                row = colbert_part(int(n), dtype, args, work)
                results["colbert"].append(row)
                print(json.dumps(row))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
