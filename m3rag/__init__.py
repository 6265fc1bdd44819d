"""m3rag: hybrid retrieval with BGE-M3's three heads, a local index, fusion and reranking.

Importing m3rag is cheap: torch and transformers load only when a model is loaded.
"""

from __future__ import annotations

from m3rag._version import __version__
from m3rag.chunking import Chunk, Chunker
from m3rag.encoder import M3Encoder, PairScores
from m3rag.errors import (
    CollectionClosedError,
    CollectionError,
    CollectionExistsError,
    CollectionLockedError,
    CollectionNotFoundError,
    CommitError,
    DuplicateIdError,
    EmbeddingMismatchError,
    EncoderMismatchError,
    IndexFormatError,
    InputTooLongError,
    InvalidDocumentError,
    M3RagError,
    MissingDependencyError,
    MissingHeadError,
    ModelError,
    ModelLoadError,
    ReadOnlyError,
    RemoteStoreError,
    UnknownIdError,
    UnsupportedOutputError,
)
from m3rag.fusion import FusionConfig
from m3rag.index import Collection, Filter, Hits, MilvusStore, open_store
from m3rag.ingest import IndexReport, index_files
from m3rag.rerank import RankedPassage, Reranker, RerankResult, RerankScores
from m3rag.results import Hit, PathScore, SearchResults
from m3rag.retriever import HybridRetriever
from m3rag.scoring import (
    colbert_score,
    colbert_scores,
    dense_scores,
    lexical_matching_score,
    lexical_scores,
)
from m3rag.types import HEADS, Document, Head, M3Output

__all__ = [
    "__version__",
    # encoder
    "M3Encoder",
    "M3Output",
    "PairScores",
    "Head",
    "HEADS",
    # index
    "Collection",
    "Document",
    "Filter",
    "Hits",
    "MilvusStore",
    "open_store",
    "index_files",
    "IndexReport",
    # retrieval
    "HybridRetriever",
    "FusionConfig",
    "SearchResults",
    "Hit",
    "PathScore",
    "Chunker",
    "Chunk",
    # reranker
    "Reranker",
    "RerankResult",
    "RerankScores",
    "RankedPassage",
    # scoring
    "dense_scores",
    "lexical_matching_score",
    "lexical_scores",
    "colbert_score",
    "colbert_scores",
    # errors
    "M3RagError",
    "MissingDependencyError",
    "ModelError",
    "ModelLoadError",
    "MissingHeadError",
    "UnsupportedOutputError",
    "InputTooLongError",
    "CollectionError",
    "CollectionNotFoundError",
    "CollectionExistsError",
    "CollectionLockedError",
    "CollectionClosedError",
    "ReadOnlyError",
    "IndexFormatError",
    "CommitError",
    "EncoderMismatchError",
    "DuplicateIdError",
    "UnknownIdError",
    "InvalidDocumentError",
    "EmbeddingMismatchError",
    "RemoteStoreError",
]
