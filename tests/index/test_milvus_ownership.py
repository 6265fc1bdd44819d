"""A MilvusStore drops and creates only its own collections, and a failed create leaves nothing.

The ColBERT side collection is ``<name>_colbert``: a store without the ColBERT head has none, so
a collection of that name belongs to someone else; a store with it marks its side at creation
(``m3rag.side_of``) and drops only a side so marked (or, unmarked, of the side's schema).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from m3rag.errors import CollectionExistsError, RemoteStoreError
from m3rag.index.milvus import MilvusStore
from m3rag.index.milvus.colbert import SIDE_KEY
from m3rag.testing import FakeEncoder

pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder(dim=16, colbert_dim=8)


def _name() -> str:
    return f"own_{uuid.uuid4().hex[:10]}"


def _cleanup(client: Any, *names: str) -> None:
    for name in names:
        if client.has_collection(name):
            client.drop_collection(name)


def test_drop_leaves_a_collection_that_only_shares_the_side_name(
    milvus_uri: str, encoder: FakeEncoder, raw_milvus_client: Any
) -> None:
    base = _name()
    other = MilvusStore(milvus_uri, f"{base}_colbert", encoder=encoder, create=True)
    other.add(["precious data"], ids=["p1"])
    other.commit()
    try:
        plain = MilvusStore(
            milvus_uri, base, encoder=encoder, create=True, heads=["dense", "sparse"]
        )
        plain.drop()
        assert not raw_milvus_client.has_collection(base)
        assert raw_milvus_client.has_collection(f"{base}_colbert")
        assert other.count() == 1 and other.get("p1")[0].text == "precious data"
    finally:
        other.drop()


def test_drop_removes_its_own_side_and_leaves_a_side_marked_for_another(
    milvus_uri: str, encoder: FakeEncoder, raw_milvus_client: Any
) -> None:
    mine = MilvusStore(milvus_uri, _name(), encoder=encoder, create=True)
    assert raw_milvus_client.describe_collection(mine.side)["properties"][SIDE_KEY] == mine.name
    mine.drop()
    assert not raw_milvus_client.has_collection(mine.name)
    assert not raw_milvus_client.has_collection(mine.side)

    store = MilvusStore(milvus_uri, _name(), encoder=encoder, create=True)
    side = store.side
    raw_milvus_client.alter_collection_properties(side, {SIDE_KEY: "someone_else"})
    try:
        store.drop()
        assert not raw_milvus_client.has_collection(store.name)
        assert raw_milvus_client.has_collection(side)
    finally:
        _cleanup(raw_milvus_client, side)


def test_a_failed_create_leaves_nothing_and_a_retry_works(
    milvus_uri: str, encoder: FakeEncoder, raw_milvus_client: Any
) -> None:
    name = _name()
    with pytest.raises(RemoteStoreError, match="tokenizer"):
        MilvusStore(milvus_uri, name, encoder=encoder, create=True, analyzer={"tokenizer": "nope"})
    assert not raw_milvus_client.has_collection(name)
    assert not raw_milvus_client.has_collection(f"{name}_colbert")
    store = MilvusStore(milvus_uri, name, encoder=encoder, create=True)
    assert store.heads == ("dense", "sparse", "colbert")
    store.drop()


def test_create_refuses_a_side_name_another_collection_holds(
    milvus_uri: str, encoder: FakeEncoder, raw_milvus_client: Any
) -> None:
    name = _name()
    raw_milvus_client.create_collection(f"{name}_colbert", dimension=2)
    try:
        with pytest.raises(CollectionExistsError, match="choose another collection_name"):
            MilvusStore(milvus_uri, name, encoder=encoder, create=True)
        assert not raw_milvus_client.has_collection(name)
        assert raw_milvus_client.has_collection(f"{name}_colbert")  # untouched
        # without the ColBERT head no side collection is needed: the name is free
        plain = MilvusStore(milvus_uri, name, encoder=encoder, create=True, heads=["dense"])
        plain.drop()
        assert raw_milvus_client.has_collection(f"{name}_colbert")
    finally:
        _cleanup(raw_milvus_client, name, f"{name}_colbert")


def test_create_replaces_a_leftover_side_of_the_same_name(
    milvus_uri: str, encoder: FakeEncoder, raw_milvus_client: Any
) -> None:
    store = MilvusStore(milvus_uri, _name(), encoder=encoder, create=True)
    store.add(["old"], ids=["a"])
    store.commit()
    store.close()
    raw_milvus_client.drop_collection(store.name)  # a drop cut short: the side is left
    again = MilvusStore(milvus_uri, store.name, encoder=encoder, create=True)
    try:
        assert again.count() == 0
        again.add(["new"], ids=["a"])
        again.commit()
        hits = again.search_lexical(encoder.encode_queries(["new"]).lexical_weights[0], k=1)  # type: ignore[index]
        assert again.colbert_vecs(hits.keys)[0].shape[0] > 0
    finally:
        again.drop()
