"""`m3rag.eval.tune_weights` on the tiny checkpoint: which paths it weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3rag import Collection
from m3rag.eval import BeirDataset, tune_weights

pytestmark = pytest.mark.model
pytest.importorskip("pytrec_eval")


def _dataset() -> BeirDataset:
    corpus = {
        "paris": "Paris is the capital of France.",
        "tokyo": "Tokyo is the capital of Japan.",
        "rain": "Rainfall in the northern valleys doubled this year.",
    }
    queries = {"q1": "capital of France", "q2": "rain in the valleys"}
    qrels = {"q1": {"paris": 1}, "q2": {"rain": 1}}
    return BeirDataset("tiny", corpus, dict.fromkeys(corpus, ""), queries, qrels)


def test_tune_weights_on_chosen_paths(tiny_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _dataset()
    with Collection.create(tmp_path / "c", encoder=tiny_encoder) as col:
        col.add(list(data.corpus.values()), ids=list(data.corpus))
        col.commit()
        heads = ("dense", "lexical", "colbert")
        weights, score = tune_weights(
            data, col, encoder=tiny_encoder, dev_queries=data.queries, grid=(0.0, 1.0), paths=heads
        )
        assert weights and set(weights) <= set(heads)  # BM25 never weighted
        assert 0.0 <= score <= 1.0
        default, _ = tune_weights(
            data, col, encoder=tiny_encoder, dev_queries=data.queries, grid=(0.0, 1.0)
        )
        assert set(default) <= {*heads, "bm25"}
        with pytest.raises(ValueError, match="subset of the paths"):
            tune_weights(
                data, col, encoder=tiny_encoder, dev_queries=data.queries, paths=("splade",)
            )


def test_evaluate_and_tune_on_raw_scores(tiny_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from m3rag import FusionConfig, HybridRetriever
    from m3rag.eval import evaluate, evaluate_run

    data = _dataset()
    weights = {"dense": 1.0, "lexical": 0.3, "colbert": 1.0}  # BGE-M3's training teacher
    with Collection.create(tmp_path / "c", encoder=tiny_encoder) as col:
        col.add(list(data.corpus.values()), ids=list(data.corpus))
        col.commit()
        got = evaluate(
            data, col, encoder=tiny_encoder, k_values=(3,), weights=weights, normalization="none"
        )
        assert got.settings["modes"]["hybrid"]["fusion"]["normalization"] == "none"
        # the same as the retriever with raw-score fusion, query by query
        raw = HybridRetriever(
            col,
            encoder=tiny_encoder,
            fusion=FusionConfig(weights=weights, normalization="none"),
            recall=("dense", "lexical", "bm25"),
            rollup=None,
        )
        run = {
            q: {h.id: float(h.score) for h in raw.retrieve(text, k=3)}
            for q, text in data.queries.items()
        }
        assert got.metrics["hybrid"] == evaluate_run(run, data.qrels, k_values=(3,))
        zscore = evaluate(data, col, encoder=tiny_encoder, k_values=(3,), weights=weights)
        assert zscore.settings["modes"]["hybrid"]["fusion"]["normalization"] == "zscore"
        best, score = tune_weights(
            data,
            col,
            encoder=tiny_encoder,
            dev_queries=data.queries,
            grid=(0.0, 1.0),
            paths=("dense", "colbert"),
            normalization="none",
        )
        assert best and 0.0 <= score <= 1.0
        with pytest.raises(ValueError, match="normalization must be one of"):
            evaluate(data, col, encoder=tiny_encoder, normalization="l2")
