"""Hostile input to the Collection API (issue #14): one property family per cause.

Every test asserts the typed error *and* that nothing changed: staged state, committed state
(reopened from disk) and the manifest.
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from m3rag import (
    Collection,
    CollectionClosedError,
    CommitError,
    Document,
    EmbeddingMismatchError,
    IndexFormatError,
    InvalidDocumentError,
    M3Output,
)
from m3rag.index import collection as collection_module
from m3rag.index._files import Column
from m3rag.index.docstore import DocStore
from m3rag.index.lexical import LexicalIndex
from m3rag.testing import random_outputs

VOCAB = 600  # random_outputs draws token ids in [4, 504)
N = 6
FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
Q_DENSE = np.linspace(-1, 1, 16).astype(np.float32)
Q_LEX = {4: 0.3, 5: 0.2, 9: 0.1}


def _make(path: Path, n: int = N) -> Collection:
    col = Collection.create(
        path, heads=("dense", "sparse", "colbert"), dim=16, colbert_dim=8, vocab_size=VOCAB
    )
    col.add(
        [f"harbour text number {i}" for i in range(n)],
        ids=[f"d{i}" for i in range(n)],
        metadata=[{"i": i, "lang": "en" if i % 2 else "fr"} for i in range(n)],
        embeddings=random_outputs(n, seed=1),
    )
    col.commit()
    col.delete("d0")  # a tombstone, so every store has committed rows
    col.commit()
    return col


def _snapshot(col: Collection) -> dict[str, Any]:
    """Everything a caller can observe of the committed state."""
    ids = col.ids()
    return {
        "count": col.count(),
        "generation": col.generation,
        "ids": ids,
        "docs": col.get(ids),
        "bm25": list(col.search_bm25("harbour number", k=50)),
        "dense": list(col.search_dense(Q_DENSE, k=50)),
        "lexical": list(col.search_lexical(Q_LEX, k=50)),
        "manifest": col.manifest,
    }


def _reopened(path: Path) -> dict[str, Any]:
    col = Collection.open(path, read_only=True)
    try:
        return _snapshot(col)
    finally:
        col.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "c"
    _make(path).close()
    return path


def _copy(template: Path, tmp: Path, name: str) -> Path:
    target = tmp / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    return target


# -- 1. k ------------------------------------------------------------------------------------

BAD_K = st.one_of(
    st.integers(max_value=0),
    st.booleans(),
    st.floats(allow_nan=True),
    st.none(),
    st.text(max_size=3),
    st.just(10.0),
)
GOOD_K = st.integers(min_value=1, max_value=sys.maxsize)


def test_k_of_any_size_returns_at_most_the_live_documents(template: Path, tmp_path: Path) -> None:
    col = Collection.open(_copy(template, tmp_path, "c"))
    live = col.count()
    searches: list[Callable[[Any], Any]] = [
        lambda k: col.search_bm25("harbour", k=k),
        lambda k: col.search_dense(Q_DENSE, k=k),
        lambda k: col.search_lexical({4: 1.0, 5: 1.0, 6: 1.0, 7: 1.0}, k=k),
        lambda k: col.search_bm25("harbour", k=k, filter={"lang": "en"}),
        lambda k: col.search_dense(Q_DENSE, k=k, filter={"lang": "en"}),
    ]
    full = [len(search(live)) for search in searches]

    @FAST
    @given(k=GOOD_K, which=st.integers(0, len(searches) - 1))
    @example(k=10**9, which=0)
    @example(k=sys.maxsize, which=0)
    @example(k=sys.maxsize, which=1)
    @example(k=sys.maxsize, which=2)
    @example(k=2**62, which=3)
    def check(k: int, which: int) -> None:
        hits = searches[which](k)
        assert len(hits) == min(k, full[which])
        assert len(hits) <= live

    @FAST
    @given(k=BAD_K, which=st.integers(0, len(searches) - 1))
    def refuse(k: Any, which: int) -> None:
        with pytest.raises(ValueError, match="k must be a positive int"):
            searches[which](k)

    check()
    refuse()
    col.close()


def test_k_beyond_an_empty_collection(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=("dense", "sparse"), dim=4)
    assert len(col.search_bm25("harbour", k=sys.maxsize)) == 0
    assert len(col.search_dense(np.ones(4), k=sys.maxsize)) == 0
    assert len(col.search_lexical({1: 1.0}, k=sys.maxsize)) == 0
    col.close()


# -- 2. precomputed embeddings ---------------------------------------------------------------

BAD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 1e39])


@st.composite
def _bad_batch(draw: st.DrawFn) -> tuple[M3Output, int, str]:
    """A batch of valid embeddings with one bad value: (output, bad document, bad head)."""
    n = draw(st.integers(1, 4))
    j = draw(st.integers(0, n - 1))
    good = random_outputs(n, seed=draw(st.integers(0, 50)))
    dense = np.array(good.dense_vecs, dtype=np.float64)
    colbert = [np.array(m, dtype=np.float64) for m in good.colbert_vecs or []]
    lexical = [dict(d) for d in good.lexical_weights or []]
    head = draw(st.sampled_from(["dense", "colbert", "sparse-id", "sparse-weight", "shape"]))
    if head == "dense":
        dense[j, draw(st.integers(0, 15))] = draw(BAD_FLOATS)
    elif head == "colbert":
        m = colbert[j]
        m[draw(st.integers(0, m.shape[0] - 1)), draw(st.integers(0, 7))] = draw(BAD_FLOATS)
    elif head == "shape":
        colbert[j] = np.ones((2, draw(st.sampled_from([1, 7, 9]))), np.float32)
    elif head == "sparse-id":
        lexical[j][draw(st.sampled_from([-1, -(2**31), VOCAB, 2**31, 2**40]))] = 0.1
    else:
        token = draw(st.sampled_from(sorted(lexical[j])))
        lexical[j][token] = draw(st.sampled_from([math.nan, math.inf, -0.5, -1e-9, 1e39]))
    out = M3Output(
        dense,  # type: ignore[arg-type]  # float64 on purpose: 1e39 is not a float32
        lexical,
        colbert,
        good.token_counts.copy(),
        good.truncated.copy(),
    )
    return out, j, "colbert" if head == "shape" else head.split("-")[0]


def test_every_head_of_precomputed_embeddings_is_checked(template: Path, tmp_path: Path) -> None:
    col = Collection.open(_copy(template, tmp_path, "c"))
    col.add(["staged"], ids=["s"], embeddings=random_outputs(1, seed=9))
    before = col.count()

    @FAST
    @given(batch=_bad_batch(), upsert=st.booleans())
    def check(batch: tuple[M3Output, int, str], upsert: bool) -> None:
        output, j, head = batch
        ids = [f"n{i}" for i in range(len(output))]
        write = col.upsert if upsert else col.add
        with pytest.raises(EmbeddingMismatchError) as info:
            write([f"text {i}" for i in ids], ids=ids, embeddings=output)
        message = str(info.value)
        assert f"document {j} (id 'n{j}')" in message and f"{head} head" in message
        assert col.count() == before

    check()
    committed = col.commit()
    assert sorted(col.ids()) == sorted([*_reopened(col.path)["ids"]]) and "s" in col.ids()
    assert committed == 3
    # what the checks let through stays searchable
    assert len(col.search_dense(Q_DENSE, k=100)) == col.count()
    col.close()


# -- 3. queries ------------------------------------------------------------------------------


def test_queries_are_checked_on_every_path(template: Path, tmp_path: Path) -> None:
    col = Collection.open(_copy(template, tmp_path, "c"), read_only=True)
    keys = col.search_dense(Q_DENSE, k=3).keys

    @FAST
    @given(pos=st.integers(0, 15), value=BAD_FLOATS)
    def dense(pos: int, value: float) -> None:
        q = Q_DENSE.astype(np.float64)
        q[pos] = value
        with pytest.raises(ValueError, match="NaN or infinity"):
            col.search_dense(q, k=3)
        with pytest.raises(ValueError, match="NaN or infinity"):
            col.dense_scores(q, keys)

    @FAST
    @given(
        token=st.one_of(
            st.integers(max_value=-1), st.integers(min_value=VOCAB), st.just(2**40), st.just(-1)
        )
    )
    def lexical_ids(token: int) -> None:
        for call in (col.search_lexical, lambda q: col.lexical_scores(q, keys)):
            with pytest.raises(ValueError, match="outside the vocabulary"):
                call({**Q_LEX, token: 0.5})

    @FAST
    @given(weight=st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1e39]))
    def lexical_weights(weight: float) -> None:
        for call in (col.search_lexical, lambda q: col.lexical_scores(q, keys)):
            with pytest.raises(ValueError, match="finite non-negative"):
                call({**Q_LEX, 7: weight})

    @FAST
    @given(rows=st.integers(1, 4), value=BAD_FLOATS)
    def colbert(rows: int, value: float) -> None:
        q = np.ones((rows, 8))
        q[rows - 1, 3] = value
        with pytest.raises(ValueError, match="NaN or infinity"):
            col.colbert_scores(q, keys)

    dense()
    lexical_ids()
    lexical_weights()
    colbert()
    for bad_keys in (np.array([-1]), np.array([10**6]), np.array([0.5]), np.array([[0]])):
        with pytest.raises(ValueError, match="keys"):
            col.dense_scores(Q_DENSE, bad_keys)
    with pytest.raises(ValueError, match="shape"):
        col.colbert_scores(np.ones(8), keys)
    with pytest.raises(TypeError):
        col.search_lexical([(4, 0.3)], k=3)  # type: ignore[arg-type]
    # valid queries still answer
    assert len(col.search_lexical(Q_LEX, k=3)) > 0
    assert np.isfinite(col.colbert_scores(np.ones((2, 8)), keys)).all()
    col.close()


def test_without_a_recorded_vocabulary_huge_ids_allocate_nothing(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=("sparse",))
    col.add(["harbour"], ids=["a"], embeddings=M3Output.build(lexical_weights=[{7: 0.5}]))
    col.commit()
    keys = col.search_bm25("harbour").keys
    # int32 is the store's bound; a table sized by the query id would take 8 GB
    assert col.lexical_scores({2**31 - 2: 1.0, 7: 2.0}, keys).tolist() == [1.0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        col.lexical_scores({2**31: 1.0}, keys)
    with pytest.raises(EmbeddingMismatchError, match="outside the vocabulary"):
        col.add(["x"], ids=["x"], embeddings=M3Output.build(lexical_weights=[{2**31: 0.5}]))
    with pytest.raises(ValueError, match="surrogate"):
        col.search_bm25("harbour \ud800")
    col.close()


# -- 4. damaged or missing stores ------------------------------------------------------------

STORES = [
    "docs.sqlite",
    "tantivy",
    "tantivy/meta.json",
    "dense.float32",
    "colbert.float16",
    "colbert.offsets",
    "lexical.ids",
    "lexical.weights",
    "lexical.offsets",
    "tombstones.int64",
]
REQUIRED = [
    "format",
    "format_version",
    "generation",
    "next_key",
    "lengths",
    "heads",
    "dim",
    "dense_dtype",
    "colbert_dim",
    "colbert_dtype",
    "lexical",
]


def test_damaged_stores_are_reported_naming_the_file(template: Path, tmp_path: Path) -> None:
    names = sorted({p.name for p in template.iterdir()})
    assert {"dense.float32", "colbert.float16", "lexical.ids", "tombstones.int64"} <= set(names)

    @settings(max_examples=40, deadline=None)
    @given(
        store=st.sampled_from(STORES),
        damage=st.sampled_from(["delete", "truncate", "empty"]),
        read_only=st.booleans(),
    )
    def check(store: str, damage: str, read_only: bool) -> None:
        path = _copy(template, tmp_path, "damaged")
        target = path / store
        if target.is_dir():
            shutil.rmtree(target)
        elif damage == "delete":
            target.unlink()
        else:
            size = target.stat().st_size
            with target.open("r+b") as fh:
                fh.truncate(0 if damage == "empty" else size // 2)
        with pytest.raises(IndexFormatError) as info:
            Collection.open(path, read_only=read_only).close()
        named = store.split("/")[0]
        assert named in str(info.value)
        # reported, not repaired: the next open fails the same way
        with pytest.raises(IndexFormatError):
            Collection.open(path, read_only=True).close()

    check()


@pytest.mark.parametrize("field", REQUIRED)
def test_manifest_missing_a_field_names_it(template: Path, tmp_path: Path, field: str) -> None:
    path = _copy(template, tmp_path, "c")
    manifest = json.loads((path / "manifest.json").read_text())
    for broken in ({k: v for k, v in manifest.items() if k != field}, {**manifest, field: "x"}):
        (path / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(IndexFormatError, match=r"manifest\.json") as info:
            Collection.open(path, read_only=True)
        assert repr(field) in str(info.value)


def test_read_only_open_creates_and_modifies_nothing(template: Path, tmp_path: Path) -> None:
    path = _copy(template, tmp_path, "c")

    def files() -> dict[str, tuple[int, int]]:
        return {
            str(f.relative_to(path)): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(path.rglob("*"))
        }

    before = files()
    col = Collection.open(path, read_only=True)
    _snapshot(col)
    col.colbert_scores(np.ones((2, 8)), col.search_dense(Q_DENSE, k=3).keys)
    col.close()
    assert files() == before


def test_read_only_file_system(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root ignores permission bits, so the folder's unwritability is simulated."""
    path = _copy(template, tmp_path, "c")
    expected = _reopened(path)
    real_access = __import__("os").access
    from m3rag.index import docstore

    def access(target: Any, mode: int) -> bool:
        return False if Path(target) == path and mode & 2 else real_access(target, mode)

    monkeypatch.setattr(docstore.os, "access", access)
    before = sorted(p.name for p in path.rglob("*"))
    assert _reopened(path) == expected
    assert sorted(p.name for p in path.rglob("*")) == before


def test_refresh_onto_a_damaged_commit_keeps_the_snapshot(template: Path, tmp_path: Path) -> None:
    path = _copy(template, tmp_path, "c")
    reader = Collection.open(path, read_only=True)
    seen = _snapshot(reader)
    writer = Collection.open(path)
    writer.add(["harbour more"], ids=["m"], embeddings=random_outputs(1, seed=8))
    writer.commit()
    writer.close()
    (path / "lexical.offsets").unlink()
    with pytest.raises(IndexFormatError, match=r"lexical\.offsets"):
        reader.refresh()
    assert _snapshot(reader) == seen
    reader.close()


def _reads(col: Collection) -> dict[str, Callable[[], Any]]:
    """Every read path a damaged store can fail on."""
    keys = np.arange(len(col.allowed()), dtype=np.int64)
    return {
        "bm25": lambda: col.search_bm25("harbour number", k=3),
        "bm25_scores": lambda: col.bm25_scores("harbour", keys),
        "lexical": lambda: col.search_lexical(Q_LEX, k=3),
        "lexical_scores": lambda: col.lexical_scores(Q_LEX, keys),
        "dense": lambda: col.search_dense(Q_DENSE, k=3),
        "colbert": lambda: col.colbert_scores(np.ones((2, 8)), keys),
        "colbert_vecs": lambda: col.colbert_vecs(keys),
        "get": lambda: col.get(col.ids()),
    }


def test_damaged_tantivy_segments_are_reported(template: Path, tmp_path: Path) -> None:
    """A damaged segment file is an IndexFormatError on every path, never tantivy's own error."""
    suffixes = sorted({p.suffix for p in (template / "tantivy").iterdir()} - {".json", ""})
    assert ".pos" in suffixes

    @settings(max_examples=30, deadline=None)
    @given(
        suffix=st.sampled_from(suffixes),
        damage=st.sampled_from(["delete", "empty", "garble"]),
        read_only=st.booleans(),
    )
    @example(suffix=".pos", damage="delete", read_only=True)
    @example(suffix=".pos", damage="delete", read_only=False)
    def check(suffix: str, damage: str, read_only: bool) -> None:
        path = _copy(template, tmp_path, "damaged")
        for target in (path / "tantivy").glob(f"*{suffix}"):
            data = target.read_bytes()
            if damage == "delete":
                target.unlink()
            elif damage == "empty":
                target.write_bytes(b"")
            else:
                target.write_bytes(bytes(b ^ 0xFF for b in data))
        opened: list[Collection] = []
        error = _error_of(lambda: opened.append(Collection.open(path, read_only=read_only)))
        assert error is None or _reported(error), repr(error)
        for col in opened:
            for name, call in _reads(col).items():
                error = _error_of(call)
                assert error is None or _reported(error), f"{name}: {error!r}"
            col.close()

    check()


def _error_of(call: Callable[[], Any]) -> Exception | None:
    try:
        call()
    except Exception as exc:  # the caller asserts which
        return exc
    return None


def _reported(error: Exception) -> bool:
    """Whether ``error`` reports tantivy damage as m3rag does (not tantivy's own ValueError)."""
    return isinstance(error, IndexFormatError) and "tantivy" in str(error)


def _damage_offsets(path: Path, store: str, row: int, column: int, value: int) -> None:
    data = np.fromfile(path / store, dtype=np.int64).reshape(-1, 2)
    data[row % len(data), column] = value
    data.tofile(path / store)


OFFSET_VALUES = st.one_of(
    st.sampled_from([-1, 1, 10**6, 2**62, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
)


def test_damaged_offsets_are_reported_naming_the_file(template: Path, tmp_path: Path) -> None:
    """Any changed offset is damage: they tile the data in order, so each one is checkable."""

    @settings(max_examples=40, deadline=None)
    @given(
        store=st.sampled_from(["colbert.offsets", "lexical.offsets"]),
        row=st.integers(0, N - 1),
        column=st.integers(0, 1),
        value=OFFSET_VALUES,
        read_only=st.booleans(),
    )
    @example(store="colbert.offsets", row=1, column=0, value=10**6, read_only=True)
    @example(store="lexical.offsets", row=5, column=1, value=10**6, read_only=True)
    def check(store: str, row: int, column: int, value: int, read_only: bool) -> None:
        path = _copy(template, tmp_path, "damaged")
        before = np.fromfile(path / store, dtype=np.int64).reshape(-1, 2)
        if before[row, column] == value:
            return
        _damage_offsets(path, store, row, column, value)
        with pytest.raises(IndexFormatError, match=re.escape(store)):
            Collection.open(path, read_only=read_only).close()

    check()


def test_damaged_tombstones_are_reported(template: Path, tmp_path: Path) -> None:
    """A tombstone outside the committed keys, or repeated, is damage (never a raw IndexError).

    The file has no checksum: a tombstone changed into another live key cannot be told apart
    from a deletion, and is not asserted here.
    """

    @settings(max_examples=30, deadline=None)
    @given(
        value=st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=N),
            st.sampled_from([-1, N, 10**6, 2**63 - 1, -(2**63)]),
        ),
        duplicate=st.booleans(),
        read_only=st.booleans(),
    )
    @example(value=10**6, duplicate=False, read_only=True)
    @example(value=-1, duplicate=False, read_only=True)
    @example(value=0, duplicate=True, read_only=True)
    def check(value: int, duplicate: bool, read_only: bool) -> None:
        value = max(-(2**63), min(value, 2**63 - 1))
        path = _copy(template, tmp_path, "damaged")
        tomb = np.fromfile(path / "tombstones.int64", dtype=np.int64)
        assert tomb.tolist() == [0]  # d0, deleted by _make
        # the manifest counts one tombstone: a duplicate takes a second, counted, row
        if duplicate:
            manifest = json.loads((path / "manifest.json").read_text())
            manifest["lengths"]["tombstones"] = 2
            (path / "manifest.json").write_text(json.dumps(manifest))
            np.array([0, 0], dtype=np.int64).tofile(path / "tombstones.int64")
        else:
            np.array([value], dtype=np.int64).tofile(path / "tombstones.int64")
        with pytest.raises(IndexFormatError, match=r"tombstones\.int64"):
            Collection.open(path, read_only=read_only).close()

    check()


def test_refresh_checks_the_offsets_of_new_commits(template: Path, tmp_path: Path) -> None:
    """A reader checks the rows each refresh adds (and only those: the files are append-only)."""
    path = _copy(template, tmp_path, "c")
    reader = Collection.open(path, read_only=True)
    seen = _snapshot(reader)
    writer = Collection.open(path)
    writer.add(["harbour more", "harbour again"], ids=["m", "n"], embeddings=random_outputs(2))
    writer.commit()
    writer.close()
    _damage_offsets(path, "lexical.offsets", N + 1, 0, 3)  # the last row, just committed
    with pytest.raises(IndexFormatError, match=r"lexical\.offsets.*document key 7"):
        reader.refresh()
    assert _snapshot(reader) == seen
    reader.close()


# -- 5. atomic add() and commit() ------------------------------------------------------------


@st.composite
def _hostile_item(draw: st.DrawFn) -> tuple[dict[str, Any], type[Exception]]:
    """Keyword changes that make one document of a batch bad, and the error expected."""
    kind = draw(
        st.sampled_from(
            [
                "surrogate-text",
                "empty-text",
                "surrogate-id",
                "int-id",
                "list-metadata",
                "deep-metadata",
                "surrogate-metadata",
                "surrogate-key",
                "int-key",
                "nan-metadata",
            ]
        )
    )
    depth = draw(st.sampled_from([33, 100, 5000]))
    deep: Any = 1
    for _ in range(depth):
        deep = {"x": deep}
    return {
        "surrogate-text": ({"text": "harbour \ud800"}, InvalidDocumentError),
        "empty-text": ({"text": " \n"}, InvalidDocumentError),
        "surrogate-id": ({"id": "id\udfff"}, InvalidDocumentError),
        "int-id": ({"id": 7}, TypeError),
        "list-metadata": ({"metadata": ["xy"]}, TypeError),
        "deep-metadata": ({"metadata": deep}, InvalidDocumentError),
        "surrogate-metadata": ({"metadata": {"a": "\ud800"}}, InvalidDocumentError),
        "surrogate-key": ({"metadata": {"\udc00": 1}}, InvalidDocumentError),
        "int-key": ({"metadata": {"a": {3: 1}}}, InvalidDocumentError),
        "nan-metadata": ({"metadata": {"a": [math.nan]}}, InvalidDocumentError),
    }[kind]


def test_a_failing_add_stages_nothing(template: Path, tmp_path: Path) -> None:
    col = Collection.open(_copy(template, tmp_path, "c"))
    col.add(["staged one"], ids=["s"], metadata={"k": 1}, embeddings=random_outputs(1, seed=4))
    staged = col.count()

    @FAST
    @given(n=st.integers(1, 4), data=st.data(), bad=_hostile_item(), upsert=st.booleans())
    def check(
        n: int, data: st.DataObject, bad: tuple[dict[str, Any], type[Exception]], upsert: bool
    ) -> None:
        j = data.draw(st.integers(0, n - 1))
        texts: list[Any] = [f"new text {i}" for i in range(n)]
        ids: list[Any] = [f"n{i}" for i in range(n)]
        metas: list[Any] = [{"i": i} for i in range(n)]
        change, error = bad
        texts[j] = change.get("text", texts[j])
        ids[j] = change.get("id", ids[j])
        metas[j] = change.get("metadata", metas[j])
        with pytest.raises(error) as info:
            (col.upsert if upsert else col.add)(
                texts, ids=ids, metadata=metas, embeddings=random_outputs(n, seed=5)
            )
        assert str(j) in str(info.value)
        assert col.count() == staged

    check()
    col.commit()
    after = _reopened(col.path)
    assert "s" in after["ids"] and after["count"] == staged
    assert col.get("s")[0] == Document("staged one", "s", {"k": 1})
    col.close()


FAULTS: dict[str, tuple[Any, str]] = {
    "column append": (Column, "append"),
    "sqlite insert": (DocStore, "insert"),
    "tantivy add": (LexicalIndex, "add"),
    "tantivy commit": (LexicalIndex, "commit"),
    "manifest write": (collection_module, "atomic_write_json"),
}


def test_a_failed_commit_keeps_the_staged_changes_and_retries(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @settings(max_examples=15, deadline=None)
    @given(fault=st.sampled_from(sorted(FAULTS)), n=st.integers(1, 3), delete=st.booleans())
    def check(fault: str, n: int, delete: bool) -> None:
        path = _copy(template, tmp_path, "c")
        before = _reopened(path)
        col = Collection.open(path)
        col.add(
            [f"harbour staged {i}" for i in range(n)],
            ids=[f"s{i}" for i in range(n)],
            embeddings=random_outputs(n, seed=6),
        )
        if delete:
            col.delete("d1")
        staged = col.count()
        owner, name = FAULTS[fault]
        real = getattr(owner, name)

        def full(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(owner, name, full)
            with pytest.raises(CommitError) as info:
                col.commit()
        assert getattr(owner, name) is real
        message = str(info.value)
        assert f"{n + delete} staged change(s) are kept" in message
        assert "free disk space" in message and "commit() again" in message
        assert info.value.errno == errno.ENOSPC
        assert isinstance(info.value, OSError)
        assert col.count() == staged
        assert _reopened(path) == before  # the committed state did not move
        assert col.commit() == before["generation"] + 1  # the retry succeeds
        after = _reopened(path)
        assert after["count"] == staged
        assert {f"s{i}" for i in range(n)} <= set(after["ids"])
        assert ("d1" in after["ids"]) is not delete
        col.close()

    check()


# -- metadata keys, depth and shape ----------------------------------------------------------

KEYS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6)


def test_filters_on_any_metadata_key(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=())
    counter = iter(range(10**6))

    @FAST
    @given(key=KEYS, values=st.lists(st.integers(0, 3), min_size=1, max_size=4))
    @example(key='a"b', values=[1, 2])
    @example(key="\\", values=[1])
    @example(key="a\nb", values=[1])
    @example(key="$.x[0]", values=[1])
    @example(key="\x00", values=[0])
    @example(key="a\x00", values=[0])
    def check(key: str, values: list[int]) -> None:
        tag = f"t{next(counter)}"
        ids = [f"{tag}-{i}" for i in range(len(values))]
        if "\x00" in key:  # SQLite's JSON functions cut names at NUL: refused both ways
            with pytest.raises(InvalidDocumentError, match="NUL"):
                col.add(["x"], ids=ids[:1], metadata=[{key: 1}])
            with pytest.raises(ValueError, match="NUL"):
                col.ids_matching({key: 1})
            return
        col.add(
            [f"text {i}" for i in ids],
            ids=ids,
            metadata=[{key: v, "tag": tag} for v in values],
        )
        col.commit()
        want = {i for i, v in zip(ids, values, strict=True) if v == values[0]}
        assert set(col.ids_matching({key: values[0], "tag": tag})) == want
        assert set(col.ids_matching({key: {"$gte": values[0]}, "tag": tag})) == {
            i for i, v in zip(ids, values, strict=True) if v >= values[0]
        }
        assert set(values) <= col.metadata_values(key)

    check()
    assert col.metadata_values("\ud800") == set()
    with pytest.raises(ValueError, match="fewer"):
        col.ids_matching({"tag": {"$in": list(range(20_000))}})
    col.close()


def test_metadata_depth_limit_and_non_dict_entries(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=())
    ok: Any = 1
    for _ in range(collection_module.MAX_METADATA_DEPTH - 1):
        ok = {"x": ok}
    col.add(["deep but fine"], ids=["fine"], metadata=[{"x": ok}])
    with pytest.raises(TypeError, match=r"metadata\[1\]"):
        col.add(["a", "b"], ids=["a", "b"], metadata=[{}, ["xy"]])  # type: ignore[list-item]
    with pytest.raises(InvalidDocumentError, match="nested more than 32"):
        col.add(["a"], ids=["a"], metadata=[{"x": [ok]}])
    assert col.count() == 1
    col.commit()
    assert col.get("fine")[0].metadata == {"x": ok}
    col.close()


# -- closed ----------------------------------------------------------------------------------

CALLS: dict[str, Callable[[Collection], Any]] = {
    "ids": lambda c: c.ids(),
    "count": lambda c: c.count(),
    "get": lambda c: c.get("d1"),
    "metadata_values": lambda c: c.metadata_values("i"),
    "ids_matching": lambda c: c.ids_matching({"i": 1}),
    "has_content": lambda c: c.has_content(["x"]),
    "documents": lambda c: c.documents(np.array([1])),
    "allowed": lambda c: c.allowed(),
    "search_dense": lambda c: c.search_dense(Q_DENSE),
    "search_lexical": lambda c: c.search_lexical(Q_LEX),
    "search_bm25": lambda c: c.search_bm25("harbour"),
    "dense_scores": lambda c: c.dense_scores(Q_DENSE, np.array([1])),
    "lexical_scores": lambda c: c.lexical_scores(Q_LEX, np.array([1])),
    "colbert_scores": lambda c: c.colbert_scores(np.ones((1, 8)), np.array([1])),
    "bm25_scores": lambda c: c.bm25_scores("harbour", np.array([1])),
    "colbert_vecs": lambda c: c.colbert_vecs(np.array([1])),
    "manifest": lambda c: c.manifest,
    "generation": lambda c: c.generation,
    "refresh": lambda c: c.refresh(),
    "add": lambda c: c.add(["x"], embeddings=random_outputs(1)),
    "upsert": lambda c: c.upsert(["x"], embeddings=random_outputs(1)),
    "delete": lambda c: c.delete("d1"),
    "commit": lambda c: c.commit(),
    "rollback": lambda c: c.rollback(),
}


def test_every_method_refuses_after_close(template: Path, tmp_path: Path) -> None:
    col = Collection.open(_copy(template, tmp_path, "c"))
    for call in CALLS.values():
        call(col)  # each works while open
    col.rollback()
    col.close()
    col.close()  # idempotent
    assert "closed" in repr(col)
    for name, call in CALLS.items():
        with pytest.raises(CollectionClosedError):
            call(col)
            pytest.fail(f"{name} answered after close()")
