"""BM25 on SciFact text: m3rag's BM25 path vs bm25s and rank-bm25, same corpus, same queries.

All three sides run in one process on the same BEIR corpus (title and text joined, as
``m3rag.eval.load_beir`` does) and the same judged test queries:

* **m3rag**: a BM25-only ``Collection.create(folder, heads=())`` (tantivy, multilingual analyzer
  with English stop words and stemmer, k1=1.2, b=0.75); queries through
  ``Collection.search_bm25(query, k=10)``.
* **bm25s**: its ``Tokenizer`` (lower-case, ``\\w\\w+`` words, English stop words, the PyStemmer
  English stemmer when PyStemmer is installed -- the JSON says which) and ``BM25`` with its
  defaults (method "lucene", k1=1.5, b=0.75, numpy backend, one thread); per query the
  tokenizer (vocabulary frozen) and ``retrieve(k=10)``, one query at a time and also all queries
  in one batched ``retrieve`` call (reported per query).
* **rank-bm25**: ``BM25Okapi`` over ``text.lower().split()`` tokens (k1=1.5, b=0.75); per query
  ``get_scores`` and an ``argsort`` for the top 10. LangChain's ``BM25Retriever`` uses the same
  class with ``str.split`` and *no* lower-casing by default; that exact setup is a second row.

Timed: index build (tokenising the corpus and building the index; for m3rag ``add`` + ``commit``
into a fresh folder) and per-query latency (the text in, the top-10 ids out, tokenising the query
included). Each query is timed ``--passes`` times, one query at a time; a query's latency is the
median of its passes and p50/p95 are taken over the queries. An untimed warm-up pass at k=100
gives the quality figures: nDCG@10 and Recall@100 from pytrec_eval (``m3rag.eval.evaluate_run``;
documents with a zero score are dropped from every side's run). ``rss_delta_mb`` is the resident
memory the process holds after the build minus before it (not a peak; the first side also pays
for lazy imports). Excluded: reading the corpus files, starting the interpreter.

Run: ``.venv/bin/python benchmarks/bench_bm25.py [--quick] [--data ../shared/data/scifact]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, median_time, percentiles, write_results

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "scifact"

Search = Callable[[str, int], list[tuple[str, float]]]
"""A side's query function: ``(text, k) -> [(doc_id, score), ...]`` best first."""


@dataclass(frozen=True)
class Side:
    """A built index: its one-query search, its batched search if it has one, what it is."""

    search: Search
    info: dict[str, Any]
    batch: Callable[[Sequence[str], int], Any] | None = None


def rss_mb() -> float | None:
    """Resident set size of this process in MB (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def subset(
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    docs: int,
    n_queries: int,
) -> tuple[dict[str, str], dict[str, str]]:
    """The first ``n_queries`` judged queries and ``docs`` documents that include their judged ones.

    The relevant documents are kept so that the quality figures of a ``--quick`` run mean
    something; the rest are the corpus's first documents in file order.
    """
    qids = list(queries)[:n_queries]
    keep = [d for q in qids for d in qrels[q] if d in corpus]
    keep = list(dict.fromkeys(keep))
    for d in corpus:
        if len(keep) >= docs:
            break
        if d not in keep:
            keep.append(d)
    wanted = set(keep)
    return {d: t for d, t in corpus.items() if d in wanted}, {q: queries[q] for q in qids}


# -- the sides: each builds its index and returns a search function --------------------------


def build_m3rag(ids: list[str], texts: list[str], work: Path) -> Side:
    from m3rag import Collection

    folder = work / "m3rag-bm25"
    col = Collection.create(folder, heads=())
    col.add(texts, ids=ids)
    col.commit()

    def search(text: str, k: int) -> list[tuple[str, float]]:
        return list(col.search_bm25(text, k=k))

    return Side(search, {"setup": "Collection.create(heads=()), search_bm25", "k1": 1.2, "b": 0.75})


def build_bm25s(ids: list[str], texts: list[str], _: Path) -> Side:
    from importlib.metadata import version

    import bm25s
    from bm25s.tokenization import Tokenizer

    try:
        import Stemmer

        stemmer: Any = Stemmer.Stemmer("english")
        stemmer_name = f"PyStemmer {version('PyStemmer')} english"
    except ImportError:
        stemmer, stemmer_name = None, "none (PyStemmer not installed)"
    tokenizer = Tokenizer(stopwords="en", stemmer=stemmer)
    corpus_ids = tokenizer.tokenize(texts, return_as="ids", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_ids, show_progress=False)

    def search(text: str, k: int) -> list[tuple[str, float]]:
        q = tokenizer.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)
        docs, scores = retriever.retrieve(q, k=k, show_progress=False)
        return [(ids[d], s) for d, s in zip(docs[0].tolist(), scores[0].tolist(), strict=True)]

    def batch(queries: Sequence[str], k: int) -> Any:
        q = tokenizer.tokenize(
            list(queries), update_vocab=False, return_as="ids", show_progress=False
        )
        return retriever.retrieve(q, k=k, show_progress=False)

    info = {
        "setup": "bm25s.tokenization.Tokenizer + bm25s.BM25().index/retrieve",
        "version": bm25s.__version__,
        "stopwords": "en",
        "stemmer": stemmer_name,
        "method": retriever.method,
        "k1": retriever.k1,
        "b": retriever.b,
        "backend": retriever.backend,
        "n_threads": 0,
    }
    return Side(search, info, batch)


def rank_bm25_builder(*, lower: bool) -> Callable[[list[str], list[str], Path], Side]:
    def build(ids: list[str], texts: list[str], _: Path) -> Side:
        from rank_bm25 import BM25Okapi

        def tokens(text: str) -> list[str]:
            return (text.lower() if lower else text).split()

        bm25 = BM25Okapi([tokens(t) for t in texts])

        def search(text: str, k: int) -> list[tuple[str, float]]:
            scores = bm25.get_scores(tokens(text))
            top = np.argsort(-scores, kind="stable")[:k]
            return [(ids[i], float(scores[i])) for i in top.tolist()]

        info = {
            "setup": "rank_bm25.BM25Okapi, get_scores + argsort",
            "tokenizer": "str.lower().split()" if lower else "str.split() (LangChain's default)",
            "k1": bm25.k1,
            "b": bm25.b,
        }
        return Side(search, info)

    return build


SIDES: dict[str, Callable[[list[str], list[str], Path], Side]] = {
    "m3rag": build_m3rag,
    "bm25s": build_bm25s,
    "rank_bm25": rank_bm25_builder(lower=True),
    "rank_bm25_langchain_default": rank_bm25_builder(lower=False),
}


def measure(
    name: str,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    passes: int,
    repeats: int,
    work: Path,
) -> dict[str, Any]:
    ids, texts = list(corpus), list(corpus.values())
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    side = SIDES[name](ids, texts, work)
    build_s = time.perf_counter() - start
    gc.collect()
    after = rss_mb()
    search, batch = side.search, side.batch

    depth = min(100, len(ids))
    run = {  # the untimed warm-up pass, at k=100 for Recall@100
        qid: {d: s for d, s in search(text, depth) if s > 0} for qid, text in queries.items()
    }
    quality = evaluate(run, qrels, queries)

    texts_q = list(queries.values())
    per_pass = np.empty((passes, len(texts_q)))
    for p in range(passes):
        for i, text in enumerate(texts_q):
            t = time.perf_counter()
            search(text, 10)
            per_pass[p, i] = time.perf_counter() - t
    per_query = np.median(per_pass, axis=0).tolist()
    row: dict[str, Any] = {
        "system": name,
        **side.info,
        "build_s": build_s,
        "rss_delta_mb": None if before is None or after is None else after - before,
        "query": percentiles(per_query),
        "query_mean_ms": statistics.mean(per_query) * 1000,
        **quality,
    }
    if batch is not None:
        seconds, _ = median_time(lambda: batch(texts_q, 10), repeats)
        row["batched_ms_per_query"] = seconds * 1000 / len(texts_q)
    return row


def evaluate(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
) -> dict[str, float]:
    from m3rag.eval import evaluate_run

    metrics = evaluate_run(run, {q: qrels[q] for q in queries}, k_values=(10, 100))
    return {"ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"]}


def targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The goals, checked against this run's own measurements."""
    ours, bm25s, rank = rows["m3rag"], rows["bm25s"], rows["rank_bm25"]
    return [
        {
            "target": "m3rag p50 <= bm25s p50 (one query at a time) at nDCG@10 >= bm25s's",
            "reference": "bm25s quoted at about 0.13 ms/query, nDCG@10 0.686 on SciFact",
            "m3rag_p50_ms": ours["query"]["p50_ms"],
            "bm25s_p50_ms": bm25s["query"]["p50_ms"],
            "m3rag_ndcg@10": ours["ndcg@10"],
            "bm25s_ndcg@10": bm25s["ndcg@10"],
            "met": ours["query"]["p50_ms"] <= bm25s["query"]["p50_ms"]
            and ours["ndcg@10"] >= bm25s["ndcg@10"],
        },
        {
            "target": "m3rag p50 at least 20x faster than rank-bm25's",
            "reference": "rank-bm25 quoted at about 17 ms/query, nDCG@10 0.56 on SciFact",
            "speedup": rank["query"]["p50_ms"] / ours["query"]["p50_ms"],
            "met": rank["query"]["p50_ms"] / ours["query"]["p50_ms"] >= 20,
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="500 documents, 50 queries")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a BEIR folder")
    parser.add_argument("--docs", type=int, default=0, help="a subset of documents (0: all)")
    parser.add_argument("--queries", type=int, default=0, help="a subset of queries (0: all)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the queries")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the batched call")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bm25.json")
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")  # keep the full run's file
    if args.quick:
        args.docs, args.queries = args.docs or 500, args.queries or 50

    from m3rag.eval import load_beir

    dataset = load_beir(args.data)
    corpus, queries = dataset.corpus, dataset.queries
    if args.docs or args.queries:
        corpus, queries = subset(
            corpus,
            queries,
            dataset.qrels,
            docs=args.docs or len(corpus),
            n_queries=args.queries or len(queries),
        )
    load_start = list(os.getloadavg())  # the machine may be shared: say how busy
    work = Path(tempfile.mkdtemp(prefix="m3rag-bench-bm25-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        for name in SIDES:
            rows[name] = measure(
                name,
                corpus,
                queries,
                dataset.qrels,
                passes=args.passes,
                repeats=args.repeats,
                work=work,
            )
            print(json.dumps(rows[name]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours = rows["m3rag"]
    ratios = {
        f"speedup_vs_{name}": row["query"]["p50_ms"] / ours["query"]["p50_ms"]
        for name, row in rows.items()
        if name != "m3rag"
    }
    ratios["speedup_vs_bm25s_batched"] = (
        rows["bm25s"]["batched_ms_per_query"] / ours["query"]["p50_ms"]
    )
    ratios.update(
        {
            f"build_speedup_vs_{name}": row["build_s"] / ours["build_s"]
            for name, row in rows.items()
            if name != "m3rag"
        }
    )
    results = {
        "benchmark": "bm25",
        "machine": machine(),
        "dataset": dataset.name,
        "documents": len(corpus),
        "queries": len(queries),
        "passes": args.passes,
        "quick": args.quick,
        "rows": list(rows.values()),
        "load_average_start": load_start,
        "load_average": list(os.getloadavg()),
        "ratios": ratios,
        "targets": targets(rows),
    }
    write_results(args.out, results)
    print(
        f"{dataset.name}: {len(corpus)} documents, {len(queries)} queries, "
        f"median of {args.passes} passes per query"
    )
    print("| system | build s | p50 ms | p95 ms | nDCG@10 | Recall@100 | m3rag speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ratio = ratios.get(f"speedup_vs_{name}", 1.0)
        print(
            f"| {name} | {r['build_s']:.2f} | {r['query']['p50_ms']:.3f} | "
            f"{r['query']['p95_ms']:.3f} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
            f"{ratio:.1f}x |"
        )
    print(
        f"| bm25s batched | | {rows['bm25s']['batched_ms_per_query']:.3f} per query | | | | "
        f"{ratios['speedup_vs_bm25s_batched']:.1f}x |"
    )
    for t in results["targets"]:
        print(f"target: {t['target']}: {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
