"""What the hybrid retriever needs from a store, as `typing.Protocol`s.

[`Collection`][m3rag.Collection] (embedded) implements both; a store on another engine (a
vector database) implements them too and then works with
[`HybridRetriever`][m3rag.HybridRetriever], `m3rag eval`, the command line and the framework
adapters unchanged. Documents are addressed two ways: by the caller's string ids, and by int64
*keys*, the store's own handles that recall returns and the exact scorers take back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from m3rag.encoder import Encoder
    from m3rag.index.filters import Filter
    from m3rag.results import Hits
    from m3rag.types import Document, Head, M3Output

    FilterSpec = Mapping[str, Any] | Filter | None

__all__ = ["Store", "WritableStore"]


@runtime_checkable
class Store(Protocol):
    """A searchable store: recall per path, exact scores per path, documents.

    Attributes:
        heads: The heads it stores, from ``("dense", "sparse", "colbert")`` (BM25 always).
        dim: Dense vector size, or ``None``.
        colbert_dim: ColBERT vector size, or ``None``.
        encoder: The encoder of its documents and queries, if it has one.

    A store may also set ``concurrent_reads = True`` (optional, not part of the protocol's
    check) when its searches can be sent from several threads at once, as a remote store's
    can: `HybridRetriever` then sends a query's recall searches together.
    """

    heads: tuple[Head, ...]
    dim: int | None
    colbert_dim: int | None
    encoder: Encoder | None

    def count(self) -> int:
        """Live documents."""
        ...

    # -- recall: top-k keys of one path, a filter applied inside the path ----------------------

    def search_dense(
        self,
        query: npt.ArrayLike,
        *,
        k: int = 10,
        filter: FilterSpec = None,
        exact: bool | None = None,
    ) -> Hits:
        """Top ``k`` by dense inner product."""
        ...

    def search_lexical(
        self, query: Mapping[int, float], *, k: int = 10, filter: FilterSpec = None
    ) -> Hits:
        """Top ``k`` by BGE-M3's lexical matching score."""
        ...

    def search_bm25(
        self, query: str, *, k: int = 10, filter: FilterSpec = None, lang: str | None = None
    ) -> Hits:
        """Top ``k`` by BM25 (``lang``: analyse the query as that language only)."""
        ...

    # -- exact scores of given keys on every path ----------------------------------------------

    def dense_scores(
        self, query: npt.ArrayLike, keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Dense inner products of ``keys``."""
        ...

    def lexical_scores(
        self, query: Mapping[int, float], keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Lexical matching scores of ``keys``."""
        ...

    def colbert_scores(
        self, query: npt.ArrayLike, keys: npt.NDArray[np.int64], *, precision: str = "float32"
    ) -> npt.NDArray[np.float32]:
        """ColBERT MaxSim of ``keys``."""
        ...

    def bm25_scores(
        self, query: str, keys: npt.NDArray[np.int64], *, lang: str | None = None
    ) -> npt.NDArray[np.float32]:
        """BM25 scores of ``keys``."""
        ...

    def dense_vecs(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Stored dense vectors of ``keys`` (for MMR)."""
        ...

    # -- documents -----------------------------------------------------------------------------

    def documents(self, keys: npt.NDArray[np.int64]) -> list[Document]:
        """Documents by key, in order."""
        ...

    def get(self, ids: str | Sequence[str]) -> list[Document]:
        """Documents by id, in order."""
        ...

    def ids(self) -> list[str]:
        """Every live id."""
        ...

    def ids_matching(self, filter: Mapping[str, Any] | Filter) -> list[str]:
        """Live ids whose metadata matches ``filter``."""
        ...

    def metadata_values(self, field: str) -> set[Any]:
        """Distinct values of a metadata field."""
        ...

    def has_metadata(self, field: str) -> bool:
        """Whether a live document has the metadata ``field``."""
        ...


@runtime_checkable
class WritableStore(Store, Protocol):
    """A store that takes writes: staged by ``add``/``upsert``/``delete``, visible at ``commit``."""

    def add(
        self,
        texts_or_documents: str | Document | Iterable[str | Document],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        embeddings: M3Output | None = None,
    ) -> list[str]:
        """Stage new documents."""
        ...

    def upsert(
        self,
        texts_or_documents: str | Document | Iterable[str | Document],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        embeddings: M3Output | None = None,
    ) -> list[str]:
        """Stage documents, replacing those whose id exists."""
        ...

    def delete(self, ids: str | Sequence[str]) -> None:
        """Stage deletions."""
        ...

    def commit(self) -> int:
        """Make the staged changes visible; returns the new generation."""
        ...

    def rollback(self) -> None:
        """Drop the staged changes (a failed batch of writes leaves the store as it was)."""
        ...
