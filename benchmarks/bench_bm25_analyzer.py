"""BM25 quality of the collection's multilingual analyzer vs a whitespace baseline.

Indexes a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) twice in
tantivy -- once with m3rag's analyzer (Han/kana split per character, words elsewhere, lowercase,
English stop words and stemmer), once with a whitespace + lowercase baseline (what a naive
setup does, and what makes a whole Chinese sentence one token) -- and reports nDCG@10 and
Recall@100 (pytrec_eval) and query latency for both.

Run: ``.venv/bin/python benchmarks/bench_bm25_analyzer.py ../shared/data/scifact
../shared/data/xquad-zh``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load_beir(folder: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    corpus = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            corpus[str(row["_id"])] = f"{row.get('title') or ''} {row['text']}".strip()
    queries = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    queries = {q: t for q, t in queries.items() if q in qrels}
    return corpus, queries, qrels


def run(folder: Path, analyzer_name: str) -> dict[str, Any]:
    import pytrec_eval
    import tantivy

    from m3rag.index.lexical import build_analyzer

    corpus, queries, qrels = load_beir(folder)
    if analyzer_name == "m3rag":
        analyzer = build_analyzer()
    else:
        analyzer = (
            tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace())
            .filter(tantivy.Filter.lowercase())
            .build()
        )
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("text", tokenizer_name="bench", index_option="freq")
    schema = builder.build()
    with tempfile.TemporaryDirectory() as tmp:
        index = tantivy.Index(schema, path=tmp)
        index.register_tokenizer("bench", analyzer)
        writer = index.writer(heap_size=128_000_000, num_threads=1)
        for doc_id, text in corpus.items():
            writer.add_document(tantivy.Document(id=doc_id, text=text))
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        searcher = index.searcher()
        run_: dict[str, dict[str, float]] = {}
        times = []
        for qid, text in queries.items():
            start = time.perf_counter()
            terms = list(dict.fromkeys(analyzer.analyze(text)))
            query = tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "text", t)) for t in terms]
            )
            hits = searcher.search(query, limit=100, count=False).hits
            run_[qid] = {searcher.doc(a)["id"][0]: float(s) for s, a in hits}
            times.append(time.perf_counter() - start)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate(run_)
    ndcg = statistics.mean(v["ndcg_cut_10"] for v in per_query.values())
    recall = statistics.mean(v["recall_100"] for v in per_query.values())
    return {
        "dataset": folder.name,
        "analyzer": analyzer_name,
        "docs": len(corpus),
        "queries": len(queries),
        "ndcg@10": ndcg,
        "recall@100": recall,
        "query_ms_p50": statistics.median(times) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bm25_analyzer.json")
    args = parser.parse_args()
    rows = []
    for folder in args.datasets:
        for name in ("m3rag", "whitespace"):
            row = run(folder, name)
            rows.append(row)
            print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print("| dataset | analyzer | nDCG@10 | Recall@100 | query p50 ms |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['analyzer']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
            f"{r['query_ms_p50']:.2f} |"
        )


if __name__ == "__main__":
    main()
