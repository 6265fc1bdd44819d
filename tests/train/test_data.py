from __future__ import annotations

import json

import numpy as np
import pytest

from m3rag.train.data import load_training_data, read_jsonl, sample_group, write_jsonl


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_jsonl_round_trip_keeps_scores_prompt_and_unknown_fields(tmp_path):
    rows = [
        {
            "query": "q1",
            "pos": ["p"],
            "neg": ["n1", "n2"],
            "pos_scores": [1.0],
            "neg_scores": [0.5, 0.2],
            "prompt": "Represent: ",
            "type": "normal",
        },
        {"query": "q2", "pos": ["a", "b"]},
    ]
    examples = read_jsonl(_write(tmp_path / "d.jsonl", rows))
    assert examples[0].neg_scores == (0.5, 0.2)
    assert examples[1].neg == ()
    write_jsonl(examples, tmp_path / "out.jsonl")
    again = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert again[0] == rows[0]
    assert again[1] == {"query": "q2", "pos": ["a", "b"], "neg": []}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q", "pos": []}, "needs a positive"),
        ({"query": 3, "pos": ["p"]}, "must be a string"),
        ({"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": [1, 2]}, "list of 1 numbers"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"query": "ok", "pos": ["p"]}, row])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        read_jsonl(path)


def test_sampling_draws_positive_first_and_follows_teacher_scores(tmp_path):
    rows = [
        {
            "query": "q",
            "pos": ["p0", "p1"],
            "neg": ["n0", "n1"],
            "pos_scores": [9.0, 8.0],
            "neg_scores": [1.0, 2.0],
            "prompt": "P: ",
        }
    ]
    (ex,) = read_jsonl(_write(tmp_path / "d.jsonl", rows))
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = sample_group(ex, 4, rng, teacher_scores=True)  # 3 negatives from 2: list repeated
        assert g.query == "P: q"
        assert g.passages[0] in ex.pos
        assert sorted(g.passages[1:]) in (["n0", "n0", "n1"], ["n0", "n1", "n1"])
        lookup = dict(zip(ex.pos + ex.neg, ex.pos_scores + ex.neg_scores, strict=True))
        assert g.scores == tuple(lookup[p] for p in g.passages)


def test_group_without_negatives_says_to_mine(tmp_path):
    (ex,) = read_jsonl(_write(tmp_path / "d.jsonl", [{"query": "q", "pos": ["p"]}]))
    with pytest.raises(ValueError, match="m3rag mine"):
        sample_group(ex, 2, np.random.default_rng(0))
    assert sample_group(ex, 1, np.random.default_rng(0)).passages == ("p",)


def test_beir_folder_gives_queries_with_positive_texts(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    _write(
        root / "corpus.jsonl",
        [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}],
    )
    _write(root / "queries.jsonl", [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "x"}])
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1\n")
    (ex,) = load_training_data(root)
    assert ex.query == "first"
    assert ex.extra["pos_ids"] == ["d1", "d2"]
    assert len(ex.pos) == 2
