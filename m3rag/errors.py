"""The m3rag exception tree.

Every m3rag error also subclasses the matching built-in, so ``except ValueError`` and friends keep
working in code that does not know about m3rag::

    M3RagError
    ├── MissingDependencyError(ImportError)     an optional extra is not installed
    ├── ModelLoadError(OSError)                 a checkpoint cannot be found, fetched or read
    │   └── MissingHeadError                    an M3 checkpoint lacks a head file
    ├── UnsupportedOutputError(ValueError)      a head the model cannot produce was asked for
    ├── InputTooLongError(ValueError)           a length beyond the model's limit was asked for
    ├── CollectionNotFoundError(FileNotFoundError)  no collection at that path
    ├── CollectionExistsError(FileExistsError)  create() on a folder that already holds one
    ├── CollectionLockedError(RuntimeError)     another process is writing the collection
    ├── ReadOnlyError(PermissionError)          a write on a collection opened read-only
    ├── IndexFormatError(ValueError)            a newer format, or a damaged manifest
    ├── EncoderMismatchError(ValueError)        the encoder is not the one the index was built with
    ├── DuplicateIdError(ValueError)            an id twice in one call, or add() of an existing id
    ├── UnknownIdError(KeyError)                get()/delete() of ids the collection does not hold
    ├── InvalidDocumentError(ValueError)        empty text, or metadata JSON cannot hold
    └── EmbeddingMismatchError(ValueError)      precomputed embeddings of wrong count, heads or size
"""

from __future__ import annotations

__all__ = [
    "M3RagError",
    "MissingDependencyError",
    "ModelLoadError",
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
]


class M3RagError(Exception):
    """Base class of every error raised by m3rag."""


class MissingDependencyError(M3RagError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ModelLoadError(M3RagError, OSError):
    """A model cannot be found, downloaded or read; the message names the model and the remedy."""


class MissingHeadError(ModelLoadError):
    """An M3 checkpoint lacks one of its head files.

    FlagEmbedding silently initialises random heads in that case; m3rag refuses instead.
    """


class UnsupportedOutputError(M3RagError, ValueError):
    """An output the loaded model cannot produce was asked for (sparse from a dense-only model)."""


class InputTooLongError(M3RagError, ValueError):
    """A maximum length beyond what the model's position embeddings support was asked for."""


class CollectionNotFoundError(M3RagError, FileNotFoundError):
    """No collection (no ``manifest.json``) at the given path."""


class CollectionExistsError(M3RagError, FileExistsError):
    """``Collection.create`` on a folder that already holds a collection."""


class CollectionLockedError(M3RagError, RuntimeError):
    """Another writer holds the collection's lock; there is one writer at a time."""


class ReadOnlyError(M3RagError, PermissionError):
    """A write was attempted on a collection opened read-only."""


class IndexFormatError(M3RagError, ValueError):
    """The on-disk format is newer than this m3rag understands, or the manifest is damaged."""


class EncoderMismatchError(M3RagError, ValueError):
    """The encoder (model, dimensions, tokenizer) differs from the one the index was built with."""


class DuplicateIdError(M3RagError, ValueError):
    """An id appears twice in one call, or ``add`` was given an id the collection already holds."""


class UnknownIdError(M3RagError, KeyError):
    """``get`` or ``delete`` named ids the collection does not hold (the message lists them)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidDocumentError(M3RagError, ValueError):
    """A document cannot be indexed: empty text, or metadata that JSON cannot hold."""


class EmbeddingMismatchError(M3RagError, ValueError):
    """Precomputed embeddings do not fit: wrong count, missing heads, or wrong dimensions."""
