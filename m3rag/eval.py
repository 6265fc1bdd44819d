"""Retrieval evaluation on BEIR-format folders, with pytrec_eval's metrics.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a
header). Metrics come from ``pytrec_eval`` (trec_eval's own implementation), not hand-written
formulas: nDCG@k (``ndcg_cut``), Recall@k (``recall``) and MRR@k (``recip_rank`` on the run cut
at k). Install with ``pip install "m3rag[eval]"``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from m3rag._optional import require

__all__ = ["BeirDataset", "evaluate_run", "load_beir"]


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR dataset in memory.

    Attributes:
        name: The folder name.
        corpus: ``doc_id -> text`` (title and text joined by a space).
        titles: ``doc_id -> title``.
        queries: ``query_id -> text``, only queries that have judgements.
        qrels: ``query_id -> {doc_id: relevance}``.
    """

    name: str
    corpus: dict[str, str]
    titles: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(folder: str | Path, *, split: str = "test") -> BeirDataset:
    """Read a BEIR folder.

    Raises:
        FileNotFoundError: A required file is missing (the message names it).
        ValueError: A malformed line (the message names file and line).
    """
    root = Path(folder)
    needed = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]
    for path in needed:
        if not path.is_file():
            msg = (
                f"{path} is missing; a BEIR folder needs corpus.jsonl, queries.jsonl and "
                f"qrels/{split}.tsv"
            )
            raise FileNotFoundError(msg)
    corpus: dict[str, str] = {}
    titles: dict[str, str] = {}
    for n, row in enumerate(_jsonl(needed[0]), 1):
        try:
            doc_id, text = str(row["_id"]), str(row["text"])
        except KeyError as exc:
            msg = f"{needed[0]}:{n}: missing field {exc}"
            raise ValueError(msg) from exc
        title = str(row.get("title") or "")
        titles[doc_id] = title
        corpus[doc_id] = f"{title} {text}".strip() if title else text
    queries_all = {str(r["_id"]): str(r["text"]) for r in _jsonl(needed[1])}
    qrels: dict[str, dict[str, int]] = {}
    with needed[2].open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) != 3:
                msg = f"{needed[2]}:{n}: expected 3 tab-separated fields"
                raise ValueError(msg)
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {q: t for q, t in queries_all.items() if q in qrels}
    return BeirDataset(root.name, corpus, titles, queries, qrels)


def _jsonl(path: Path) -> list[dict[str, object]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    msg = f"{path}:{n}: not JSON ({exc})"
                    raise ValueError(msg) from exc
    return rows


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k_values: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """nDCG@k, Recall@k and MRR@k of a run, averaged over the judged queries.

    Args:
        run: ``query_id -> {doc_id: score}`` (higher is better).
        qrels: ``query_id -> {doc_id: relevance}``.
        k_values: Cut-offs.

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "mrr@10": ..., ...}``; a judged query missing
        from the run counts as 0.
    """
    pytrec_eval = require("pytrec_eval", extra="eval", purpose="m3rag.eval")
    judged = {q: dict(d) for q, d in qrels.items()}
    full_run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    # pytrec_eval skips queries with an empty run; give them a dummy non-relevant document
    for docs in full_run.values():
        if not docs:
            docs["__m3rag_empty__"] = 0.0
    ks = sorted({int(k) for k in k_values})
    measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}"}
    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(full_run)
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = statistics.mean(v[f"ndcg_cut_{k}"] for v in per_query.values())
        out[f"recall@{k}"] = statistics.mean(v[f"recall_{k}"] for v in per_query.values())
        cut = {
            q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:k])
            for q, docs in full_run.items()
        }
        mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(cut)
        out[f"mrr@{k}"] = statistics.mean(v["recip_rank"] for v in mrr.values())
    return out
