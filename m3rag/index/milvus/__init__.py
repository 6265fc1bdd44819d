"""A hybrid store on Milvus: the writer/reader API of [`Collection`][m3rag.Collection] on a server.

[`MilvusStore`][m3rag.MilvusStore] implements `m3rag.index.Store` and
`m3rag.index.WritableStore`, so ``HybridRetriever(MilvusStore(...))`` works unchanged. One
Milvus collection holds a row per document (text and BM25, metadata, dense and lexical
vectors; `schema`), and a side collection ``<name>_colbert`` holds each document's float32
ColBERT matrix packed into rows of whole tokens, fetched by primary key for exact MaxSim
([`ColbertLayout`][m3rag.index.milvus.ColbertLayout]). (Milvus >= 2.6.4 can hold the vectors as
an array of structs in the main row; milvus-lite 3.2 cannot.)

**Exactness.** Milvus recalls candidates on each path; m3rag then scores every candidate itself
from the fetched vectors (dense inner product, lexical matching score, ColBERT MaxSim), never
trusting the server's own scores for those paths. BM25 scores come from the server (its
statistics live there) by a search restricted to the candidates.

**Writes are staged client-side** until [`commit`][m3rag.MilvusStore.commit], as in
`Collection`: a search does not see them, [`get`][m3rag.MilvusStore.get] and
[`count`][m3rag.MilvusStore.count] do. ``commit`` upserts (and deletes) and then flushes.
Milvus has no multi-row transactions: a commit interrupted half-way leaves some documents
written, and committing again (or re-running the ingest) converges, because every write is an
idempotent upsert by id.

Modules: `schema` (collection creation, ``m3rag.config``), `colbert` (the packed side
collection), `store` (the store: reads, exact scores, staging), `writes` (write preparation,
rows and sending); input checks shared with `Collection` come from `m3rag.index.validation`.
"""

from __future__ import annotations

from m3rag.index.milvus.colbert import ColbertLayout
from m3rag.index.milvus.schema import CONFIG_KEY, CONFIG_VERSION, DENSE_INDEXES, analyzer_params
from m3rag.index.milvus.store import MilvusStore

__all__ = [
    "CONFIG_KEY",
    "CONFIG_VERSION",
    "DENSE_INDEXES",
    "ColbertLayout",
    "MilvusStore",
    "analyzer_params",
]
