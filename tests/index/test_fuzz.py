"""A fuzz harness of the public Collection API: hostile values mixed with valid ones.

A hypothesis state machine adds, upserts, deletes, commits, rolls back, reopens, reads and
searches, with ids, texts, metadata, embeddings, ``k`` and queries drawn from both valid and
hostile values. After every step:

* a call the model says is valid succeeds, and one it says is invalid raises a documented
  error (an m3rag error, ``ValueError`` or ``TypeError``), never anything else;
* the collection matches a plain in-memory model: ``count()`` and ``get()`` the writer's
  staged view, ``ids()`` and the searches the committed one.

The default suite runs a small budget; ``scripts/fuzz`` runs the same machine for longer
(``M3RAG_FUZZ_EXAMPLES``, ``M3RAG_FUZZ_MINUTES``).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from m3rag import Collection, CommitError, Document, M3Output, M3RagError
from m3rag.index import Filter
from m3rag.index._files import Column
from m3rag.index.docstore import DocStore
from m3rag.index.lexical import LexicalIndex
from m3rag.testing import random_outputs

EXAMPLES = int(os.environ.get("M3RAG_FUZZ_EXAMPLES", "12"))
STEPS = int(os.environ.get("M3RAG_FUZZ_STEPS", "25"))
MINUTES = float(os.environ.get("M3RAG_FUZZ_MINUTES", "0"))
DOCUMENTED = (M3RagError, ValueError, TypeError)
DIM, COLBERT_DIM, VOCAB = 8, 4, 100
Q_DENSE = np.linspace(-1, 1, DIM).astype(np.float32)


class Bad:
    """A drawn value the model expects to be refused (with a short repr for the reports)."""

    def __init__(self, value: Any, label: str | None = None) -> None:
        self.value = value
        self.label = label or repr(value)

    def __repr__(self) -> str:
        return f"Bad({self.label})"


IDS = st.one_of(
    st.sampled_from(["a", "b", "c", "d", "e", "f", 'q"uote', "ü"]),
    st.sampled_from(["", "\ud800", 7, b"a"]).map(Bad),
)
TEXTS = st.one_of(
    st.sampled_from(["harbour lights", "harbour of the city", "北京 harbour", "harbour\x00zero"]),
    st.sampled_from(["", "   ", "harbour \udfff", 3]).map(Bad),
)


def _deep(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value  # type: ignore[no-any-return]


METADATA = st.one_of(
    st.fixed_dictionaries(
        {"lang": st.sampled_from(["en", "fr", 'we"ird']), "n": st.integers(-5, 5)},
        optional={'we"ird': st.sampled_from(["en", 1]), "\\": st.just(True)},
    ),
    st.sampled_from(
        [
            ["xy"],
            {"x": math.nan},
            {1: 2},
            {"\ud800": 1},
            {"s": "\udc00"},
            {"s": "x\x00y"},  # SQLite's JSON functions cut strings at NUL
            {"n": [2**64]},  # past the 64-bit ints filters compare
        ]
    ).map(Bad),
    st.sampled_from([40, 3000]).map(lambda depth: Bad(_deep(depth), f"nested {depth} deep")),
)
K = st.one_of(
    st.integers(1, 20),
    st.sampled_from([10**9, sys.maxsize, 2**62]),
    st.sampled_from([0, -1, True, 2.0, None, "3"]).map(Bad),
)
FILTERS = st.one_of(
    st.none(),
    st.sampled_from([{"lang": "en"}, {"n": {"$gte": 0}}, {"lang": {"$in": ["fr", 'we"ird']}}]),
    st.sampled_from(
        [
            {"lang": {"$regex": "e"}},
            {"n": {"$gt": math.nan}},
            {"n": 2**70},
            {"n": {}},
            {"lang": ["en"]},
            "lang=en",
            {"": 1},
            {"lang": "\ud800"},
        ]
    ).map(Bad),
)
EMBEDDING_FAULTS = st.sampled_from(
    ["none", "none", "none", "dense-nan", "colbert-inf", "token-negative", "token-huge", "weight"]
)


def _unwrap(value: Any) -> tuple[Any, bool]:
    """The drawn value and whether the model expects it to be accepted."""
    if isinstance(value, Bad):
        return value.value, False
    return value, True


def _embeddings(n: int, seed: int, fault: str) -> M3Output:
    good = random_outputs(n, dim=DIM, colbert_dim=COLBERT_DIM, vocab_size=50, seed=seed)
    dense = np.array(good.dense_vecs)
    colbert = [np.array(m) for m in good.colbert_vecs or []]
    lexical = [dict(d) for d in good.lexical_weights or []]
    if fault == "dense-nan":
        dense[n - 1, 0] = np.nan
    elif fault == "colbert-inf":
        colbert[0][0, 0] = np.inf
    elif fault == "token-negative":
        lexical[0][-3] = 0.2
    elif fault == "token-huge":
        lexical[n - 1][2**40] = 0.2
    elif fault == "weight":
        lexical[0][5] = -0.25
    return M3Output(dense, lexical, colbert, good.token_counts.copy(), good.truncated.copy())


class CollectionMachine(RuleBasedStateMachine):
    """The Collection against a dict model of its committed and staged documents."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="m3rag-fuzz-"))
        self.col = Collection.create(
            self.folder / "c",
            heads=("dense", "sparse", "colbert"),
            dim=DIM,
            colbert_dim=COLBERT_DIM,
            vocab_size=VOCAB,
        )
        self.committed: dict[str, tuple[str, dict[str, Any]]] = {}
        self.staged: dict[str, tuple[str, dict[str, Any]]] = {}

    def teardown(self) -> None:
        self.col.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _call(self, valid: bool, call: Any) -> Any:
        """Run ``call``; a valid call must succeed, an invalid one raise a documented error."""
        try:
            result = call()
        except DOCUMENTED as exc:
            if valid:
                msg = f"a valid call raised {exc!r}"
                raise AssertionError(msg) from exc
            return None
        if not valid:
            msg = f"an invalid call was accepted and returned {result!r}"
            raise AssertionError(msg)
        return result

    # -- writes ---------------------------------------------------------------------------

    @rule(
        items=st.lists(st.tuples(TEXTS, IDS, METADATA), min_size=1, max_size=3),
        fault=EMBEDDING_FAULTS,
        seed=st.integers(0, 1000),
        replace=st.booleans(),
        miscount=st.booleans(),
    )
    def write(self, items: list[Any], fault: str, seed: int, replace: bool, miscount: bool) -> None:
        texts, text_ok = zip(*(_unwrap(t) for t, _, _ in items), strict=True)
        ids, id_ok = zip(*(_unwrap(i) for _, i, _ in items), strict=True)
        metas, meta_ok = zip(*(_unwrap(m) for _, _, m in items), strict=True)
        valid = all(text_ok) and all(id_ok) and all(meta_ok)
        valid = valid and len(set(ids)) == len(ids) and fault == "none" and not miscount
        if not replace:
            valid = valid and not (set(ids) & set(self.staged))
        output = _embeddings(len(items) + miscount, seed, fault)
        write = self.col.upsert if replace else self.col.add
        before = self.col.count()
        result = self._call(
            valid,
            lambda: write(list(texts), ids=list(ids), metadata=list(metas), embeddings=output),
        )
        if valid:
            assert result == list(ids)
            for doc_id, text, meta in zip(ids, texts, metas, strict=True):
                self.staged[doc_id] = (text, dict(meta))
        else:
            assert self.col.count() == before

    @rule(fault=st.sampled_from(["column", "sqlite", "tantivy", "manifest"]))
    def failing_commit(self, fault: str) -> None:
        """A commit that fails part-way keeps the staged changes and commits nothing."""
        from m3rag.index import collection as module

        owner, name = {
            "column": (Column, "append"),
            "sqlite": (DocStore, "insert"),
            "tantivy": (LexicalIndex, "commit"),
            "manifest": (module, "atomic_write_json"),
        }[fault]
        real = getattr(owner, name)

        def full(*_: Any, **__: Any) -> None:
            raise OSError(28, "No space left on device")

        setattr(owner, name, full)
        try:
            try:
                self.col.commit()
            except CommitError as exc:
                failure: CommitError | None = exc
            else:
                failure = None
        finally:
            setattr(owner, name, real)
        # only a commit with nothing staged writes nothing, and so cannot fail
        assert failure is not None or self.staged == self.committed
        assert failure is None or "staged change(s) are kept" in str(failure)
        reader = Collection.open(self.folder / "c", read_only=True)
        assert sorted(reader.ids()) == sorted(self.committed)
        reader.close()

    @rule(texts=st.lists(TEXTS, min_size=1, max_size=3))
    def has_content(self, texts: list[Any]) -> None:
        values, _ = zip(*(_unwrap(t) for t in texts), strict=True)
        valid = all(isinstance(t, str) for t in values)
        found = self._call(valid, lambda: self.col.has_content(list(values)))
        if valid:
            stored = {text for text, meta in self.committed.values() if meta == {}}
            assert found == [t in stored for t in values]

    @rule(ids=st.lists(IDS, min_size=1, max_size=3))
    def delete(self, ids: list[Any]) -> None:
        values, ok = zip(*(_unwrap(i) for i in ids), strict=True)
        valid = all(ok) and all(i in self.staged for i in values)
        self._call(valid, lambda: self.col.delete(list(values)))
        if valid:
            for doc_id in values:
                self.staged.pop(doc_id, None)

    @rule()
    def commit(self) -> None:
        generation = self.col.generation
        changed = self.col.commit()
        assert changed >= generation
        self.committed = dict(self.staged)

    @rule()
    def rollback(self) -> None:
        self.col.rollback()
        self.staged = dict(self.committed)

    @rule(read_only=st.booleans())
    def reopen(self, read_only: bool) -> None:
        self.col.close()
        path = self.folder / "c"
        if read_only:  # a reader alongside, then the writer again
            reader = Collection.open(path, read_only=True)
            assert sorted(reader.ids()) == sorted(self.committed)
            reader.close()
        self.col = Collection.open(path)
        self.staged = dict(self.committed)

    # -- reads ----------------------------------------------------------------------------

    @rule(ids=st.lists(IDS, min_size=1, max_size=3))
    def get(self, ids: list[Any]) -> None:
        values, _ok = zip(*(_unwrap(i) for i in ids), strict=True)
        valid = all(isinstance(i, str) for i in values) and all(i in self.staged for i in values)
        docs = self._call(valid, lambda: self.col.get(list(values)))
        if valid:
            assert docs == [Document(*self.staged[i][:1], i, self.staged[i][1]) for i in values]

    @rule(k=K, path=st.sampled_from(["bm25", "dense", "lexical"]), spec=FILTERS)
    def search(self, k: Any, path: str, spec: Any) -> None:
        value, k_ok = _unwrap(k)
        flt, filter_ok = _unwrap(spec)
        valid = k_ok and filter_ok
        calls = {
            "bm25": lambda: self.col.search_bm25("harbour", k=value, filter=flt),
            "dense": lambda: self.col.search_dense(Q_DENSE, k=value, filter=flt),
            "lexical": lambda: self.col.search_lexical({5: 0.5, 6: 0.5}, k=value, filter=flt),
        }
        hits = self._call(valid, calls[path])
        if valid:
            parsed = Filter.parse(flt)
            allowed = {
                i
                for i, (_, meta) in self.committed.items()
                if parsed is None or parsed.matches(meta)
            }
            assert set(hits.ids) <= allowed and len(set(hits.ids)) == len(hits.ids)
            if path != "lexical":  # every text says harbour; every document has a vector
                assert len(hits) == min(value, len(allowed))

    @rule(
        query=st.sampled_from(["nan", "inf", "negative-id", "huge-id", "nan-weight", "ok"]),
        path=st.sampled_from(["dense", "lexical", "colbert"]),
    )
    def hostile_query(self, query: str, path: str) -> None:
        keys = np.arange(len(self.col.allowed()), dtype=np.int64)
        dense, colbert = Q_DENSE.copy(), np.ones((2, COLBERT_DIM), np.float32)
        lexical: dict[int, float] = {5: 0.5}
        if query in ("nan", "inf"):
            dense[1] = colbert[1, 1] = math.nan if query == "nan" else math.inf
            lexical[6] = math.nan if query == "nan" else math.inf
        elif query == "negative-id":
            lexical[-1] = 0.5
        elif query == "huge-id":
            lexical[2**40] = 0.5
        elif query == "nan-weight":
            lexical[5] = math.nan
        colbert_valid = query not in ("nan", "inf")
        calls = {
            "dense": (colbert_valid, lambda: self.col.dense_scores(dense, keys)),
            "lexical": (query == "ok", lambda: self.col.lexical_scores(lexical, keys)),
            "colbert": (colbert_valid, lambda: self.col.colbert_scores(colbert, keys)),
        }
        valid, call = calls[path]
        scores = self._call(valid, call)
        if valid:
            assert scores.shape == (len(keys),) and np.isfinite(scores).all()

    @rule(
        field=st.sampled_from(["lang", 'we"ird', "n", "\\"]),
        value=st.sampled_from(["en", 'we"ird', 1, True]),
    )
    def filter(self, field: str, value: Any) -> None:
        expected = {
            i
            for i, (_, meta) in self.committed.items()
            if field in meta
            and type(meta[field]) is type(value)  # JSON semantics: 1 is not "1"
            and meta[field] == value
        }
        assert set(self.col.ids_matching({field: value})) == expected

    # -- the model ------------------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        assert self.col.count() == len(self.staged)
        assert sorted(self.col.ids()) == sorted(self.committed)


def test_fuzz_the_collection_api() -> None:
    """Small budget in the default suite; ``scripts/fuzz`` raises it."""
    stop = time.monotonic() + 60 * MINUTES if MINUTES > 0 else None
    remaining = EXAMPLES
    while remaining > 0:
        batch = min(remaining, 50) if stop is not None else remaining
        run_state_machine_as_test(
            CollectionMachine,
            settings=settings(
                max_examples=batch,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
        remaining -= batch
        if stop is not None and time.monotonic() > stop:
            break
