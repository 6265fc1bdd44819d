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


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "pos": ["p"], "pos_scores": [NaN]}', "finite numbers, got nan"),
        ('{"query": "q", "pos": ["p"], "pos_scores": [Infinity]}', "finite numbers, got inf"),
        ('{"query": "q", "pos": ["p"], "pos_scores": [1e400]}', "finite numbers, got inf"),
        ('{"query": "q", "pos": ["p"], "pos_scores": [1' + "0" * 400 + "]}", "401 digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"query": "a\\ud800b", "pos": ["p"]}', "lone surrogate"),
        ('{"query": "q", "pos": ["x\\udc00"]}', "lone surrogate"),
        ('{"query": "q", "pos": ["p"], "meta": {"k": "\\udfff"}}', "lone surrogate"),
    ],
)
def test_hostile_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "ok", "pos": ["p"]}\n' + line + "\n", "utf-8")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        read_jsonl(path)


def test_a_surrogate_pair_is_valid_text(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"query": "\\ud83d\\ude00", "pos": ["p"]}\n', "utf-8")
    assert read_jsonl(path)[0].query == "\U0001f600"


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"query": "q", "pos": ["p"]}\n{"query": "\xff", "pos": ["p"]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not UTF-8 text \(byte 0xff at column 12\)"):
        read_jsonl(path)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"query": "q", "pos": ["p"]}\n')
    assert read_jsonl(path)[0].query == "q"


def test_examples_remember_where_they_were_read_and_are_checked_up_front(tmp_path):
    from m3rag.train.data import check_examples

    path = _write(
        tmp_path / "d.jsonl",
        [
            {"query": "q1", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": [0]},
            {"query": "q2", "pos": ["p"], "neg": ["n"]},
            {"query": "q3", "pos": ["p"]},
        ],
    )
    examples = read_jsonl(path)
    assert examples[2].source == f"{path}:3"
    check_examples(examples, group_size=1)
    with pytest.raises(ValueError, match=r"d.jsonl:3: no negatives but group_size=2"):
        check_examples(examples, group_size=2)
    with pytest.raises(ValueError, match=r"d.jsonl:2: no pos_scores/neg_scores"):
        check_examples(examples[:2], group_size=2, teacher_scores=True)
    with pytest.raises(ValueError, match="no training examples"):
        check_examples([], group_size=1)


def test_beir_folder_without_the_split_says_so(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    _write(root / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "one"}])
    _write(root / "queries.jsonl", [{"_id": "q1", "text": "first"}])
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"no qrels/train.tsv in .*beir \(a BEIR folder"):
        load_training_data(root)


def test_write_jsonl_keeps_the_old_file_when_writing_fails(tmp_path):
    from m3rag.train import TrainExample

    path = tmp_path / "out.jsonl"
    path.write_text("old content\n", "utf-8")
    bad = TrainExample("q", ("\ud800",))  # a library caller can build one; JSON cannot hold it
    with pytest.raises(UnicodeEncodeError):
        write_jsonl([TrainExample("q", ("p",)), bad], path)
    assert path.read_text("utf-8") == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    assert write_jsonl([TrainExample("q", ("p",))], path) == 1
    assert json.loads(path.read_text("utf-8"))["pos"] == ["p"]


def test_write_jsonl_gives_the_usual_permissions(tmp_path):
    import os

    from m3rag.train import TrainExample

    mask = os.umask(0o022)
    os.umask(mask)
    write_jsonl([TrainExample("q", ("p",))], tmp_path / "new.jsonl")
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o666 & ~mask
    (tmp_path / "old.jsonl").write_text("x")
    (tmp_path / "old.jsonl").chmod(0o640)
    write_jsonl([TrainExample("q", ("p",))], tmp_path / "old.jsonl")
    assert (tmp_path / "old.jsonl").stat().st_mode & 0o777 == 0o640
