"""The local hybrid index: tantivy lexical weights and BM25, dense and ColBERT stores."""

from __future__ import annotations

from m3rag.index.collection import FORMAT_VERSION, Collection
from m3rag.index.filters import Filter
from m3rag.index.protocol import Store, WritableStore
from m3rag.results import Hits

__all__ = ["FORMAT_VERSION", "Collection", "Filter", "Hits", "Store", "WritableStore"]
