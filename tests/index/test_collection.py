"""Collection API: lifecycle, bad input (typed errors, index unchanged), locking, snapshots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from m3rag import (
    Collection,
    CollectionExistsError,
    CollectionLockedError,
    CollectionNotFoundError,
    Document,
    DuplicateIdError,
    EmbeddingMismatchError,
    IndexFormatError,
    InvalidDocumentError,
    M3Output,
    ReadOnlyError,
    UnknownIdError,
)
from m3rag.testing import random_outputs


def _make(path: Path, n: int = 10, **kw) -> Collection:  # type: ignore[no-untyped-def]
    col = Collection.create(path, heads=("dense", "sparse", "colbert"), dim=16, colbert_dim=8, **kw)
    col.add(
        [f"text {i}" for i in range(n)],
        ids=[f"d{i}" for i in range(n)],
        embeddings=random_outputs(n, seed=1),
    )
    col.commit()
    return col


def _state(col: Collection) -> tuple[int, int, list[str]]:
    return col.count(), col.generation, sorted(col.ids())


def test_create_open_reopen_and_context_manager(tmp_path: Path) -> None:
    with _make(tmp_path / "c") as col:
        assert col.count() == 10
        col.add(Document("another", "x", {"lang": "en"}), embeddings=random_outputs(1, seed=2))
        assert col.count() == 11  # staged adds count for the writer
    col = Collection.open(tmp_path / "c", read_only=True)
    assert col.count() == 11 and col.generation == 2
    assert col.get("x")[0] == Document("another", "x", {"lang": "en"})
    assert "read-only" in repr(col)
    col.close()
    with pytest.raises(CollectionExistsError):
        Collection.create(tmp_path / "c", heads=("dense",), dim=16)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(CollectionExistsError, match="not empty"):
        Collection.create(tmp_path / "busy", heads=("dense",), dim=16)
    with pytest.raises(CollectionNotFoundError):
        Collection.open(tmp_path / "nothing")


def test_exception_inside_context_does_not_commit(tmp_path: Path) -> None:
    _make(tmp_path / "c").close()
    with pytest.raises(RuntimeError, match="boom"), Collection.open(tmp_path / "c") as col:
        col.add(["staged"], ids=["s"], embeddings=random_outputs(1, seed=3))
        raise RuntimeError("boom")
    col = Collection.open(tmp_path / "c", read_only=True)
    assert col.count() == 10
    with pytest.raises(UnknownIdError):
        col.get("s")
    col.close()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (
            lambda c: c.add(["a", "b"], ids=["n1", "n1"], embeddings=random_outputs(2)),
            DuplicateIdError,
        ),
        (lambda c: c.add(["a"], ids=["d3"], embeddings=random_outputs(1)), DuplicateIdError),
        (lambda c: c.add(["   "], ids=["n2"], embeddings=random_outputs(1)), InvalidDocumentError),
        (lambda c: c.add([""], embeddings=random_outputs(1)), InvalidDocumentError),
        (
            lambda c: c.add(["a"], metadata=[{"x": object()}], embeddings=random_outputs(1)),
            InvalidDocumentError,
        ),
        (
            lambda c: c.add(["a"], metadata=[{"x": math.nan}], embeddings=random_outputs(1)),
            InvalidDocumentError,
        ),
        (lambda c: c.add(["a", "b"], embeddings=random_outputs(3)), EmbeddingMismatchError),
        (lambda c: c.add(["a"], embeddings=random_outputs(1, dim=12)), EmbeddingMismatchError),
        (
            lambda c: c.add(["a"], embeddings=random_outputs(1, colbert_dim=4)),
            EmbeddingMismatchError,
        ),
        (
            lambda c: c.add(
                ["a"], embeddings=M3Output.build(dense_vecs=np.ones((1, 16), np.float32))
            ),
            EmbeddingMismatchError,
        ),
        (lambda c: c.add(["a"], embeddings="not an output"), TypeError),
        (lambda c: c.add([3], embeddings=random_outputs(1)), TypeError),
        (lambda c: c.add(["a"], ids=[7], embeddings=random_outputs(1)), TypeError),
        (lambda c: c.add(["a"], ids=["p", "q"], embeddings=random_outputs(1)), ValueError),
        (lambda c: c.add(["a"]), ValueError),  # no encoder and no embeddings
        (lambda c: c.delete(["d1", "missing"]), UnknownIdError),
        (lambda c: c.get(["d1", "missing"]), UnknownIdError),
        (lambda c: c.search_dense(np.ones(16), k=0), ValueError),
        (lambda c: c.search_dense(np.ones(15), k=3), ValueError),
        (lambda c: c.search_dense(np.ones(16), k=3, filter={"x": {"$regex": "a"}}), ValueError),
        (lambda c: c.search_bm25("q", k=3, filter="lang=en"), TypeError),
    ],
)
def test_bad_input_is_a_typed_error_and_changes_nothing(tmp_path: Path, call, error) -> None:  # type: ignore[no-untyped-def]
    col = _make(tmp_path / "c")
    before = _state(col)
    with pytest.raises(error):
        call(col)
    col.commit()
    assert _state(col) == before
    col.close()
    col = Collection.open(tmp_path / "c", read_only=True)
    assert _state(col) == before
    col.close()


def test_unknown_id_message_lists_the_ids(tmp_path: Path) -> None:
    col = _make(tmp_path / "c")
    with pytest.raises(UnknownIdError, match=r"\['nope', 'nada'\]"):
        col.delete(["d1", "nope", "nada"])
    with pytest.raises(KeyError):
        col.get(["nope"])
    col.close()


def test_upsert_replaces_and_delete_removes(tmp_path: Path) -> None:
    col = _make(tmp_path / "c")
    new = random_outputs(1, seed=42)
    col.upsert(["replaced"], ids=["d2"], metadata={"v": 2}, embeddings=new)
    col.delete("d3")
    col.commit()
    assert col.count() == 9
    assert col.get("d2")[0].text == "replaced"
    hits = col.search_dense(new.dense_vecs[0], k=1)  # type: ignore[index]
    assert hits.ids == ["d2"]
    assert "d3" not in col.ids()
    col.add(["d3 is back"], ids=["d3"], embeddings=random_outputs(1, seed=5))
    col.commit()
    assert col.get("d3")[0].text == "d3 is back"
    col.close()


def test_one_writer_at_a_time_and_readers_alongside(tmp_path: Path) -> None:
    col = _make(tmp_path / "c")
    with pytest.raises(CollectionLockedError, match="read_only=True"):
        Collection.open(tmp_path / "c")
    reader = Collection.open(tmp_path / "c", read_only=True)
    with pytest.raises(ReadOnlyError):
        reader.add(["x"], embeddings=random_outputs(1))
    with pytest.raises(ReadOnlyError):
        reader.commit()
    q = random_outputs(1, seed=9)
    before = list(reader.search_dense(q.dense_vecs[0], k=20))  # type: ignore[index]
    # the writer commits more documents and deletes some; the reader's snapshot holds
    col.add(
        [f"more {i}" for i in range(5)],
        ids=[f"m{i}" for i in range(5)],
        embeddings=random_outputs(5, seed=10),
    )
    col.delete(["d0", "d1"])
    col.commit()
    assert reader.count() == 10
    assert list(reader.search_dense(q.dense_vecs[0], k=20)) == before
    assert reader.get(["d0"])[0].text == "text 0"
    assert reader.refresh() is True
    assert reader.count() == 13
    assert reader.refresh() is False
    col.close()
    reader.close()
    again = Collection.open(tmp_path / "c")  # the lock was released
    again.close()


def test_newer_format_and_damaged_manifest_are_clear_errors(tmp_path: Path) -> None:
    _make(tmp_path / "c").close()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="upgrade m3rag"):
        Collection.open(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{ not json")
    with pytest.raises(IndexFormatError, match="damaged"):
        Collection.open(tmp_path / "c")


def test_no_pickle_on_disk(tmp_path: Path) -> None:
    _make(tmp_path / "c").close()
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file():
            assert not f.read_bytes().startswith(b"\x80\x04"), f  # pickle protocol 4 header
            assert f.suffix not in {".pkl", ".pickle", ".pt"}


def test_half_written_commit_is_invisible_and_cut_off(tmp_path: Path) -> None:
    col = _make(tmp_path / "c")
    # simulate a crash after the stores were appended but before the manifest was replaced
    out = random_outputs(3, seed=6)
    col.add(["x", "y", "z"], ids=["x", "y", "z"], embeddings=out)
    manifest_before = (tmp_path / "c" / "manifest.json").read_bytes()
    col.commit()
    (tmp_path / "c" / "manifest.json").write_bytes(manifest_before)
    # as if the process died: its locks go with it
    col._tantivy.close()
    col._docs.close()
    col._lock.release()  # type: ignore[union-attr]
    reader = Collection.open(tmp_path / "c", read_only=True)
    assert reader.count() == 10
    assert "x" not in reader.ids()
    assert len(reader.search_bm25("x y z", k=10)) == 0 or all(
        i.startswith("d") for i in reader.search_bm25("x y z", k=10).ids
    )
    reader.close()
    writer = Collection.open(tmp_path / "c")  # recovery cuts the stores back
    assert writer.count() == 10
    dense = tmp_path / "c" / "dense.float32"
    assert dense.stat().st_size == 10 * 16 * 4
    writer.add(["x"], ids=["x"], embeddings=random_outputs(1, seed=7))
    writer.commit()
    assert writer.get("x")[0].text == "x"
    writer.close()


def test_with_a_real_encoder(tiny_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from m3rag import EncoderMismatchError

    texts = [
        "BGE M3 is an embedding model.",
        "北京是中华人民共和国的首都。",
        "東京は日本の首都です。",
    ]
    with Collection.create(tmp_path / "c", encoder=tiny_encoder) as col:
        col.add(
            texts, ids=["en", "zh", "ja"], metadata=[{"lang": "en"}, {"lang": "zh"}, {"lang": "ja"}]
        )
    col = Collection.open(tmp_path / "c", encoder=tiny_encoder, read_only=True)
    q = tiny_encoder.encode_queries(["中华人民共和国的首都"])
    assert col.search_dense(q.dense_vecs[0], k=3).ids[0] in {"en", "zh", "ja"}
    assert col.search_bm25("中华人民共和国的首都", k=1).ids == ["zh"]
    assert col.search_bm25("首都", k=3, filter={"lang": "ja"}).ids == ["ja"]
    lex = col.search_lexical(q.lexical_weights[0], k=3)
    assert len(lex) >= 1
    assert col.has_content(texts[:1], [{"lang": "en"}]) == [True]
    assert col.has_content(texts[:1], [{"lang": "de"}]) == [False]
    col.close()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["encoder"]["tokenizer_sha256"] == tiny_encoder.fingerprint()["tokenizer_sha256"]
    manifest["encoder"]["tokenizer_sha256"] = "0" * 64
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EncoderMismatchError, match="tokenizer_sha256"):
        Collection.open(tmp_path / "c", encoder=tiny_encoder)


def test_bm25_analyzer_splits_cjk_and_stems_english(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=("dense",), dim=16)
    tokens = col._tantivy.analyze("北京是中国的首都 Running models, 東京タワー", ["en"])
    assert "en:北京是中国的首都" not in tokens
    assert tokens[:7] == [
        "en:北京",
        "en:京是",
        "en:是中",
        "en:中国",
        "en:国的",
        "en:的首",
        "en:首都",
    ]
    assert "en:run" in tokens and "en:model" in tokens
    col.close()


def test_bm25_scores_are_not_shifted_by_a_key_restriction(tmp_path: Path) -> None:
    """Restricting to a key set (a filter, or rescoring given keys) leaves BM25 scores as is."""
    col = Collection.create(tmp_path / "c", heads=())
    texts = ["the river flows", "a river and a lake", "mountains"]
    col.add(texts, ids=["a", "b", "c"], metadata=[{"x": 1}, {"x": 1}, {"x": 2}])
    col.commit()
    hits = col.search_bm25("river", k=3)
    filtered = col.search_bm25("river", k=3, filter={"x": 1})
    rescored = col.bm25_scores("river", np.array([0, 1, 2]))
    assert filtered.scores.tolist() == hits.scores.tolist()
    assert rescored.tolist() == pytest.approx([*hits.scores.tolist(), 0.0])
    col.close()


def test_has_metadata_sees_only_live_documents(tmp_path: Path) -> None:
    from m3rag import CollectionClosedError

    col = Collection.create(tmp_path / "c", heads=())
    assert not col.has_metadata("parent_id")
    col.add(["a chunk", "a document"], ids=["p#0", "d"], metadata=[{"parent_id": "p"}, {}])
    assert not col.has_metadata("parent_id")  # staged, not committed
    col.commit()
    assert col.has_metadata("parent_id") and not col.has_metadata("lang")
    assert col.has_metadata("parent_id") == bool(col.metadata_values("parent_id"))
    col.delete(["p#0"])
    col.commit()
    assert not col.has_metadata("parent_id")
    with pytest.raises(TypeError):
        col.has_metadata("")
    col.close()
    with pytest.raises(CollectionClosedError):
        col.has_metadata("parent_id")


@pytest.mark.parametrize("deleted", [3, 200])
def test_bm25_skips_deleted_documents_tantivy_still_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleted: int
) -> None:
    """tantivy drops deleted documents best effort: the top k live ones come back regardless."""
    col = Collection.create(tmp_path / "c", heads=())
    texts = [" ".join(["apple"] * (1 + i % 7) + ["pear"] * (i % 3)) for i in range(300)]
    col.add(texts, ids=[f"d{i}" for i in range(300)])
    col.commit()
    reference = list(col.search_bm25("apple pear", k=300))
    monkeypatch.setattr(col._tantivy, "delete_keys", lambda keys: None)  # the drop fails
    gone = [doc_id for doc_id, _ in reference[:deleted]]
    col.delete(gone)
    col.commit()
    assert col._snap.num_docs - col._snap.live == deleted  # tantivy still holds them
    for k in (1, 10, 50):
        hits = list(col.search_bm25("apple pear", k=k))
        assert hits == reference[deleted : deleted + k]
    col.close()
