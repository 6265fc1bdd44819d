"""Full reads (ids, ids_matching, metadata_values) page safely whatever the ids hold.

A page holds 1,000 rows; the next one asks for the ids after the last. pymilvus's
``query_iterator`` wrote that id raw into the expression, so a quote or a backslash in the id
that ends a page broke the read (or, like ``x" or id != "``, restarted it forever). Hostile ids
are put exactly at the first two page boundaries here, and every id must come back once.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from m3rag.index.milvus import MilvusStore
from m3rag.index.milvus._limits import PAGE
from m3rag.types import M3Output

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
pytest.importorskip("pymilvus")

BASE = [f"k{i:04d}" for i in range(2 * PAGE + 100)]
# an id "k0998<suffix>" sorts right after k0998: it is the 1,000th id, the first page's last;
# "k1997<suffix>" is then the 2,000th, the second page's last
FIRST, SECOND = "k0998", "k1997"


def _dense(n: int) -> M3Output:
    return M3Output.build(dense_vecs=np.ones((n, 2), dtype=np.float32))


@pytest.fixture(scope="module")
def big(milvus_uri: str) -> Iterator[MilvusStore]:
    name = f"pages_{uuid.uuid4().hex[:8]}"
    store = MilvusStore(milvus_uri, name, heads=["dense"], dim=2, create=True)
    for start in range(0, len(BASE), 500):
        part = BASE[start : start + 500]
        store.add(["x"] * len(part), ids=part, metadata={"p": "v"}, embeddings=_dense(len(part)))
    store.commit()
    yield store
    store.drop()


def _check(store: MilvusStore, suffixes: tuple[str, str]) -> None:
    hostile = [FIRST + suffixes[0], SECOND + suffixes[1]]
    store.add(["x", "x"], ids=hostile, metadata={"p": "w"}, embeddings=_dense(2))
    store.commit()
    try:
        everyone = sorted([*BASE, *hostile])
        assert everyone[PAGE - 1] == hostile[0] and everyone[2 * PAGE - 1] == hostile[1]
        # a read that restarts would never end: a bound on the pages turns that into a failure
        rows = itertools.islice(store._iterate("", ["id"]), len(everyone) + 1)
        assert Counter(str(r["id"]) for r in rows) == Counter(everyone)
        assert store.ids() == everyone  # each once, in code point order
        matching = store.ids_matching({"p": {"$in": ["v", "w"]}})
        assert Counter(matching) == Counter(everyone)
        assert sorted(store.ids_matching({"p": "w"})) == sorted(hostile)
        assert store.metadata_values("p") == {"v", "w"}
    finally:
        store.delete(hostile)
        store.commit()


@pytest.mark.parametrize(
    "suffixes",
    [('"x', "\\x"), ('" or id != "', "\\"), ("'", '"'), ("\n\t\r", '\\\\"'), ("é😀", " ")],
)
def test_hostile_ids_at_page_boundaries(big: MilvusStore, suffixes: tuple[str, str]) -> None:
    _check(big, suffixes)


def test_hostile_ids_at_page_boundaries_hypothesis(big: MilvusStore) -> None:
    awkward = st.sampled_from(['"', "\\", "'", " ", "\n", "\t", "\r", "=", "!", "(", ")", "]"])
    letters = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    suffix = st.lists(st.one_of(awkward, letters), min_size=1, max_size=12).map("".join)

    @hypothesis.settings(max_examples=20, deadline=None, database=None)
    @hypothesis.given(st.tuples(suffix, suffix))
    def check(suffixes: tuple[str, str]) -> None:
        _check(big, suffixes)

    check()
