from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from m3rag.eval import evaluate_run, load_beir

pytest.importorskip("pytrec_eval")


def test_metrics_match_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1, "c": 1}, "q2": {"x": 2}}
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"y": 1.0, "x": 0.5}}
    m = evaluate_run(run, qrels, k_values=(1, 10))
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (3 / math.log2(3)) / 3  # gain 2**2-1 at rank 2, ideal at rank 1
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["mrr@1"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@10"] == pytest.approx(1.0)


def test_missing_queries_count_as_zero() -> None:
    m = evaluate_run({"q1": {"a": 1.0}}, {"q1": {"a": 1}, "q2": {"b": 1}}, k_values=(10,))
    assert m["ndcg@10"] == pytest.approx(0.5)


def test_load_beir(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "T", "text": "body"})
        + "\n"
        + json.dumps({"_id": 2, "text": "x"})
        + "\n"
    )
    (tmp_path / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "hello"})
        + "\n"
        + json.dumps({"_id": "q9", "text": "unjudged"})
        + "\n"
    )
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    ds = load_beir(tmp_path)
    assert ds.corpus == {"d1": "T body", "2": "x"}
    assert ds.queries == {"q1": "hello"}
    assert ds.qrels == {"q1": {"d1": 1}}
    (tmp_path / "qrels" / "test.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.tsv"):
        load_beir(tmp_path)


def test_threshold_for_precision_against_brute_force() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from m3rag.eval import threshold_for_precision

    @settings(max_examples=150, deadline=None)
    @given(
        scores=st.lists(
            st.tuples(
                st.integers(0, 3), st.integers(0, 5), st.sampled_from([0.1, 0.5, 0.9, 1.3, 2.0])
            ),
            max_size=25,
        ),
        relevant=st.sets(st.tuples(st.integers(0, 3), st.integers(0, 5)), max_size=10),
        target=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    )
    def check(scores, relevant, target) -> None:  # type: ignore[no-untyped-def]
        run: dict[str, dict[str, float]] = {}
        for q, d, s in scores:
            run.setdefault(f"q{q}", {})[f"d{d}"] = s
        qrels: dict[str, dict[str, int]] = {}
        for q, d in relevant:
            qrels.setdefault(f"q{q}", {})[f"d{d}"] = 1
        got = threshold_for_precision(run, qrels, target)
        hits = [
            (s, qrels.get(q, {}).get(d, 0) > 0) for q, docs in run.items() for d, s in docs.items()
        ]
        ok = []
        for t in sorted({s for s, _ in hits}):
            kept = [r for s, r in hits if s >= t]
            if sum(kept) / len(kept) >= target:
                ok.append(t)
        want = min(ok) if ok else None
        assert got.threshold == want
        if want is not None:
            kept = [r for s, r in hits if s >= want]
            assert got.hits == len(kept) and got.precision == sum(kept) / len(kept)

    check()
    with pytest.raises(ValueError, match="target"):
        threshold_for_precision({}, {}, 0)
