from __future__ import annotations

import m3rag

EXPECTED = {
    "__version__",
    "M3Encoder",
    "M3Output",
    "PairScores",
    "Head",
    "HEADS",
    "Collection",
    "Document",
    "Filter",
    "Hits",
    "index_files",
    "IndexReport",
    "HybridRetriever",
    "FusionConfig",
    "SearchResults",
    "Hit",
    "PathScore",
    "Chunker",
    "Chunk",
    "Reranker",
    "RerankResult",
    "RerankScores",
    "RankedPassage",
    "dense_scores",
    "lexical_matching_score",
    "lexical_scores",
    "colbert_score",
    "colbert_scores",
    "M3RagError",
    "MissingDependencyError",
    "ModelError",
    "ModelLoadError",
    "CollectionError",
    "CollectionClosedError",
    "CommitError",
    "MissingHeadError",
    "UnsupportedOutputError",
    "InputTooLongError",
    "CollectionNotFoundError",
    "CollectionExistsError",
    "CollectionLockedError",
    "ReadOnlyError",
    "IndexFormatError",
    "EncoderMismatchError",
    "DuplicateIdError",
    "UnknownIdError",
    "InvalidDocumentError",
    "EmbeddingMismatchError",
    "RemoteStoreError",
    "MilvusStore",
    "open_store",
}


def test_core_all_is_pinned() -> None:
    assert set(m3rag.__all__) == EXPECTED
    assert len(m3rag.__all__) == len(EXPECTED)
    for name in m3rag.__all__:
        assert hasattr(m3rag, name)


def test_errors_subclass_builtins() -> None:
    assert issubclass(m3rag.MissingDependencyError, ImportError)
    assert issubclass(m3rag.ModelLoadError, OSError)
    assert issubclass(m3rag.MissingHeadError, m3rag.ModelLoadError)
    assert issubclass(m3rag.UnsupportedOutputError, ValueError)
    assert issubclass(m3rag.InputTooLongError, ValueError)
    for name in ("ModelLoadError", "UnsupportedOutputError", "InputTooLongError"):
        assert issubclass(getattr(m3rag, name), m3rag.M3RagError)
