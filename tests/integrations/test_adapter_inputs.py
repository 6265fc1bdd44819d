"""Families of bad arguments to the LangChain and LlamaIndex adapters: each is a named error.

A bare string where a list is expected (it used to be read character by character), items of the
wrong type, ``k``/``top_n`` that are not positive ints, ``None``, and plain-dict filters.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from m3rag_langchain import M3Embeddings, M3SparseEmbeddings, M3VectorStore
from m3rag_langchain import M3Reranker as LCReranker
from m3rag_langchain import M3Retriever as LCRetriever
from m3rag_llamaindex import M3Embedding, M3SparseEmbedding
from m3rag_llamaindex import M3Reranker as LIReranker
from m3rag_llamaindex import M3Retriever as LIRetriever

from m3rag import Collection, HybridRetriever, M3Encoder, Reranker

pytestmark = pytest.mark.model

FAMILY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TEXTS = ["Paris is the capital of France.", "Tokyo is the capital of Japan.", "Rain fell."]

# a batch item: a good string, or something of the wrong type
ITEM = st.one_of(
    st.text(min_size=1, max_size=10).filter(str.strip),
    st.integers(),
    st.none(),
    st.binary(max_size=3),
    st.lists(st.text(max_size=3), max_size=2),
)
NOT_POSITIVE_INT = st.one_of(
    st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=3), st.none()
)


def first_bad(items: list[object], ok: type) -> int | None:
    return next((i for i, x in enumerate(items) if not isinstance(x, ok)), None)


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker(tiny_reranker_path, device="cpu")


@pytest.fixture(scope="module")
def hybrid(tiny_encoder: M3Encoder, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    path = tmp_path_factory.mktemp("adapter-inputs") / "index"
    col = Collection.create(path, encoder=tiny_encoder)
    col.add(TEXTS, ids=["a", "b", "c"], metadata=[{"lang": "en", "n": i} for i in range(3)])
    col.commit()
    return HybridRetriever(col, recall_k=10)


# -- LangChain ---------------------------------------------------------------------------------


def test_langchain_bare_strings_are_refused_not_split(
    tiny_encoder: M3Encoder, tmp_path: Path
) -> None:
    store = M3VectorStore(Collection.create(tmp_path / "idx", encoder=tiny_encoder))
    with pytest.raises(TypeError, match="texts must be a list of strings, got a single str"):
        store.add_texts("xyz")
    with pytest.raises(TypeError, match="documents must be a list of Documents"):
        store.add_documents("xyz")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ids must be a list of strings"):
        store.delete("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ids must be a list of strings"):
        store.get_by_ids("abc")
    assert store.collection is not None and store.collection.count() == 0
    embeddings = M3Embeddings(encoder=tiny_encoder)
    with pytest.raises(TypeError, match="texts must be a list of strings"):
        embeddings.embed_documents("xyz")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a string, got int"):
        embeddings.embed_query(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single str"):
        M3VectorStore.from_texts("xyz", embeddings, path=tmp_path / "other")  # type: ignore[arg-type]
    assert not (tmp_path / "other").exists()  # refused before the collection was created


@FAMILY
@given(items=st.lists(ITEM, max_size=5))
def test_langchain_add_texts_names_the_bad_index(
    tiny_encoder: M3Encoder, items: list[object]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = M3VectorStore(Collection.create(Path(tmp) / "idx", encoder=tiny_encoder))
        bad = first_bad(items, str)
        if bad is None:
            ids = store.add_texts(items)  # type: ignore[arg-type]
            assert len(ids) == len(items)
            assert store.collection is not None and store.collection.count() == len(items)
        else:
            with pytest.raises(TypeError, match=rf"texts\[{bad}\] must be a string"):
                store.add_texts(items)  # type: ignore[arg-type]
            assert store.collection is not None and store.collection.count() == 0


@FAMILY
@given(
    items=st.lists(st.one_of(ITEM, ITEM.map(lambda t: Document(page_content=str(t)))), max_size=4)
)
def test_langchain_compressor_wants_documents(reranker: Reranker, items: list[object]) -> None:
    compressor = LCReranker(reranker=reranker, top_n=2)
    bad = first_bad(items, Document)
    if bad is None:
        assert len(compressor.compress_documents(items, "capital")) == min(2, len(items))  # type: ignore[arg-type]
    else:
        with pytest.raises(TypeError, match=rf"documents\[{bad}\].*Document"):
            compressor.compress_documents(items, "capital")  # type: ignore[arg-type]


@FAMILY
@given(value=NOT_POSITIVE_INT)
def test_langchain_k_and_top_n_must_be_positive_ints(
    reranker: Reranker, hybrid: HybridRetriever, value: object
) -> None:
    with pytest.raises(ValueError, match=r"top_n must be a positive int"):
        LCReranker(reranker=reranker, top_n=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"k must be a positive int"):
        LCRetriever(retriever=hybrid, k=value)  # type: ignore[arg-type]
    if value is not None:  # a per-call k=None means the retriever's own k
        with pytest.raises(ValueError, match=r"k must be a positive int"):
            LCRetriever(retriever=hybrid).invoke("capital", k=value)


# -- LlamaIndex --------------------------------------------------------------------------------


def test_llamaindex_plain_dict_filters(hybrid: HybridRetriever) -> None:
    nodes = LIRetriever(hybrid, similarity_top_k=3, filters={"n": {"$gte": 1}}).retrieve("capital")
    assert nodes and all(n.node.metadata["n"] >= 1 for n in nodes)
    mapped = MetadataFilters(
        filters=[MetadataFilter(key="n", value=1, operator=FilterOperator.GTE)]
    )
    same = LIRetriever(hybrid, similarity_top_k=3, filters=mapped).retrieve("capital")
    assert [n.node.id_ for n in same] == [n.node.id_ for n in nodes]
    with pytest.raises(ValueError, match=r"unknown filter operator '\$ne'"):
        LIRetriever(hybrid, filters={"lang": {"$ne": "en"}})
    with pytest.raises(TypeError, match="filters must be llama_index MetadataFilters or"):
        LIRetriever(hybrid, filters=[("lang", "en")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retriever must be an m3rag HybridRetriever"):
        LIRetriever("index-folder")  # type: ignore[arg-type]


OPERATORS = st.sampled_from(list(FilterOperator))
SUPPORTED = {"==", ">", ">=", "<", "<=", "in"}


@FAMILY
@given(op=OPERATORS, value=st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=2)))
def test_llamaindex_operators_map_or_raise(
    hybrid: HybridRetriever, op: FilterOperator, value: Any
) -> None:
    filters = MetadataFilters(filters=[MetadataFilter(key="n", value=value, operator=op)])
    range_op = op.value in {">", ">=", "<", "<="}
    fits = op.value in SUPPORTED and (
        (op.value == "in") == isinstance(value, list) and not (range_op and isinstance(value, list))
    )
    if not fits:
        with pytest.raises((ValueError, TypeError), match=re.escape(repr("n"))):
            LIRetriever(hybrid, filters=filters)
        return
    retriever = LIRetriever(hybrid, similarity_top_k=3, filters=filters)
    for node in retriever.retrieve("capital"):
        n = node.node.metadata["n"]
        assert {
            "==": n == value,
            ">": n > value if not isinstance(value, list) else False,
            ">=": n >= value if not isinstance(value, list) else False,
            "<": n < value if not isinstance(value, list) else False,
            "<=": n <= value if not isinstance(value, list) else False,
            "in": isinstance(value, list) and n in value,
        }[op.value]


@FAMILY
@given(
    items=st.lists(
        st.one_of(ITEM, ITEM.map(lambda t: NodeWithScore(node=TextNode(text=str(t))))), max_size=4
    )
)
def test_llamaindex_postprocessor_wants_nodes(reranker: Reranker, items: list[object]) -> None:
    pp = LIReranker(reranker=reranker, top_n=2)
    bad = first_bad(items, NodeWithScore)
    if bad is None:
        out = pp.postprocess_nodes(items, QueryBundle("capital"))  # type: ignore[arg-type]
        assert len(out) == min(2, len(items))
    else:
        with pytest.raises(TypeError, match=rf"nodes\[{bad}\].*NodeWithScore"):
            pp.postprocess_nodes(items, QueryBundle("capital"))  # type: ignore[arg-type]


@FAMILY
@given(value=NOT_POSITIVE_INT)
def test_llamaindex_top_k_and_top_n_must_be_positive_ints(
    reranker: Reranker, hybrid: HybridRetriever, value: object
) -> None:
    with pytest.raises(ValueError, match=r"top_n must be a positive int"):
        LIReranker(reranker=reranker, top_n=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"similarity_top_k must be a positive int"):
        LIRetriever(hybrid, similarity_top_k=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [M3Embedding, M3SparseEmbedding])
def test_llamaindex_embedding_batches_refuse_bare_strings(
    cls: type, tiny_encoder: M3Encoder
) -> None:
    embed = cls(encoder=tiny_encoder)
    with pytest.raises(TypeError, match="texts must be a list of strings, got a single str"):
        embed.get_text_embedding_batch("xyz")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, got NoneType"):
        embed.get_text_embedding_batch(["ok", None])
    assert len(embed.get_text_embedding_batch(["x", "y"])) == 2


# -- API keys and servers ------------------------------------------------------------------------

MARKER = "TOPSECRET"  # what a leaked key would show
# keys around the secret: sendable ones, and ones a header cannot carry (spaces, non-ASCII)
KEYS = st.builds(lambda a, b: f"{a}{MARKER}{b}", st.text(max_size=4), st.text(max_size=4))
BASE_URLS = st.one_of(
    st.sampled_from(
        ["localhost:8000", "127.0.0.1:8000", "ftp://127.0.0.1", "", "http://127.0.0.1:9"]
    ),
    st.text(max_size=12),
)
COUNTS = st.one_of(st.integers(-1, 3), st.none())


def _remote_adapters(url: str, key: str, n: int | None) -> list[tuple[str, Any]]:
    """Every adapter class that takes an API key, built with ``url``, ``key`` and count ``n``."""
    k = {} if n is None else {"k": n}
    top_n = {} if n is None else {"top_n": n}
    top_k = {} if n is None else {"similarity_top_k": n}
    return [
        ("lc retriever", lambda: LCRetriever(base_url=url, api_key=key, **k)),
        ("lc reranker", lambda: LCReranker(base_url=url, api_key=key, **top_n)),
        ("lc embeddings", lambda: M3Embeddings(base_url=url, api_key=key)),
        ("lc sparse", lambda: M3SparseEmbeddings(base_url=url, api_key=key)),
        (
            "lc embeddings, two sources",
            lambda: M3Embeddings(api_key=key, base_url=url, encoder_kwargs={"device": "cpu"}),
        ),
        ("li retriever", lambda: LIRetriever(base_url=url, api_key=key, **top_k)),
        ("li reranker", lambda: LIReranker(base_url=url, api_key=key, **top_n)),
        ("li embedding", lambda: M3Embedding(base_url=url, api_key=key)),
        ("li sparse", lambda: M3SparseEmbedding(base_url=url, api_key=key)),
    ]


@FAMILY
@given(url=BASE_URLS, key=KEYS, n=COUNTS)
def test_the_api_key_is_never_in_an_error_or_a_repr(url: str, key: str, n: int | None) -> None:
    """Bad URLs, unsendable keys, bad counts: whatever is refused, the key is not shown."""
    import traceback

    for name, build in _remote_adapters(url, key, n):
        try:
            adapter = build()
        except Exception as exc:  # any error at all must keep the key out
            shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        else:
            shown = [str(adapter), repr(adapter)]
        assert not any(MARKER in text for text in shown), (name, shown)


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_a_langchain_model_copy_calls_the_new_server() -> None:
    """``model_copy(update={"base_url": ...})`` must not keep the client of the old server."""
    old, new = (f"http://127.0.0.1:{p}" for p in _free_ports(2))
    retriever = LCRetriever(base_url=old, api_key="key-1")
    with pytest.raises(OSError, match=re.escape(old)):  # RemoteError: cannot reach
        retriever.invoke("capital")
    with pytest.raises(OSError, match=re.escape(new)):
        retriever.model_copy(update={"base_url": new}).invoke("capital")
    with pytest.raises(OSError, match=re.escape(old)):  # the original is untouched
        retriever.invoke("capital")
    reranker = LCReranker(base_url=old)
    docs = [Document(page_content="Paris"), Document(page_content="Tokyo")]
    with pytest.raises(OSError, match=re.escape(new)):
        reranker.model_copy(update={"base_url": new}).compress_documents(docs, "capital")
    for cls in (M3Embeddings, M3SparseEmbeddings):
        embeddings = cls(base_url=old)
        with pytest.raises(OSError, match=re.escape(old)):
            embeddings.embed_query("capital")  # its client is built and used
        with pytest.raises(OSError, match=re.escape(new)):
            embeddings.model_copy(update={"base_url": new}).embed_query("capital")
