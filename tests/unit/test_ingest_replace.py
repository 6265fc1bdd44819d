"""Re-indexing a changed document: the new version replaces the old, or the old one stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from m3rag import Collection, index_files
from m3rag.errors import InvalidDocumentError
from m3rag.rollup import PARENT_ID
from m3rag.testing import FakeEncoder

LONG = " ".join(f"Sentence {i} about the harbour and its ships." for i in range(40))


def chunk_texts(col: Collection, parent: str) -> list[str]:
    ids = sorted(col.ids_matching({PARENT_ID: parent}))
    return [d.text for d in col.get(ids)]


def refuse_marked(col: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collection refuses any write holding a text with REFUSE, as a store limit would."""
    for name in ("add", "upsert"):
        original = getattr(col, name)

        def guarded(docs: Any, *a: Any, _original: Any = original, **kw: Any) -> Any:
            if any("REFUSE" in getattr(d, "text", d) for d in docs):
                msg = "refused by the store"
                raise InvalidDocumentError(msg)
            return _original(docs, *a, **kw)

        monkeypatch.setattr(col, name, guarded)


@pytest.mark.parametrize("new_length", ["shorter", "longer"])
def test_a_refused_new_version_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_length: str
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(LONG, encoding="utf-8")
    (docs / "b.md").write_text("A short note on lighthouses.", encoding="utf-8")
    with Collection.create(tmp_path / "idx", encoder=FakeEncoder()) as col:
        first = index_files(col, [docs], chunk_tokens=32)
        assert first.documents == 2
        before = chunk_texts(col, "a.md")
        assert len(before) > 2

        new = "REFUSE this one. " + ("tiny." if new_length == "shorter" else LONG + LONG)
        (docs / "a.md").write_text(new, encoding="utf-8")
        (docs / "b.md").write_text("A changed note on lighthouses.", encoding="utf-8")
        refuse_marked(col, monkeypatch)
        second = index_files(col, [docs], chunk_tokens=32)
        assert (second.documents, second.replaced) == (1, 1)  # only b.md
        assert [p.reason for p in second.problems] == [
            "a.md: not indexed, its old version kept (refused by the store)"
        ]
        assert chunk_texts(col, "a.md") == before  # committed, and unchanged
        assert chunk_texts(col, "b.md") == ["A changed note on lighthouses."]
        monkeypatch.undo()

        # accepted the next time: the new chunks replace every old one
        third = index_files(col, [docs], chunk_tokens=32)
        assert (third.documents, third.replaced, third.skipped) == (1, 1, 1)
        after = chunk_texts(col, "a.md")
        assert col.count() == len(after) + 1
    with Collection.create(tmp_path / "fresh", encoder=FakeEncoder()) as fresh:
        index_files(fresh, [docs], chunk_tokens=32)
        assert after == chunk_texts(fresh, "a.md")  # exactly the new chunks, no old leftovers
        assert len(after) != len(before)
