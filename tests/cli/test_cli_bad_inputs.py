"""Bad inputs on the command line: a clear message and the documented exit code, or skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m3rag.cli import app
from m3rag.ingest import SUFFIXES

runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _one_query(beir: Path) -> None:
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tparis\t1\n")


@pytest.mark.parametrize("option", [["--tune"], ["--target-precision", "0.5"]])
def test_a_dev_split_needs_two_queries_and_is_checked_before_indexing(
    tiny_beir: Path, tmp_path: Path, option: list[str]
) -> None:
    _one_query(tiny_beir)
    index = tmp_path / "idx"
    result = runner.invoke(
        app, ["eval", str(tiny_beir), "--modes", "bm25", "--index", str(index), *option]
    )
    assert result.exit_code == 2, result.output
    assert "need a dev split" in flat(result.output)
    assert "at least 2" in flat(result.output)
    assert not index.exists()  # refused before anything was indexed


@pytest.mark.parametrize(
    ("file", "line", "where"),
    [
        ("queries.jsonl", '{"id": "q9", "text": "x"}\n', 'queries.jsonl:5: missing field "_id"'),
        ("corpus.jsonl", "[1, 2]\n", "corpus.jsonl:6: expected a JSON object"),
        ("qrels/test.tsv", "q1\ttokyo\t1.0\n", "test.tsv:6: the score must be an integer"),
    ],
)
def test_malformed_beir_files_name_file_and_line(
    tiny_beir: Path, file: str, line: str, where: str
) -> None:
    with (tiny_beir / file).open("a", encoding="utf-8") as fh:
        fh.write(line)
    result = runner.invoke(app, ["eval", str(tiny_beir), "--modes", "bm25"])
    assert result.exit_code == 2, result.output
    assert where in flat(result.output)
    assert "a bug in m3rag" not in result.output


def test_an_empty_corpus_document_is_skipped_with_a_note(tiny_beir: Path, tmp_path: Path) -> None:
    with (tiny_beir / "corpus.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"_id": "blank", "title": "", "text": ""}) + "\n")
        fh.write(json.dumps({"_id": "titled", "title": "Lima, capital of Peru", "text": None}))
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(tiny_beir), "--modes", "bm25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped 1 corpus document with neither title nor text" in flat(result.output)
    assert "corpus.jsonl:6: blank" in flat(result.output)
    assert json.loads(out.read_text())["documents"] == 6  # five, and the one with a title


def test_search_lang_auto_is_refused_without_offering_auto(tmp_path: Path) -> None:
    for value in ("auto", "not a code"):
        result = runner.invoke(app, ["search", "q", "--index", str(tmp_path), "--lang", value])
        assert result.exit_code == 2, result.output
        assert "'auto' to detect" not in flat(result.output)
        assert "ISO 639-1" in flat(result.output)


def test_index_messages_list_every_file_type_ingest_reads(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["index", str(empty), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 1, result.output
    shown = flat(result.output)
    assert all(suffix in shown for suffix in SUFFIXES), shown
    help_text = flat(runner.invoke(app, ["index", "--help"]).output)
    assert all(suffix in help_text for suffix in SUFFIXES), help_text


def test_index_skips_bad_names_and_records_and_indexes_the_rest(
    tmp_path: Path, tiny_m3_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    try:
        (docs / os.fsdecode(b"bad\xff.txt")).write_text("hello", encoding="utf-8")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not store names that are not UTF-8")
    (docs / "good.txt").write_text("a good document about harbours", encoding="utf-8")
    records = [
        {"id": "p1", "text": "x", "metadata": {"page_offsets": ["a"]}},
        {"id": "p2", "text": "a record after the bad one"},
    ]
    (docs / "recs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    index = tmp_path / "idx"
    result = runner.invoke(
        app, ["index", str(docs), "--index", str(index), "--model", str(tiny_m3_path)]
    )
    assert result.exit_code == 0, result.output
    shown = flat(result.output)
    assert "indexed 2 documents" in shown and "2 unreadable" in shown
    assert "bad\\udcff.txt: the file name is not valid UTF-8" in shown
    assert 'p1: "page_offsets" must be a sorted list of non-negative integers' in shown
