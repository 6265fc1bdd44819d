"""How a MilvusStore's collections are made, recorded and checked.

The main collection holds one row per document (primary key: the m3rag id)::

    text      VARCHAR with an analyzer; Milvus's BM25 function fills ``bm25`` from it
    meta      JSON metadata            mtypes   JSON type of each metadata value (filters)
    dense     FLOAT_VECTOR (FLAT, IVF_FLAT, HNSW or AUTOINDEX, inner product)
    sparse    SPARSE_FLOAT_VECTOR: BGE-M3 lexical weights (inverted index, inner product)
    bm25      SPARSE_FLOAT_VECTOR made by the server (BM25 metric)
    ntok      ColBERT tokens of the document    hash   SHA-256 of text + metadata

and its property ``m3rag.config`` (JSON) records how m3rag made it: heads, sizes, analyzer,
encoder fingerprint and the ColBERT side collection's layout (`ColbertLayout`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from m3rag.analysis import SNOWBALL, STOPWORDS, family_of
from m3rag.errors import IndexFormatError
from m3rag.index.milvus._limits import MAX_ID_BYTES, MAX_TEXT_BYTES
from m3rag.index.milvus._server import Caller
from m3rag.index.milvus.colbert import ColbertLayout
from m3rag.index.validation import store_shape
from m3rag.types import Head

if TYPE_CHECKING:
    from m3rag.encoder import Encoder

__all__ = [
    "CONFIG_KEY",
    "CONFIG_VERSION",
    "DENSE_INDEXES",
    "analyzer_params",
    "build_config",
    "create_main",
    "read_config",
]

CONFIG_KEY = "m3rag.config"
"""The collection property that records how m3rag made the collection (JSON)."""
CONFIG_VERSION = 2
"""2: ColBERT matrices packed into chunk rows (`ColbertLayout`); 1 held one row per token."""
DENSE_INDEXES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
"""Dense index types: FLAT recalls exactly; the others approximately (scores stay exact)."""


def analyzer_params(lang: str) -> dict[str, Any]:
    """The Milvus analyzer mirroring m3rag's BM25 family of ``lang`` as far as Milvus allows.

    Chinese gets ``jieba`` (a word segmenter, where the embedded index uses bigrams); languages
    with a Snowball stemmer get the standard tokenizer, lower-casing, the same stop-word list
    (where m3rag has one) and the same stemmer; every other language the standard tokenizer
    and lower-casing.

    Raises:
        UnknownLanguageError: ``lang`` is not a language code.
    """
    family = family_of(lang)
    if lang.strip().lower().replace("_", "-").split("-")[0] == "zh":
        return {"tokenizer": "jieba"}
    filters: list[Any] = ["lowercase"]
    if family in STOPWORDS:
        filters.append({"type": "stop", "stop_words": [f"_{SNOWBALL[family]}_"]})
    if family in SNOWBALL:
        filters.append({"type": "stemmer", "language": SNOWBALL[family]})
    return {"tokenizer": "standard", "filter": filters}


def build_config(
    *,
    encoder: Encoder | None,
    heads: Sequence[Head] | None,
    dim: int | None,
    colbert_dim: int | None,
    vocab_size: int | None,
    lang: str,
    analyzer: Mapping[str, Any] | None,
    dense_index: str,
) -> dict[str, Any]:
    """The ``m3rag.config`` of a new collection, from `MilvusStore`'s arguments.

    Raises:
        ValueError: Heads the encoder lacks, missing sizes, ``lang="auto"``.
    """
    fingerprint = encoder.fingerprint() if encoder is not None else None
    chosen, dim, colbert_dim, vocab_size = store_shape(encoder, heads, dim, colbert_dim, vocab_size)
    if lang == "auto":
        msg = (
            "lang='auto' (per-document language detection) is not available on Milvus, "
            "whose BM25 field has one analyzer: pass the corpus language, e.g. lang='en'"
        )
        raise ValueError(msg)
    params = dict(analyzer) if analyzer is not None else analyzer_params(lang)
    layout = ColbertLayout.for_dim(int(colbert_dim or 0)) if "colbert" in chosen else None
    config: dict[str, Any] = {
        "format": "m3rag-milvus",
        "version": CONFIG_VERSION,
        "heads": list(chosen),
        "dim": dim if "dense" in chosen else None,
        "colbert_dim": colbert_dim if "colbert" in chosen else None,
        "vocab_size": vocab_size if "sparse" in chosen else None,
        "lang": lang,
        "analyzer": params,
        "dense_index": dense_index,
        "encoder": fingerprint,
        "colbert_layout": layout.to_config() if layout is not None else None,
    }
    return config


def create_main(
    pm: Any,
    client: Any,
    name: str,
    config: Mapping[str, Any],
    call: Caller,
    dense_index_params: Mapping[str, Any] | None,
) -> None:
    """Create the main collection described by ``config`` (``pm``: the pymilvus module)."""
    heads, params = config["heads"], config["analyzer"]
    dim, dense_index = config["dim"], config["dense_index"]
    DataType, Function, FunctionType = pm.DataType, pm.Function, pm.FunctionType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field(
        "text",
        DataType.VARCHAR,
        max_length=MAX_TEXT_BYTES,
        enable_analyzer=True,
        analyzer_params=params,
    )
    schema.add_field("meta", DataType.JSON)
    schema.add_field("mtypes", DataType.JSON)
    schema.add_field("hash", DataType.VARCHAR, max_length=64)
    schema.add_field("ntok", DataType.INT64)
    schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
    index = client.prepare_index_params()
    index.add_index("bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    if "dense" in heads:
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        index.add_index(
            "dense",
            index_type=dense_index,
            metric_type="IP",
            params=dict(dense_index_params or {}),
        )
    if "sparse" in heads:
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    schema.add_function(
        Function(
            name="m3rag_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["bm25"],
        )
    )
    props = {CONFIG_KEY: json.dumps(config)}
    call(
        "create_collection",
        lambda: client.create_collection(
            name, schema=schema, index_params=index, properties=props, consistency_level="Strong"
        ),
    )


def read_config(client: Any, name: str, call: Caller) -> dict[str, Any]:
    """The recorded ``m3rag.config`` of collection ``name``.

    Raises:
        IndexFormatError: Not made by m3rag, by a newer one, or with the per-token ColBERT
            layout of version 1.
    """
    described = call("describe_collection", lambda: client.describe_collection(name))
    raw = (described.get("properties") or {}).get(CONFIG_KEY)
    if raw is None:
        msg = (
            f"the Milvus collection {name!r} was not made by m3rag (no {CONFIG_KEY!r} "
            "property); use another collection_name"
        )
        raise IndexFormatError(msg)
    try:
        config: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        msg = f"the {CONFIG_KEY!r} property of {name!r} is not JSON: {exc}"
        raise IndexFormatError(msg) from exc
    version = config.get("version", 0) if isinstance(config, dict) else None
    if (
        not isinstance(config, dict)
        or config.get("format") != "m3rag-milvus"
        or not isinstance(version, int)
        or version > CONFIG_VERSION
    ):
        found = config.get("format") if isinstance(config, dict) else config
        msg = (
            f"{name!r} was made by a newer m3rag (format {found!r}, "
            f"version {version!r}); upgrade m3rag"
        )
        raise IndexFormatError(msg)
    if "colbert" in config.get("heads", ()) and version < 2:
        msg = (
            f"the Milvus collection {name!r} stores ColBERT vectors one row per token "
            "(m3rag-milvus version 1, an unreleased development layout) which this m3rag "
            "no longer reads; re-create the collection (drop it and ingest again)"
        )
        raise IndexFormatError(msg)
    return config
