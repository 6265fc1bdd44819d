"""HybridRetriever over Collection vs over MilvusStore on a local milvus-lite server, same vectors.

Synthetic BGE-M3-like data (labelled as such in the results): clustered dense vectors, Zipf
lexical weights (``_common.zipf_lexical``), random unit ColBERT vectors, and texts spelled from
a Zipf vocabulary for BM25. The same precomputed query embeddings go to both retrievers (no
model runs). Measured:

* top-10 agreement of the fused hits, with the fusion over dense + lexical + ColBERT (every
  path m3rag scores exactly on both stores: the target is 100%) and with the default fusion
  (BM25 included: the two engines' BM25 differ, see docs/milvus.md);
* latency of each stage (recall per path, exact scoring per path, documents), p50 over queries;
* MilvusStore's exact path vs Milvus's own ``hybrid_search`` (one round trip, server scores).

The local engine (milvus-lite on this machine, gRPC over loopback) says nothing about a Milvus
cluster's performance; the figures show where the time goes, not how fast a deployment is.

Run: ``.venv/bin/python benchmarks/bench_milvus.py [--n 10000] [--queries 50]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, percentiles, zipf_lexical, zipf_probabilities

HERE = Path(__file__).resolve().parent


class Timed:
    """A store proxy that records the time of each method call."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.times: dict[str, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if not callable(value) or name.startswith("_"):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.times[name].append(time.perf_counter() - start)

        return timed


def corpus(n: int, *, dim: int, colbert_dim: int, tokens: int, seed: int) -> Any:
    from m3rag import M3Output

    rng = np.random.default_rng(seed)
    p = zipf_probabilities()
    centroids = np.random.default_rng(12345).standard_normal((200, dim), dtype=np.float32)
    dense = centroids[rng.integers(0, 200, size=n)] + 0.6 * rng.standard_normal(
        (n, dim), dtype=np.float32
    )
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    lexical = zipf_lexical(n, tokens=30, rng=rng, p=p)
    colbert = []
    for _ in range(n):
        m = rng.standard_normal((tokens, colbert_dim), dtype=np.float32)
        colbert.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    vocab = np.array([f"w{i}" for i in range(5000)])
    wp = 1.0 / np.arange(1, 5001)
    wp /= wp.sum()
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(20, 60)), p=wp)) for _ in range(n)]
    return texts, M3Output.build(dense_vecs=dense, lexical_weights=lexical, colbert_vecs=colbert)


def start_server(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = str(Path(sys.executable).parent / "milvus-lite")
    proc = subprocess.Popen(  # noqa: S603 - the venv's own milvus-lite
        [binary, "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from pymilvus import MilvusClient

    uri = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            # its own channel, closed at once: a shared idle one would draw milvus-lite's
            # GOAWAY ("too_many_pings") onto later clients
            probe = MilvusClient(uri=uri, timeout=2, dedicated=True)
            probe.list_collections()
            probe.close()
            return proc, uri
        except Exception:
            time.sleep(0.2)
    proc.kill()
    msg = "milvus-lite server did not start"
    raise RuntimeError(msg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--colbert-dim", type=int, default=64)
    parser.add_argument("--colbert-tokens", type=int, default=16)
    parser.add_argument("--recall-k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "milvus.json")
    args = parser.parse_args()

    from m3rag import Collection, FusionConfig, HybridRetriever, M3Output
    from m3rag.index.milvus import MilvusStore

    texts, emb = corpus(
        args.n, dim=args.dim, colbert_dim=args.colbert_dim, tokens=args.colbert_tokens, seed=1
    )
    ids = [f"p{i}" for i in range(args.n)]
    qtexts, qemb = corpus(
        args.queries, dim=args.dim, colbert_dim=args.colbert_dim, tokens=8, seed=2
    )
    qtexts = [" ".join(t.split()[:6]) for t in qtexts]
    # queries near documents: a noisy copy of a document's dense vector and weights
    rng = np.random.default_rng(3)
    pick = rng.integers(0, args.n, size=args.queries)
    qdense = emb.dense_vecs[pick] + 0.3 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    )
    qdense /= np.linalg.norm(qdense, axis=1, keepdims=True)
    qlex = [dict(list(emb.lexical_weights[i].items())[:20]) for i in pick]
    qemb = M3Output.build(dense_vecs=qdense, lexical_weights=qlex, colbert_vecs=qemb.colbert_vecs)

    tmp = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    proc, uri = start_server(tmp / "milvus")
    result: dict[str, Any] = {
        "benchmark": "milvus",
        "command": " ".join(sys.argv),
        "data": "synthetic (clustered dense, Zipf lexical weights, random unit ColBERT, Zipf texts)",
        "engine": "milvus-lite server on loopback (not a cluster's performance)",
        "machine": machine(),
        "n": args.n,
        "queries": args.queries,
        "dim": args.dim,
        "colbert_dim": args.colbert_dim,
        "colbert_tokens": args.colbert_tokens,
        "recall_k": args.recall_k,
        # the machine is shared: the 1/5/15-minute load averages say how busy it was
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        start = time.perf_counter()
        col = Collection.create(
            tmp / "col",
            dim=args.dim,
            colbert_dim=args.colbert_dim,
            colbert_dtype="float32",
            lang="en",
        )
        for s in range(0, args.n, 2000):
            col.add(texts[s : s + 2000], ids=ids[s : s + 2000], embeddings=emb[s : s + 2000])
        col.commit()
        result["collection_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        store = MilvusStore(uri, "bench", dim=args.dim, colbert_dim=args.colbert_dim, create=True)
        for s in range(0, args.n, 2000):
            store.add(texts[s : s + 2000], ids=ids[s : s + 2000], embeddings=emb[s : s + 2000])
        store.commit()
        result["milvus_build_s"] = time.perf_counter() - start

        from m3rag.testing import FakeEncoder

        enc = FakeEncoder(
            dim=args.dim, colbert_dim=args.colbert_dim
        )  # never runs: embeddings given
        exact = FusionConfig(
            weights={"dense": 1.0, "lexical": 1.0, "colbert": 1.0}, normalization="zscore"
        )
        for label, fusion, recall in (
            ("exact_paths", exact, ["dense", "lexical"]),
            ("default_fusion", None, None),
        ):
            tc, tm = Timed(col), Timed(store)
            rc = HybridRetriever(
                tc, encoder=enc, fusion=fusion, recall=recall, recall_k=args.recall_k
            )
            rm = HybridRetriever(
                tm, encoder=enc, fusion=fusion, recall=recall, recall_k=args.recall_k
            )
            agree, totals_c, totals_m = [], [], []
            for i, q in enumerate(qtexts):
                t0 = time.perf_counter()
                a = rc.retrieve(q, k=10, query_embeddings=qemb[i])
                t1 = time.perf_counter()
                b = rm.retrieve(q, k=10, query_embeddings=qemb[i])
                t2 = time.perf_counter()
                totals_c.append(t1 - t0)
                totals_m.append(t2 - t1)
                agree.append(len(set(a.ids) & set(b.ids)) / 10)
            result[label] = {
                "top10_agreement": float(np.mean(agree)),
                "collection_total": percentiles(totals_c),
                "milvus_total": percentiles(totals_m),
                "collection_stages": {k: percentiles(v)["p50_ms"] for k, v in tc.times.items()},
                "milvus_stages": {k: percentiles(v)["p50_ms"] for k, v in tm.times.items()},
            }
        fast = []
        agree_fast = []
        rc = HybridRetriever(
            col, encoder=enc, fusion=exact, recall=["dense", "lexical"], recall_k=args.recall_k
        )
        for i, q in enumerate(qtexts):
            t0 = time.perf_counter()
            hits = store.hybrid_search(q, qemb[i], k=10, ranker="rrf", recall_k=args.recall_k)
            fast.append(time.perf_counter() - t0)
            agree_fast.append(
                len(set(hits.ids) & set(rc.retrieve(q, k=10, query_embeddings=qemb[i]).ids)) / 10
            )
        result["hybrid_search_rrf"] = {
            "total": percentiles(fast),
            "top10_agreement_with_exact_fusion": float(np.mean(agree_fast)),
        }
        result["exact_rescoring_cost_p50_ms"] = (
            result["default_fusion"]["milvus_total"]["p50_ms"]
            - result["hybrid_search_rrf"]["total"]["p50_ms"]
        )
        store.drop()
        col.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
