"""What the retriever needs from a reranker: a typing protocol, so any ranker can plug in.

[`Reranker`][m3rag.Reranker] implements it; so does the server's batched reranker
(``m3rag.serve.batching.BatchedReranker``), whose calls share batches with other requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from m3rag.rerank.cross_encoder import RerankResult

__all__ = ["RerankerLike"]


@runtime_checkable
class RerankerLike(Protocol):
    """Ranks passages for a query, best first, keeping each passage's original index."""

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> RerankResult:
        """See [`Reranker.rerank`][m3rag.Reranker.rerank]."""
        ...
