"""BM25 per language: m3rag's analysis (before and after #15) against bm25s's best setup.

For every BEIR folder given (default: SciFact and every ``xquad-*`` under ``../shared/data``),
in one process on the same corpus (title and text joined) and the same judged test queries:

* **m3rag**: ``Collection.create(folder, heads=(), lang="auto")`` -- each document's language
  detected (`m3rag.analysis.detect_language`), its family's pipeline (NFKC, case folding,
  Arabic normalisation, bigrams for no-space scripts, tantivy stop words and Snowball stemmer)
  -- then ``search_bm25``. tantivy BM25, k1 = 1.2, b = 0.75. The build (detection, analysis,
  ``add`` and ``commit``) is timed as documents per second.
* **m3rag legacy**: the analyzer every collection had before #15 (one token per Han/kana
  character, runs of letters elsewhere, English stop words and stemmer for every language), in
  a tantivy index of its own: the "before" figure.
* **bm25s** with its best per-language setup: ``bm25s.BM25()`` (method "lucene", k1 = 1.5,
  b = 0.75); tokens from ``bm25s.tokenize`` with the PyStemmer Snowball stemmer and bm25s's
  stop-word list of the language where they exist (en, ar, ru ...), jieba words for Chinese,
  and character bigrams for Thai (the setups of the reference figures in ``docs/evaluation.md``).

Per query (one at a time, the text in and the top 10 out, tokenising included) the latency is
the median of ``--passes`` passes; p50 is over the queries. nDCG@10 and Recall@100 come from an
untimed pass at k = 100 (pytrec_eval, ``m3rag.eval.evaluate_run``). Detection is also measured
on the queries alone: the share detected as the dataset's language and microseconds per query.

Run: ``.venv/bin/python benchmarks/bench_bm25_analyzer.py [--quick] [DATASET ...]``
(``--quick``: the xquad folders only, 200 queries, one pass).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import machine

HERE = Path(__file__).resolve().parent
# ../shared/data from the checkout (one level further up from a worktree under wt/)
DATA = next(
    (
        p
        for p in (HERE.parents[1] / "shared" / "data", HERE.parents[2] / "shared" / "data")
        if p.is_dir()
    ),
    HERE.parents[1] / "shared" / "data",
)
DATASETS = ("scifact", "xquad-en", "xquad-zh", "xquad-ar", "xquad-ru", "xquad-th")
LANG = {"scifact": "en", "xquad-en": "en", "xquad-zh": "zh", "xquad-ar": "ar", "xquad-ru": "ru"}
LANG["xquad-th"] = "th"
PYSTEMMER = {"en": "english", "ar": "arabic", "ru": "russian"}
BM25S_STOPWORDS = {"en": "en", "ru": "ru"}  # bm25s has no Arabic, Chinese or Thai list

Search = Callable[[str, int], list[tuple[str, float]]]


def load(folder: Path, n_queries: int | None) -> tuple[dict[str, str], dict[str, str], Any]:
    from m3rag.eval import load_beir

    data = load_beir(folder)
    queries = dict(list(data.queries.items())[:n_queries] if n_queries else data.queries.items())
    qrels = {q: data.qrels[q] for q in queries}
    return data.corpus, queries, qrels


def side_m3rag(corpus: dict[str, str], tmp: Path) -> tuple[Search, dict[str, Any]]:
    from m3rag.analysis import detect_language
    from m3rag.index import Collection

    ids, texts = list(corpus), list(corpus.values())
    detect_language("load the detector's model (once per process, about a second)")
    start = time.perf_counter()
    col = Collection.create(tmp / "m3rag", heads=(), lang="auto")
    col.add(texts, ids=ids)
    col.commit()
    seconds = time.perf_counter() - start
    analysis = col.analysis or {}

    def search(text: str, k: int) -> list[tuple[str, float]]:
        return list(col.search_bm25(text, k=k))

    info = {
        "setup": 'Collection.create(heads=(), lang="auto"), search_bm25',
        "families": analysis.get("families"),
        "build_s": seconds,
        "docs_per_s": len(texts) / seconds,
    }
    return search, info


def side_legacy(corpus: dict[str, str], tmp: Path) -> tuple[Search, dict[str, Any]]:
    import tantivy

    from m3rag.index.lexical import build_analyzer

    analyzer = build_analyzer()
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("text", tokenizer_name="legacy", index_option="freq")
    schema = builder.build()
    (tmp / "legacy").mkdir()
    index = tantivy.Index(schema, path=str(tmp / "legacy"))
    index.register_tokenizer("legacy", analyzer)
    start = time.perf_counter()
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    for doc_id, text in corpus.items():
        writer.add_document(tantivy.Document(id=doc_id, text=text))
    writer.commit()
    writer.wait_merging_threads()
    seconds = time.perf_counter() - start
    index.reload()
    searcher = index.searcher()

    def search(text: str, k: int) -> list[tuple[str, float]]:
        terms = list(dict.fromkeys(analyzer.analyze(text)))
        if not terms:
            return []
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "text", t)) for t in terms]
        )
        hits = searcher.search(query, limit=k, count=False).hits
        return [(searcher.doc(a)["id"][0], float(s)) for s, a in hits]

    info = {"setup": "the pre-#15 analyzer in tantivy", "build_s": seconds}
    return search, info


def _bigrams(text: str) -> list[str]:
    chars = [c for c in text.lower() if not c.isspace()]
    return [chars[i] + chars[i + 1] for i in range(len(chars) - 1)]


def side_bm25s(corpus: dict[str, str], lang: str) -> tuple[Search, dict[str, Any]]:
    import bm25s

    ids = list(corpus)
    tokenize: Callable[[list[str]], list[list[str]]]
    if lang == "zh":
        import jieba

        jieba.setLogLevel(60)

        def tokenize(texts: list[str]) -> list[list[str]]:
            return [[w for w in jieba.lcut_for_search(t.lower()) if w.strip()] for t in texts]

        setup = "jieba.lcut_for_search words"
    elif lang == "th":

        def tokenize(texts: list[str]) -> list[list[str]]:
            return [_bigrams(t) for t in texts]

        setup = "character bigrams"
    else:
        import Stemmer

        stemmer = Stemmer.Stemmer(PYSTEMMER[lang])
        stopwords = BM25S_STOPWORDS.get(lang)

        def tokenize(texts: list[str]) -> list[list[str]]:
            out = bm25s.tokenize(
                texts, stopwords=stopwords, stemmer=stemmer, return_ids=False, show_progress=False
            )
            return [list(t) for t in out]

        setup = f"bm25s.tokenize, stop words {stopwords}, PyStemmer {PYSTEMMER[lang]}"
    start = time.perf_counter()
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index(tokenize(list(corpus.values())), show_progress=False)
    seconds = time.perf_counter() - start

    def search(text: str, k: int) -> list[tuple[str, float]]:
        tokens = tokenize([text])
        vocab = retriever.vocab_dict
        known = [t for t in tokens[0] if t in vocab]
        if not known:
            return []
        docs, scores = retriever.retrieve(
            [known], k=min(k, len(ids)), show_progress=False, n_threads=1
        )
        return [(ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True)]

    info = {
        "setup": setup,
        "version": bm25s.__version__,
        "k1": 1.5,
        "b": 0.75,
        "build_s": seconds,
        "docs_per_s": len(ids) / seconds,
    }
    return search, info


def measure(search: Search, queries: dict[str, str], qrels: Any, passes: int) -> dict[str, Any]:
    from m3rag.eval import evaluate_run

    run = {qid: {d: s for d, s in search(text, 100) if s > 0} for qid, text in queries.items()}
    metrics = evaluate_run(run, qrels, k_values=(10, 100))
    latencies = []
    for text in queries.values():
        times = []
        for _ in range(passes):
            start = time.perf_counter()
            search(text, 10)
            times.append(time.perf_counter() - start)
        latencies.append(statistics.median(times))
    return {
        "ndcg@10": metrics["ndcg@10"],
        "recall@100": metrics["recall@100"],
        "query_p50_ms": statistics.median(latencies) * 1000,
    }


def detection(queries: dict[str, str], lang: str) -> dict[str, Any]:
    from m3rag.analysis import detect_language, detector_name

    texts = list(queries.values())
    detect_language(texts[0])  # loads the model
    start = time.perf_counter()
    found = [detect_language(t) for t in texts]
    seconds = time.perf_counter() - start
    return {
        "detector": detector_name(),
        "accuracy": sum(f == lang for f in found) / len(found),
        "us_per_query": seconds / len(texts) * 1e6,
    }


def run_dataset(folder: Path, *, n_queries: int | None, passes: int) -> list[dict[str, Any]]:
    lang = LANG.get(folder.name, "en")
    corpus, queries, qrels = load(folder, n_queries)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for system, build in (
            ("m3rag", lambda: side_m3rag(corpus, Path(tmp))),
            ("m3rag legacy", lambda: side_legacy(corpus, Path(tmp))),
            ("bm25s", lambda: side_bm25s(corpus, lang)),
        ):
            search, info = build()
            row = {
                "dataset": folder.name,
                "lang": lang,
                "system": system,
                "docs": len(corpus),
                "queries": len(queries),
                **info,
                **measure(search, queries, qrels, passes),
            }
            if system == "m3rag":
                row["detection"] = detection(queries, lang)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bm25_analyzer.json")
    args = parser.parse_args()
    names = [d for d in DATASETS if not (args.quick and d == "scifact")]
    folders = args.datasets or [DATA / d for d in names if (DATA / d).is_dir()]
    if not folders:
        print(f"no datasets found under {DATA}; pass BEIR folders as arguments")
        return
    load_start = list(os.getloadavg())  # the machine may be shared: say how busy
    rows = []
    for folder in folders:
        rows += run_dataset(
            folder, n_queries=200 if args.quick else None, passes=1 if args.quick else args.passes
        )
    result = {
        "benchmark": "bm25_analyzer",
        "machine": machine(),
        "quick": args.quick,
        "load_average_start": load_start,
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("| dataset | system | nDCG@10 | Recall@100 | query p50 ms | build docs/s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        rate = f"{r['docs_per_s']:.0f}" if "docs_per_s" in r else ""
        print(
            f"| {r['dataset']} | {r['system']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
            f"{r['query_p50_ms']:.3f} | {rate} |"
        )


if __name__ == "__main__":
    main()
