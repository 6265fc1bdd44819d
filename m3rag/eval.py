"""Retrieval evaluation on BEIR-format folders, with pytrec_eval's metrics.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a
header). Metrics come from ``pytrec_eval`` (trec_eval's own implementation), not hand-written
formulas: nDCG@k (``ndcg_cut``), Recall@k (``recall``) and MRR@k (``recip_rank`` on the run cut
at k). Install with ``pip install "m3rag[eval]"``.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3rag._optional import require

if TYPE_CHECKING:
    from m3rag.encoder import Encoder
    from m3rag.fusion import FusionConfig, Normalization
    from m3rag.index import Store, WritableStore
    from m3rag.rerank import Reranker
    from m3rag.retriever import HybridRetriever
    from m3rag.types import M3Output

Progress = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``: stages are ``"indexing"``, ``"encoding queries"`` and
``"searching (<mode>)"``."""

__all__ = [
    "MODES",
    "BeirDataset",
    "EvalReport",
    "Threshold",
    "evaluate",
    "check_modes",
    "encode_queries",
    "evaluate_run",
    "index_corpus",
    "load_beir",
    "threshold_for_precision",
    "tune_weights",
    "versions",
]


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR dataset in memory.

    Attributes:
        name: The folder name.
        corpus: ``doc_id -> text`` (title and text joined by a space).
        titles: ``doc_id -> title``.
        queries: ``query_id -> text``, only queries that have judgements.
        qrels: ``query_id -> {doc_id: relevance}``.
        empty: ``"corpus.jsonl:<line>: <doc_id>"`` of the documents left out of ``corpus``
            because they have neither title nor text.
    """

    name: str
    corpus: dict[str, str]
    titles: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    empty: tuple[str, ...] = ()


def load_beir(folder: str | Path, *, split: str = "test") -> BeirDataset:
    """Read a BEIR folder.

    A document's text is its title and text joined by a space (a ``null`` title or text counts
    as empty); a document with neither is left out of the corpus and listed in
    ``BeirDataset.empty``. Relevance scores in the qrels are integers.

    Raises:
        FileNotFoundError: A required file is missing (the message names it).
        ValueError: A malformed line (the message names file and line): not a JSON object, a
            missing or mistyped field, a lone surrogate, a judged query without text, a
            relevance that is not an integer; or no query of ``queries.jsonl`` is judged.
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
    empty: list[str] = []
    for n, row in _jsonl(needed[0]):
        doc_id = _field(row, "_id", needed[0], n)
        text = _text(row, "text", needed[0], n)
        title = _text(row, "title", needed[0], n, required=False)
        if not title.strip() and not text.strip():
            empty.append(f"{needed[0].name}:{n}: {doc_id}")
            continue
        titles[doc_id] = title
        corpus[doc_id] = f"{title} {text}".strip() if title else text
    queries_all = {
        _field(row, "_id", needed[1], n): (_text(row, "text", needed[1], n), n)
        for n, row in _jsonl(needed[1])
    }
    qrels: dict[str, dict[str, int]] = {}
    with needed[2].open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) != 3:
                msg = f"{needed[2]}:{n}: expected 3 tab-separated fields"
                raise ValueError(msg)
            try:
                relevance = int(parts[2])
            except ValueError as exc:
                msg = f"{needed[2]}:{n}: the score must be an integer relevance, got {parts[2]!r}"
                raise ValueError(msg) from exc
            qrels.setdefault(parts[0], {})[parts[1]] = relevance
    queries = {q: t for q, (t, _) in queries_all.items() if q in qrels}
    for q, (text, n) in queries_all.items():
        if q in queries and not text.strip():
            msg = f"{needed[1]}:{n}: the judged query {q!r} has no text"
            raise ValueError(msg)
    if not queries:
        msg = (
            f"no query of {needed[1]} is judged in {needed[2]}"
            if qrels
            else f"{needed[2]} holds no judgements"
        )
        raise ValueError(msg)
    return BeirDataset(root.name, corpus, titles, queries, qrels, tuple(empty))


def _jsonl(path: Path) -> list[tuple[int, dict[str, object]]]:
    """The JSON objects of a jsonl file, with their line numbers."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    msg = f"{path}:{n}: not JSON ({exc})"
                    raise ValueError(msg) from exc
                if not isinstance(row, dict):
                    msg = f"{path}:{n}: expected a JSON object, got {type(row).__name__}"
                    raise ValueError(msg)
                rows.append((n, row))
    return rows


def _field(row: Mapping[str, object], key: str, path: Path, line: int) -> str:
    """An id field: present, a string or an integer."""
    if key not in row:
        msg = f'{path}:{line}: missing field "{key}"'
        raise ValueError(msg)
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        msg = f'{path}:{line}: "{key}" must be a string or an integer, got {value!r}'
        raise ValueError(msg)
    return _utf8(str(value), key, path, line)


def _text(
    row: Mapping[str, object], key: str, path: Path, line: int, *, required: bool = True
) -> str:
    """A text field: a string, or ``null`` (empty); ``required`` fields must be present."""
    if required and key not in row:
        msg = f'{path}:{line}: missing field "{key}"'
        raise ValueError(msg)
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        msg = f'{path}:{line}: "{key}" must be a string or null, got {type(value).__name__}'
        raise ValueError(msg)
    return _utf8(value, key, path, line)


def _utf8(value: str, key: str, path: Path, line: int) -> str:
    """``value``, checked to be text (JSON escapes can make lone surrogates, which are not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        msg = f'{path}:{line}: "{key}" holds a lone surrogate ({bad!r}), which is not text'
        raise ValueError(msg) from exc
    return value


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k_values: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """nDCG@k, Recall@k and MRR@k of a run, averaged over the judged queries.

    A run is a ranking: each query's documents are ranked by score, best first, and documents
    with equal scores keep their order in the mapping (the retriever's ranking, as `evaluate`
    builds it from its hits). Every metric scores that one ranking: pytrec_eval is given the
    ranks, not the scores, since trec_eval would otherwise break ties by document id.

    Args:
        run: ``query_id -> {doc_id: score}`` (higher is better; ties in mapping order).
        qrels: ``query_id -> {doc_id: relevance}``.
        k_values: Cut-offs.

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "mrr@10": ...}``; a judged query missing
        from the run counts as 0.

    Raises:
        ValueError: ``qrels`` judge no query (there is nothing to average).
    """
    pytrec_eval = require("pytrec_eval", extra="eval", purpose="m3rag.eval")
    judged = {q: dict(d) for q, d in qrels.items()}
    if not judged:
        msg = "no judged query to evaluate; the qrels must judge at least one query"
        raise ValueError(msg)
    ranked = {q: _ranking(run.get(q, {})) for q in judged}
    # pytrec_eval skips queries with an empty run; give them a dummy non-relevant document
    for docs in ranked.values():
        if not docs:
            docs.append("__m3rag_empty__")
    ks = sorted({int(k) for k in k_values})
    measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}"}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, measures)
    per_query = evaluator.evaluate(_by_rank(ranked, None))
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = statistics.mean(v[f"ndcg_cut_{k}"] for v in per_query.values())
        out[f"recall@{k}"] = statistics.mean(v[f"recall_{k}"] for v in per_query.values())
        mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_by_rank(ranked, k))
        out[f"mrr@{k}"] = statistics.mean(v["recip_rank"] for v in mrr.values())
    return out


def _ranking(docs: Mapping[str, float]) -> list[str]:
    """Document ids best first; equal scores keep their mapping order (``sorted`` is stable)."""
    scored = [(d, float(s)) for d, s in docs.items()]
    return [d for d, _ in sorted(scored, key=lambda ds: -ds[1])]


def _by_rank(ranked: Mapping[str, list[str]], k: int | None) -> dict[str, dict[str, float]]:
    """Rankings (cut at ``k``) as pytrec_eval runs whose distinct scores give exactly that order."""
    return {q: {d: float(-i) for i, d in enumerate(docs[:k])} for q, docs in ranked.items()}


MODES = ("dense", "lexical", "bm25", "colbert", "hybrid", "hybrid+rerank")
"""Evaluation modes: one path alone, ColBERT rescoring of dense + lexical candidates, all paths
fused (z-score normalised, equal weights), and the same reranked."""


@dataclass(frozen=True)
class EvalReport:
    """Metrics per mode on one dataset.

    Attributes:
        dataset: The dataset name.
        queries: Judged queries evaluated.
        documents: Corpus size.
        metrics: ``mode -> {"ndcg@10": ..., "recall@100": ..., "mrr@10": ...}``.
        tuned_weights: The best fusion weights found by [`tune_weights`][], if run.
        settings: What produced the metrics: the model, each mode's recall paths and fusion,
            the reranker, and the versions of m3rag, Python and the libraries that score.
    """

    dataset: str
    queries: int
    documents: int
    metrics: dict[str, dict[str, float]]
    tuned_weights: dict[str, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "dataset": self.dataset,
            "queries": self.queries,
            "documents": self.documents,
            "metrics": self.metrics,
            "tuned_weights": self.tuned_weights,
            "settings": self.settings,
        }


def versions() -> dict[str, str | None]:
    """Versions of m3rag, Python and the libraries behind the scores (``None``: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("m3rag", "torch", "transformers", "tokenizers", "tantivy", "numpy", "usearch"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _fusion_dict(fusion: FusionConfig) -> dict[str, object]:
    return {
        "method": fusion.method,
        "weights": dict(fusion.weights),
        "normalization": fusion.normalization,
        "rrf_k": fusion.rrf_k,
    }


def mode_config(mode: str, available: Sequence[str]) -> tuple[tuple[str, ...], dict[str, float]]:
    """Recall paths and fusion weights of an evaluation ``mode`` given the available paths.

    Raises:
        ValueError: Unknown mode, or a mode the model/collection cannot serve.
    """
    if mode not in MODES:
        msg = f"unknown mode {mode!r}; choose from {', '.join(MODES)}"
        raise ValueError(msg)
    recallable = tuple(p for p in ("dense", "lexical", "bm25") if p in available)
    if mode in ("hybrid", "hybrid+rerank"):
        return recallable, dict.fromkeys(available, 1.0)
    if mode not in available:
        msg = f"mode {mode!r} needs the {mode} path; this model and index offer {list(available)}"
        raise ValueError(msg)
    if mode == "colbert":
        return tuple(p for p in ("dense", "lexical") if p in available) or recallable, {
            "colbert": 1.0
        }
    return (mode,), {mode: 1.0}


def _run(
    retriever: HybridRetriever,
    queries: Mapping[str, str],
    k: int,
    encoded: M3Output | None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    qids = list(queries)
    for start in range(0, len(qids), 32):  # slices: hits carry their texts
        part = qids[start : start + 32]
        results = retriever.retrieve_batch(
            [queries[q] for q in part],
            k=k,
            query_embeddings=None if encoded is None else encoded[start : start + len(part)],
        )
        for qid, res in zip(part, results, strict=True):
            run[qid] = {h.id: float(h.score) for h in res}
        if on_step is not None:
            on_step(start + len(part))
    return run


def index_corpus(
    dataset: BeirDataset,
    collection: WritableStore,
    *,
    batch: int = 256,
    on_progress: Progress | None = None,
) -> int:
    """Add the corpus documents that are not in ``collection`` yet; returns how many were added.

    ``on_progress("indexing", done, total)`` follows each committed batch.
    """
    present = set(collection.ids())
    todo = [d for d in dataset.corpus if d not in present]
    for start in range(0, len(todo), batch):
        ids = todo[start : start + batch]
        collection.add([dataset.corpus[i] for i in ids], ids=ids)
        collection.commit()
        if on_progress is not None:
            on_progress("indexing", start + len(ids), len(todo))
    return len(todo)


def encode_queries(
    encoder: Encoder,
    queries: Sequence[str],
    heads: Sequence[str],
    *,
    on_progress: Progress | None = None,
    batch: int = 256,
) -> M3Output:
    """Encode ``queries`` once with the ``heads`` every evaluated mode needs."""
    from m3rag.types import M3Output

    parts = []
    for start in range(0, len(queries), batch):
        parts.append(
            encoder.encode_queries(
                list(queries[start : start + batch]),
                dense="dense" in heads,
                sparse="sparse" in heads,
                colbert="colbert" in heads,
            )
        )
        if on_progress is not None:
            on_progress("encoding queries", min(start + batch, len(queries)), len(queries))
    return M3Output.concat(parts)


def check_modes(modes: Sequence[str], available: Sequence[str], *, reranker: bool) -> None:
    """Check that every mode can run on these paths, before anything is indexed or encoded.

    Raises:
        ValueError: Unknown mode, a mode whose path is not available (the message names the
            paths the model and index offer), or ``hybrid+rerank`` without a reranker.
    """
    if not modes:
        msg = f"no modes given; choose from {', '.join(MODES)}"
        raise ValueError(msg)
    for mode in modes:
        mode_config(mode, available)
        if mode == "hybrid+rerank" and not reranker:
            msg = "mode hybrid+rerank needs a reranker"
            raise ValueError(msg)


_HEADS = (("dense", "dense"), ("lexical", "sparse"), ("colbert", "colbert"))


def evaluate(
    dataset: BeirDataset,
    collection: Store,
    *,
    encoder: Encoder | None = None,
    modes: Sequence[str] = ("hybrid",),
    k_values: Sequence[int] = (10, 100),
    reranker: Reranker | None = None,
    weights: Mapping[str, float] | None = None,
    queries: Mapping[str, str] | None = None,
    on_progress: Progress | None = None,
    target_precision: float | None = None,
    dev_queries: Mapping[str, str] | None = None,
    query_embeddings: M3Output | None = None,
    normalization: Normalization = "zscore",
) -> EvalReport:
    """Evaluate retrieval modes on a BEIR dataset already indexed in ``collection``.

    The queries are encoded once, with every head the modes need; then each mode searches.

    Args:
        dataset: From [`load_beir`][m3rag.eval.load_beir].
        collection: Holds the corpus (see [`index_corpus`][m3rag.eval.index_corpus]).
        encoder: The query encoder (``None`` allows BM25 only).
        modes: From [`MODES`][m3rag.eval.MODES].
        k_values: Metric cut-offs.
        reranker: Needed for ``hybrid+rerank``.
        weights: Fusion weights for the hybrid modes (default: every path 1, z-score
            normalised, as the retriever's default).
        queries: A subset of the dataset's queries (default all judged ones).
        on_progress: ``on_progress(stage, done, total)`` per encoded batch and per searched
            slice of queries.
        target_precision: With ``dev_queries``: per mode, the score cutoff (``min_score``)
            whose hits reach this precision on the dev queries
            ([`threshold_for_precision`][m3rag.eval.threshold_for_precision]), and what it
            keeps on the evaluated queries, in ``settings["thresholds"]``.
        dev_queries: Judged queries (in ``dataset.qrels``) to find the cutoff on.
        query_embeddings: The queries already encoded, in the order of ``queries``, with
            every head the modes use (as `encode_queries` gives them); default: encoded here.
        normalization: How the hybrid modes normalise path scores before weighting them:
            ``"zscore"`` (the retriever's default), ``"minmax"``, or ``"none"`` (raw scores:
            BGE-M3's ``w1·dense + w2·lexical + w3·colbert``, the score its training distils).

    Raises:
        ValueError: Unknown mode, a mode the model cannot serve, ``hybrid+rerank`` without a
            reranker, an unknown normalisation, or no queries (all checked before any query
            is encoded).
    """
    from m3rag.fusion import FusionConfig, check_normalization
    from m3rag.retriever import HybridRetriever, available_paths

    check_normalization(normalization)  # before any query is encoded

    available = available_paths(collection, encoder)
    check_modes(modes, available, reranker=reranker is not None)
    qs = dict(queries) if queries is not None else dataset.queries
    if not qs:
        msg = "no queries to evaluate; give at least one query judged in dataset.qrels"
        raise ValueError(msg)
    depth = max(int(k) for k in k_values)
    heads = [h for p, h in _HEADS if p in available]
    encoded = query_embeddings
    if encoded is not None and len(encoded) != len(qs):
        msg = f"query_embeddings hold {len(encoded)} queries for {len(qs)} queries"
        raise ValueError(msg)
    if encoded is None and encoder is not None and heads and qs:
        encoded = encode_queries(encoder, list(qs.values()), heads, on_progress=on_progress)
    metrics: dict[str, dict[str, float]] = {}
    settings: dict[str, Any] = {
        "model": None if encoder is None else str(encoder.model_name_or_path),
        "reranker": None if reranker is None else str(reranker.model_name_or_path),
        "k_values": sorted({int(k) for k in k_values}),
        "modes": {},
        "versions": versions(),
    }
    for mode in modes:
        recall, default_weights = mode_config(mode, available)
        fusion = (
            FusionConfig(weights=dict(weights or default_weights), normalization=normalization)
            if mode.startswith("hybrid")
            else FusionConfig(weights=default_weights)
        )
        retriever = HybridRetriever(
            collection,
            encoder=encoder,
            reranker=reranker if mode == "hybrid+rerank" else None,
            fusion=fusion,
            recall=recall,
            recall_k=max(100, depth),
            rollup=None,
        )
        stage = f"searching ({mode})"

        def step(done: int, stage: str = stage) -> None:
            if on_progress is not None:
                on_progress(stage, done, len(qs))

        run = _run(retriever, qs, depth, encoded, step)
        metrics[mode] = evaluate_run(run, {q: dataset.qrels[q] for q in qs}, k_values=k_values)
        if target_precision is not None and dev_queries:
            dev_run = _run(retriever, dev_queries, depth, None)
            found = threshold_for_precision(
                dev_run, {q: dataset.qrels[q] for q in dev_queries}, target_precision
            )
            kept = _at_threshold(run, {q: dataset.qrels[q] for q in qs}, found.threshold)
            settings.setdefault("thresholds", {})[mode] = {
                "target_precision": target_precision,
                "threshold": found.threshold,
                "dev": {"precision": found.precision, "recall": found.recall, "hits": found.hits},
                "test": kept,
            }
        settings["modes"][mode] = {
            "recall": list(recall),
            "recall_k": retriever.recall_k,
            "fusion": _fusion_dict(fusion),
            "rerank_top_n": retriever.rerank_top_n if mode == "hybrid+rerank" else None,
        }
    return EvalReport(dataset.name, len(qs), len(dataset.corpus), metrics, settings=settings)


def tune_weights(
    dataset: BeirDataset,
    collection: Store,
    *,
    encoder: Encoder | None,
    dev_queries: Mapping[str, str],
    grid: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    metric: str = "ndcg@10",
    paths: Sequence[str] | None = None,
    normalization: Normalization = "zscore",
) -> tuple[dict[str, float], float]:
    """Grid-search hybrid fusion weights on dev queries; returns the best weights and score.

    Every path gets a weight from ``grid`` (all-zero combinations are skipped); candidates are
    recalled once per combination through the same hybrid retriever (z-score fusion unless
    ``normalization`` says otherwise).

    Args:
        dataset: Holds the dev queries' judgements (e.g. a training split).
        collection: Holds the corpus.
        encoder: The query encoder (``None`` allows BM25 only).
        dev_queries: ``query_id -> text``, judged in ``dataset.qrels``.
        grid: The weights tried for each path.
        metric: The metric maximised, e.g. ``"ndcg@10"``.
        paths: The paths to weight, e.g. ``("dense", "lexical", "colbert")`` to fuse a model's
            heads without BM25 (default: every path the collection and encoder offer; the
            others get weight 0). ``len(grid) ** len(paths) - 1`` combinations are tried.
        normalization: As in [`evaluate`][m3rag.eval.evaluate].

    Raises:
        ValueError: A path in ``paths`` that the collection or encoder does not offer, or no
            dev queries.
    """
    import itertools

    from m3rag.retriever import available_paths

    if not dev_queries:
        msg = "tune_weights needs at least one dev query (judged in dataset.qrels)"
        raise ValueError(msg)
    offered = available_paths(collection, encoder)
    if paths is None:
        available: tuple[str, ...] = offered
    else:
        missing = [p for p in paths if p not in offered]
        if missing or not paths:
            msg = (
                f"paths {list(paths)} must be a non-empty subset of the paths this model and "
                f"index offer, {list(offered)}"
            )
            raise ValueError(msg)
        available = tuple(dict.fromkeys(paths))
    # the dev queries are encoded once, not once per weight combination, with every head the
    # retriever recalls or scores with (also those of paths weighted 0)
    heads = [h for p, h in _HEADS if p in offered]
    encoded = (
        encode_queries(encoder, list(dev_queries.values()), heads)
        if encoder is not None and heads and dev_queries
        else None
    )
    best: tuple[dict[str, float], float] = ({}, -1.0)
    for combo in itertools.product(grid, repeat=len(available)):
        if not any(combo):
            continue
        weights = {p: w for p, w in zip(available, combo, strict=True) if w > 0}
        report = evaluate(
            dataset,
            collection,
            encoder=encoder,
            modes=("hybrid",),
            k_values=(int(metric.split("@")[1]),),
            weights=weights,
            queries=dev_queries,
            query_embeddings=encoded,
            normalization=normalization,
        )
        score = report.metrics["hybrid"][metric]
        if score > best[1]:
            best = (weights, score)
    return best


@dataclass(frozen=True)
class Threshold:
    """A relevance cutoff found on judged queries.

    Attributes:
        threshold: The lowest score whose hits (and all better ones) reach the precision;
            ``None`` when no cutoff reaches it.
        precision: The precision of the hits at or above the threshold.
        recall: The share of all judged relevant documents those hits hold.
        hits: How many hits are at or above it.
    """

    threshold: float | None
    precision: float
    recall: float
    hits: int


def threshold_for_precision(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    target: float,
) -> Threshold:
    """The loosest score cutoff at which the pooled hits of ``run`` reach ``target`` precision.

    Every hit of every query is pooled and sorted by score; a hit is correct when its document
    is judged relevant (relevance > 0) for its query. The threshold is the lowest score at
    which the hits scoring at least that much have a precision of ``target`` or more (so it
    keeps as many hits as possible). Use it as ``min_score`` on new queries.

    Raises:
        ValueError: ``target`` not in ``(0, 1]``.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        msg = f"target precision must be in (0, 1], got {target!r}"
        raise ValueError(msg)
    pooled = sorted(
        (
            (float(s), qrels.get(q, {}).get(d, 0) > 0)
            for q, docs in run.items()
            for d, s in docs.items()
        ),
        key=lambda x: -x[0],
    )
    relevant = sum(1 for docs in qrels.values() for r in docs.values() if r > 0)
    best = Threshold(None, 0.0, 0.0, 0)
    correct = 0
    for i, (score, ok) in enumerate(pooled, 1):
        correct += ok
        # a cutoff can only fall between different scores: ties are kept together
        if i < len(pooled) and pooled[i][0] == score:
            continue
        precision = correct / i
        if precision >= target:
            best = Threshold(score, precision, correct / relevant if relevant else 0.0, i)
    return best


def _at_threshold(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    threshold: float | None,
) -> dict[str, float | int]:
    """Precision, recall and hit count of the hits of ``run`` scoring ``threshold`` or more."""
    if threshold is None:
        return {"precision": 0.0, "recall": 0.0, "hits": 0}
    kept = [
        qrels.get(q, {}).get(d, 0) > 0
        for q, docs in run.items()
        for d, s in docs.items()
        if s >= threshold
    ]
    relevant = sum(1 for docs in qrels.values() for r in docs.values() if r > 0)
    return {
        "precision": sum(kept) / len(kept) if kept else 0.0,
        "recall": sum(kept) / relevant if relevant else 0.0,
        "hits": len(kept),
    }
