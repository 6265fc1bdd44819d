"""Bad inputs to ``index_files`` are reported and skipped; the good ones next to them are indexed."""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m3rag import Collection, Document, index_files
from m3rag.ingest import chunk_document, make_chunker, read_file
from m3rag.rollup import PAGE_END, PAGE_OFFSETS, PAGE_START
from m3rag.testing import FakeEncoder

TEXT = " ".join(f"word{i}" for i in range(120))


def _non_utf8_name(folder: Path) -> Path:
    path = folder / os.fsdecode(b"bad\xff.txt")
    try:
        path.write_text("hello", encoding="utf-8")
    except (OSError, UnicodeEncodeError):  # a file system that refuses such names
        pytest.skip("this file system does not store names that are not UTF-8")
    return path


def test_a_file_name_that_is_not_utf8_is_reported_and_skipped(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    bad = _non_utf8_name(docs)
    (docs / "good.txt").write_text("a good document", encoding="utf-8")
    [(doc, problem)] = list(read_file(bad, docs))
    assert doc is None and problem is not None
    assert "not valid UTF-8" in problem.reason
    str(problem).encode("utf-8")  # printable: the bad byte is escaped, not a lone surrogate
    with Collection.create(tmp_path / "idx", encoder=FakeEncoder()) as col:
        report = index_files(col, [docs])
        assert report.documents == 1 and col.ids_matching({"parent_id": "good.txt"})
        assert [p.path for p in report.problems] == [bad]


page_offsets_values = st.one_of(
    st.lists(st.integers(-3, 300), max_size=6),
    st.lists(st.integers(0, 300), max_size=6).map(sorted),
    st.lists(st.integers(0, 300), max_size=6).map(lambda o: tuple(sorted(o))),
    st.lists(st.one_of(st.integers(0, 9), st.text(max_size=2), st.floats(), st.booleans())),
    st.text(max_size=4),
    st.integers(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def _valid(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and all(type(o) is int and o >= 0 for o in value)
        and list(value) == sorted(value)
    )


@settings(max_examples=200, deadline=None)
@given(page_offsets_values)
def test_page_offsets_are_a_sorted_list_of_non_negative_ints(value: object) -> None:
    chunker = make_chunker(FakeEncoder().tokenizer, 512, chunk_tokens=32, overlap=4)
    doc = Document(TEXT, "p1", {"source": "recs.jsonl", PAGE_OFFSETS: value})
    chunks, problem = chunk_document(doc, chunker)
    if not _valid(value):
        assert chunks == [] and problem is not None
        assert problem.reason.startswith('p1: "page_offsets" must be a sorted list')
        return
    assert problem is None and chunks
    assert isinstance(value, (list, tuple))
    offsets = list(value)
    for chunk in chunks:
        assert PAGE_OFFSETS not in chunk.metadata
        if offsets:
            start, end = chunk.metadata["start"], chunk.metadata["end"]
            assert chunk.metadata[PAGE_START] == bisect.bisect_right(offsets, start)
            assert chunk.metadata[PAGE_END] == bisect.bisect_right(offsets, max(start, end - 1))


def test_a_record_with_bad_page_offsets_does_not_stop_the_run(tmp_path: Path) -> None:
    records = [
        {"id": "bad", "text": "x", "metadata": {"page_offsets": ["a"]}},
        {"id": "unsorted", "text": "x y", "metadata": {"page_offsets": [5, 0]}},
        {"id": "good", "text": "fine text", "metadata": {"page_offsets": [0, 5]}},
        {"id": "plain", "text": "more text"},
    ]
    path = tmp_path / "recs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    with Collection.create(tmp_path / "idx", encoder=FakeEncoder()) as col:
        report = index_files(col, [path])
        assert report.documents == 2
        assert sorted(str(p.reason).split(":")[0] for p in report.problems) == ["bad", "unsorted"]
        [good] = col.get(col.ids_matching({"parent_id": "good"}))
        assert (good.metadata[PAGE_START], good.metadata[PAGE_END]) == (1, 2)
