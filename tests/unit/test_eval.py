from __future__ import annotations

import itertools
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


def test_ties_are_ranked_in_the_runs_order() -> None:
    # four documents tie; the retriever ranked d0 first, so it is found at rank 1 by every metric
    run = {"q": {"d0": 1.0, "d1": 1.0, "d2": 1.0, "d3": 1.0}}
    m = evaluate_run(run, {"q": {"d0": 1}}, k_values=(1, 10))
    assert m == {f"{name}@{k}": 1.0 for k in (1, 10) for name in ("ndcg", "recall", "mrr")}
    last = evaluate_run({"q": dict(reversed(run["q"].items()))}, {"q": {"d0": 1}}, k_values=(1,))
    assert last == {"ndcg@1": 0.0, "recall@1": 0.0, "mrr@1": 0.0}


def _brute_force(ranking: list[str], rel: dict[str, int], k: int) -> dict[str, float]:
    """trec_eval's definitions on one explicit ranking (linear gain for nDCG)."""
    top = ranking[:k]
    relevant = [d for d, r in rel.items() if r > 0]
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    first = next((i for i, d in enumerate(top, 1) if rel.get(d, 0) > 0), None)
    return {
        "ndcg": dcg / idcg if idcg else 0.0,
        "recall": sum(1 for d in top if d in relevant) / len(relevant) if relevant else 0.0,
        "mrr": 1 / first if first else 0.0,
    }


def test_every_metric_scores_the_runs_own_ranking() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    docs = [f"d{i}" for i in range(8)]

    @settings(max_examples=150, deadline=None)
    @given(
        order=st.permutations(docs),
        scores=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=8, max_size=8),
        rel=st.dictionaries(st.sampled_from(docs), st.integers(1, 2), min_size=1),
        ks=st.sets(st.integers(1, 9), min_size=1, max_size=3),
    )
    def check(order, scores, rel, ks) -> None:  # type: ignore[no-untyped-def]
        run = {"q": dict(zip(order, scores, strict=True))}
        # the ranking: best score first, ties in the run's (the retriever's) order
        ranking = [d for _, d in sorted(enumerate(order), key=lambda x: (-scores[x[0]], x[0]))]
        got = evaluate_run(run, {"q": rel}, k_values=tuple(ks))
        for k in ks:
            want = _brute_force(ranking, rel, k)
            for name, value in want.items():
                assert got[f"{name}@{k}"] == pytest.approx(value, abs=1e-4), (name, k)
        for a, b in itertools.pairwise(sorted(ks)):
            assert got[f"mrr@{a}"] <= got[f"mrr@{b}"] and got[f"recall@{a}"] <= got[f"recall@{b}"]

    check()


def test_runs_without_ties_score_as_pytrec_eval_scores_them() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    pytrec_eval = pytest.importorskip("pytrec_eval")
    docs = [f"d{i}" for i in range(8)]

    @settings(max_examples=100, deadline=None)
    @given(
        # distinct even as float32, which pytrec_eval compares in
        scores=st.lists(
            st.integers(-800, 800).map(lambda i: i / 8), min_size=1, max_size=8, unique=True
        ),
        rel=st.dictionaries(st.sampled_from(docs), st.integers(1, 2), min_size=1),
    )
    def check(scores, rel) -> None:  # type: ignore[no-untyped-def]
        run = {"q": {docs[i]: s for i, s in enumerate(scores)}}
        got = evaluate_run(run, {"q": rel}, k_values=(3, 10))
        raw = pytrec_eval.RelevanceEvaluator({"q": rel}, {"ndcg_cut.3,10", "recall.3,10"})
        want = raw.evaluate(run)["q"]
        for k in (3, 10):
            assert got[f"ndcg@{k}"] == pytest.approx(want[f"ndcg_cut_{k}"], abs=1e-12)
            assert got[f"recall@{k}"] == pytest.approx(want[f"recall_{k}"], abs=1e-12)

    check()


def _beir_folder(
    root: Path,
    corpus: list[str] | None = None,
    queries: list[str] | None = None,
    qrels: list[str] | None = None,
) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    good_corpus = [json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) for i in range(3)]
    good_queries = [json.dumps({"_id": f"q{i}", "text": f"query {i}"}) for i in range(2)]
    good_qrels = ["query-id\tcorpus-id\tscore", "q0\td0\t1", "q1\td1\t2"]
    for name, lines in (
        ("corpus.jsonl", good_corpus + (corpus or [])),
        ("queries.jsonl", good_queries + (queries or [])),
        ("qrels/test.tsv", good_qrels + (qrels or [])),
    ):
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("kind", "line", "match"),
    [
        ("corpus", "[1, 2]", r"corpus\.jsonl:4: expected a JSON object, got list"),
        ("corpus", '"text"', r"corpus\.jsonl:4: expected a JSON object, got str"),
        ("corpus", '{"_id": "d9"}', r'corpus\.jsonl:4: missing field "text"'),
        ("corpus", '{"text": "x"}', r'corpus\.jsonl:4: missing field "_id"'),
        ("corpus", '{"_id": null, "text": "x"}', r'corpus\.jsonl:4: "_id" must be'),
        ("corpus", '{"_id": "d9", "text": 5}', r'corpus\.jsonl:4: "text" must be a string'),
        ("corpus", '{"_id": "d9", "text": "x", "title": []}', r'corpus\.jsonl:4: "title"'),
        ("corpus", "{not json", r"corpus\.jsonl:4: not JSON"),
        ("queries", '{"id": "q9", "text": "x"}', r'queries\.jsonl:3: missing field "_id"'),
        ("queries", '{"_id": "q9"}', r'queries\.jsonl:3: missing field "text"'),
        ("queries", "[]", r"queries\.jsonl:3: expected a JSON object"),
        ("queries", '{"_id": {}, "text": "x"}', r'queries\.jsonl:3: "_id" must be'),
        (
            "qrels",
            "q0\td2\t1.0",
            r"test\.tsv:4: the score must be an integer relevance, got '1\.0'",
        ),
        ("qrels", "q0\td2\thigh", r"test\.tsv:4: the score must be an integer"),
        ("qrels", "q0\td2", r"test\.tsv:4: expected 3 tab-separated fields"),
    ],
)
def test_malformed_beir_lines_name_file_and_line(
    tmp_path: Path, kind: str, line: str, match: str
) -> None:
    folder = _beir_folder(tmp_path, **{kind: [line]})
    with pytest.raises(ValueError, match=match) as err:
        load_beir(folder)
    assert str(folder) in str(err.value)


def test_a_beir_folder_without_judged_queries_is_refused(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(ValueError, match=r"test\.tsv holds no judgements"):
        load_beir(folder)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq7\td0\t1\n")
    with pytest.raises(ValueError, match=r"no query of .*queries\.jsonl is judged"):
        load_beir(folder)
    with pytest.raises(ValueError, match="no judged query"):
        evaluate_run({"q": {"d": 1.0}}, {}, k_values=(10,))


def test_empty_and_null_texts(tmp_path: Path) -> None:
    """BEIR joins title and text; null counts as empty; a document with neither is left out."""
    folder = _beir_folder(
        tmp_path,
        corpus=[
            json.dumps({"_id": "title-only", "title": "A title", "text": ""}),
            json.dumps({"_id": "null-text", "title": "Null", "text": None}),
            json.dumps({"_id": "null-title", "title": None, "text": "body"}),
            json.dumps({"_id": "blank", "title": " ", "text": "  "}),
            json.dumps({"_id": "nothing", "text": None}),
        ],
    )
    ds = load_beir(folder)
    assert ds.corpus["title-only"] == "A title"
    assert ds.corpus["null-text"] == "Null"
    assert ds.corpus["null-title"] == "body"
    assert "blank" not in ds.corpus and "nothing" not in ds.corpus
    assert ds.empty == ("corpus.jsonl:7: blank", "corpus.jsonl:8: nothing")
    assert "None" not in " ".join(ds.corpus.values())


@pytest.mark.parametrize(
    ("kind", "line", "match"),
    [
        ("corpus", '{"_id": "d9", "text": "bad \\ud800"}', r'corpus\.jsonl:4: "text" holds a lone'),
        ("queries", '{"_id": "q9", "text": "\\udcff"}', r'queries\.jsonl:3: "text" holds a lone'),
        ("corpus", '{"_id": "\\udcff", "text": "x"}', r'corpus\.jsonl:4: "_id" holds a lone'),
        ("queries", '{"_id": "q0", "text": "  "}', r"queries\.jsonl:3: the judged query 'q0'"),
    ],
)
def test_texts_that_cannot_be_searched_name_file_and_line(
    tmp_path: Path, kind: str, line: str, match: str
) -> None:
    folder = _beir_folder(tmp_path, **{kind: [line]})
    with pytest.raises(ValueError, match=match):
        load_beir(folder)


def test_an_unjudged_blank_query_is_ignored(tmp_path: Path) -> None:
    ds = load_beir(_beir_folder(tmp_path, queries=['{"_id": "q9", "text": ""}']))
    assert set(ds.queries) == {"q0", "q1"}
