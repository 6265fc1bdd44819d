"""The bge-reranker cross-encoder stage (torch and transformers load with the model)."""

from __future__ import annotations

from m3rag.rerank.cross_encoder import RankedPassage, Reranker, RerankResult, RerankScores
from m3rag.rerank.protocol import RerankerLike

__all__ = ["RankedPassage", "RerankResult", "RerankScores", "Reranker", "RerankerLike"]
