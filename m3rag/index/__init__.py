"""The local hybrid index: tantivy lexical weights and BM25, dense and ColBERT stores."""

from __future__ import annotations

from m3rag.index.collection import FORMAT_VERSION, Collection
from m3rag.index.filters import Filter
from m3rag.index.milvus import MilvusStore
from m3rag.index.protocol import Store, WritableStore
from m3rag.index.uri import open_store
from m3rag.results import Hits

__all__ = [
    "FORMAT_VERSION",
    "Collection",
    "Filter",
    "Hits",
    "MilvusStore",
    "Store",
    "WritableStore",
    "open_store",
]
