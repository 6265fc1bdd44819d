"""Values at the edges of what a collection stores: one property family per cause.

Vectors finite as float32 but not in the form stored (float16, bfloat16), huge lexical weights,
metadata that SQLite's JSON functions would read differently from Python (NUL, bools, ints past
64 bits), filter bounds past int64 or float, sizes given as bools, and paths where no folder
can be made. Every refusal is a typed m3rag error (or ``ValueError``) that changes nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from m3rag import (
    Collection,
    CollectionExistsError,
    CollectionNotFoundError,
    EmbeddingMismatchError,
    InvalidDocumentError,
    M3Output,
)
from m3rag.index import Filter
from m3rag.testing import random_outputs

FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
DIM, COLBERT_DIM, N = 16, 8, 12
Q_DENSE = np.linspace(-1, 1, DIM).astype(np.float32)


def _one(dense: float, colbert: float, weight: float = 0.1) -> M3Output:
    """One document's embeddings, every dense and ColBERT value as given."""
    return M3Output(
        np.full((1, DIM), dense, np.float32),
        [{5: weight, 6: 0.1}],
        [np.full((2, COLBERT_DIM), colbert, np.float32)],
        np.ones(1, np.int64),
        np.zeros(1, np.bool_),
    )


def _stored_finite(value: float, dtype: str) -> bool:
    """Whether ``value`` (a float32) is finite in a store of ``dtype``."""
    x = np.float32(value)
    if dtype == "bfloat16":
        import torch

        return bool(torch.tensor([float(x)], dtype=torch.float32).to(torch.bfloat16).isfinite())
    with np.errstate(over="ignore"):
        return bool(np.isfinite(x.astype(dtype)))


# -- vectors finite in the stored form -------------------------------------------------------

MAGNITUDES = st.one_of(
    st.sampled_from([1.0, 65504.0, 65519.0, 65520.0, 1e5, 3.38e38, 3.3961e38, 3.4e38]),
    st.floats(1.0, 3.4e38),
)


@pytest.mark.parametrize(
    ("dense_dtype", "colbert_dtype"),
    [("float16", "float16"), ("float32", "bfloat16"), ("float16", "int8")],
)
def test_vectors_must_be_finite_as_stored(
    tmp_path: Path, dense_dtype: str, colbert_dtype: str
) -> None:
    """A value that overflows the store's dtype is refused at add; what is kept searches well.

    One float16 row of infinities made the dense error bound NaN: every dense search answered
    nothing, for every document, until the collection was rebuilt.
    """
    col = Collection.create(
        tmp_path / "c",
        heads=("dense", "sparse", "colbert"),
        dim=DIM,
        colbert_dim=COLBERT_DIM,
        dense_dtype=dense_dtype,
        colbert_dtype=colbert_dtype,
    )
    good = random_outputs(N, dim=DIM, colbert_dim=COLBERT_DIM, seed=1)
    col.add([f"text {i}" for i in range(N)], ids=[f"d{i}" for i in range(N)], embeddings=good)
    col.commit()
    counter = iter(range(10**6))

    @FAST
    @given(
        magnitude=MAGNITUDES, sign=st.sampled_from([1.0, -1.0]), head=st.sampled_from(["d", "c"])
    )
    @example(magnitude=1e5, sign=1.0, head="d")
    @example(magnitude=1e5, sign=1.0, head="c")
    @example(magnitude=3.4e38, sign=-1.0, head="c")
    def check(magnitude: float, sign: float, head: str) -> None:
        value = sign * magnitude
        dense, colbert = (value, 0.5) if head == "d" else (0.5, value)
        doc_id = f"x{next(counter)}"
        before = col.count()
        dtype = dense_dtype if head == "d" else colbert_dtype
        # int8 keeps a float32 scale per row: any float32 fits
        fits = _stored_finite(value, "float32" if dtype == "int8" else dtype)
        if not fits:
            with pytest.raises(
                EmbeddingMismatchError, match="dense head" if head == "d" else "colbert head"
            ):
                col.add(["huge"], ids=[doc_id], embeddings=_one(dense, colbert))
            assert col.count() == before
            return
        col.add(["huge"], ids=[doc_id], embeddings=_one(dense, colbert))
        col.commit()
        # every other document is still found, with its finite score
        hits = col.search_dense(Q_DENSE, k=col.count())
        found = [i for i in hits.ids if i.startswith("d")]
        assert len(found) == N
        ordinary = hits.scores[[i.startswith("d") for i in hits.ids]]
        assert np.isfinite(ordinary).all()
        keys = col.search_bm25("text", k=N).keys
        assert np.isfinite(col.colbert_scores(np.ones((2, COLBERT_DIM)), keys)).all()

    check()
    reopened = Collection.open(tmp_path / "c", read_only=True)
    assert len([i for i in reopened.search_dense(Q_DENSE, k=100).ids if i.startswith("d")]) == N
    reopened.close()
    col.close()


def test_a_huge_query_on_a_float16_scan_is_exact(tmp_path: Path) -> None:
    """A query float16 cannot hold (1e5) is scanned in float32, not answered with nothing."""
    col = Collection.create(
        tmp_path / "c", heads=("dense",), dim=DIM, dense_dtype="float16", dense_scan=None
    )
    good = random_outputs(N, dim=DIM, seed=2)
    col.add(
        [f"t{i}" for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
        embeddings=M3Output.build(dense_vecs=good.dense_vecs),
    )
    col.commit()
    keys = np.arange(N, dtype=np.int64)

    @FAST
    @given(scale=st.floats(1e-3, 1e30), k=st.integers(1, N))
    @example(scale=1e5, k=3)
    def check(scale: float, k: int) -> None:
        q = Q_DENSE * np.float32(scale)
        exact = col.dense_scores(q, keys)
        want = np.lexsort((keys, -exact))[:k]
        hits = col.search_dense(q, k=k)
        assert hits.keys.tolist() == want.tolist()

    check()
    col.close()


def test_huge_lexical_weights_keep_lexical_search_exact(tmp_path: Path) -> None:
    """Weights past the 12-bit planes (~4.0) are clamped in tantivy and the bound covers it."""
    col = Collection.create(tmp_path / "c", heads=("sparse",), vocab_size=600)
    good = random_outputs(N, seed=3)
    col.add(
        [f"t{i}" for i in range(N)],
        ids=[f"d{i}" for i in range(N)],
        embeddings=M3Output.build(lexical_weights=good.lexical_weights),
    )
    col.commit()
    counter = iter(range(10**6))

    @FAST
    @given(
        weight=st.one_of(st.floats(4.0, 3.4e38), st.sampled_from([4.0, 1e6, 3.4e38])),
        token=st.integers(4, 30),
        query=st.dictionaries(st.integers(4, 30), st.floats(1e-3, 2.0), min_size=1, max_size=5),
        k=st.integers(1, 8),
    )
    def check(weight: float, token: int, query: dict[int, float], k: int) -> None:
        col.add(
            ["huge"],
            ids=[f"h{next(counter)}"],
            embeddings=M3Output.build(lexical_weights=[{token: weight, 5: 0.2}]),
        )
        col.commit()
        keys = np.arange(len(col.allowed()), dtype=np.int64)
        exact = col.lexical_scores(query, keys)
        order = [int(i) for i in np.lexsort((keys, -exact)) if exact[i] > 0][:k]
        assert col.search_lexical(query, k=k).keys.tolist() == order

    check()
    col.close()


# -- metadata as SQLite reads it -------------------------------------------------------------

TEXTS = st.text(
    st.characters(blacklist_categories=("Cs",), whitelist_characters="\x00\\\"'$."), max_size=5
)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e308, 5e-324]),
    TEXTS,
    st.sampled_from(["", "x", "x\x00y", "\x00", "1", "true", "é", "\u2028"]),
)
TOO_BIG = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**20, 10**400])
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.none())
FIELDS = st.sampled_from(["a", "b", 'q"t', "x.y"])


def _has(value: Any, bad: Any) -> bool:
    """Whether ``bad(leaf)`` holds for a leaf of ``value`` (or a key of a dict in it)."""
    if isinstance(value, dict):
        return any(bad(k) or _has(v, bad) for k, v in value.items())
    if isinstance(value, list):
        return any(_has(v, bad) for v in value)
    return bool(bad(value))


def _unfilterable(meta: dict[str, Any]) -> bool:
    def nul(v: Any) -> bool:
        return isinstance(v, str) and "\x00" in v

    def big(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63

    return _has(meta, nul) or _has(meta, big)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    return "number" if isinstance(v, (int, float)) else type(v).__name__


@st.composite
def _filters(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(FIELDS)
    op = draw(st.sampled_from(["eq", "$eq", "$in", "$gt", "$gte", "$lt", "$lte"]))
    if op == "eq":
        return {field: draw(SCALARS)}
    if op == "$in":
        return {field: {op: draw(st.lists(SCALARS, max_size=3))}}
    if op == "$eq":
        return {field: {op: draw(SCALARS)}}
    number = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False))
    return {field: {op: draw(number.filter(lambda v: not math.isinf(v)))}}


def test_sql_filters_agree_with_filter_matches(tmp_path: Path) -> None:
    """What SQLite selects is what `Filter.matches` says, on any metadata a write accepts.

    SQLite's JSON functions cut strings at NUL (``"x\\x00y"`` matched a filter on ``"x"``) and
    read ``true`` as 1: such strings, and ints past 64 bits, are refused at write.
    """
    col = Collection.create(tmp_path / "c", heads=())
    stored: dict[str, dict[str, Any]] = {}
    counter = iter(range(10**6))
    metas = st.dictionaries(FIELDS, st.one_of(VALUES, TOO_BIG, st.dictionaries(TEXTS, SCALARS)))

    @settings(max_examples=60, deadline=None)
    @given(batch=st.lists(metas, min_size=1, max_size=4), filters=st.lists(_filters(), max_size=4))
    @example(batch=[{"a": "x\x00y"}], filters=[{"a": "x"}])
    @example(batch=[{"a": True}, {"a": 1}, {"a": 1.0}], filters=[{"a": True}, {"a": 1}])
    @example(batch=[{"a": {"k\x00": 1}}], filters=[])
    @example(batch=[{"a": 2**64}], filters=[{"a": {"$gt": 0}}])
    def check(batch: list[dict[str, Any]], filters: list[dict[str, Any]]) -> None:
        ids = [f"m{next(counter)}" for _ in batch]
        before = col.count()
        if any(_unfilterable(m) for m in batch):
            with pytest.raises(InvalidDocumentError, match=r"NUL|64-bit"):
                col.add(["text"] * len(batch), ids=ids, metadata=batch)
            assert col.count() == before
        else:
            col.add(["text"] * len(batch), ids=ids, metadata=batch)
            col.commit()
            stored.update(zip(ids, batch, strict=True))
        for spec in filters:
            flt = Filter.parse(spec)
            assert flt is not None
            want = {i for i, meta in stored.items() if flt.matches(meta)}
            assert set(col.ids_matching(spec)) == want, spec
        for field in ("a", 'q"t'):
            held = [m[field] for m in stored.values() if field in m]
            values = col.metadata_values(field)
            scalars = [v for v in held if not isinstance(v, (list, dict))]
            assert set(scalars) <= values
            for v in values:  # a bool comes back a bool, an int an int: 1 is not true
                if not isinstance(v, str):  # (lists and dicts come back as their JSON text)
                    assert any(_kind(h) == _kind(v) and h == v for h in scalars), (field, v)

    check()
    col.close()


BOUNDS = st.one_of(
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**20, 10**400, -(10**400)]),
    st.floats(),
)


def test_filter_bounds_of_any_size_are_refused_or_answered(tmp_path: Path) -> None:
    """A bound past int64 or float is a ValueError naming the field, not OverflowError."""
    col = Collection.create(tmp_path / "c", heads=())
    col.add(["a", "b"], ids=["a", "b"], metadata=[{"i": 2**63 - 1}, {"i": -(2**63)}])
    col.commit()

    @FAST
    @given(bound=BOUNDS, op=st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$eq", "$in"]))
    @example(bound=10**400, op="$gt")
    @example(bound=2**63, op="$gte")
    @example(bound=10**20, op="$lt")
    def check(bound: Any, op: str) -> None:
        spec = {"i": {op: [bound] if op == "$in" else bound}}
        fits = not (isinstance(bound, float) and not math.isfinite(bound)) and not (
            isinstance(bound, int) and not -(2**63) <= bound < 2**63
        )
        if not fits:
            with pytest.raises(ValueError, match="'i'"):
                col.ids_matching(spec)
            return
        flt = Filter.parse(spec)
        assert flt is not None
        docs = {"a": {"i": 2**63 - 1}, "b": {"i": -(2**63)}}
        assert set(col.ids_matching(spec)) == {i for i, m in docs.items() if flt.matches(m)}

    check()
    col.close()


# -- create(): sizes and paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("heads", "sizes"),
    [
        (("dense",), {"dim": True}),
        (("colbert",), {"colbert_dim": True}),
        (("dense", "colbert"), {"dim": 4, "colbert_dim": False}),
        (("dense",), {"dim": 4.0}),
    ],
)
def test_sizes_must_be_ints_not_bools(tmp_path: Path, heads: Any, sizes: dict[str, Any]) -> None:
    """``dim=True`` made a collection every later open refused as damaged."""
    name = next(iter(k for k, v in sizes.items() if type(v) is not int))
    with pytest.raises(ValueError, match=f"{name} .*must be a positive int"):
        Collection.create(tmp_path / "c", heads=heads, **sizes)
    assert not (tmp_path / "c").exists()


def test_paths_no_folder_can_be_made_at(tmp_path: Path) -> None:
    """create() and open() name the path in an m3rag error, never a raw OSError or ValueError."""
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    cases: dict[str, tuple[Path | str, type[Exception]]] = {
        "a file": (tmp_path / "file", CollectionExistsError),
        "a symlink loop": (tmp_path / "loop", CollectionExistsError),
        "a dangling symlink": (tmp_path / "dangling", CollectionExistsError),
        "under a file": (tmp_path / "file" / "sub", CollectionNotFoundError),
        "under a dangling symlink": (tmp_path / "dangling" / "sub", CollectionNotFoundError),
        "a name too long": (tmp_path / ("n" * 300), CollectionNotFoundError),
        "a NUL": (f"{tmp_path}/nu\x00l", CollectionNotFoundError),
    }
    for case, (path, error) in cases.items():
        with pytest.raises(error) as info:
            Collection.create(path, heads=())
        assert str(Path(path).name)[:20] in str(info.value) or "\\x00" in str(info.value), case
        with pytest.raises(CollectionNotFoundError):
            Collection.open(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "loop"]
