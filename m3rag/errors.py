"""The m3rag exception tree.

Every m3rag error also subclasses the matching built-in, so ``except ValueError`` and friends keep
working in code that does not know about m3rag::

    M3RagError
    ├── MissingDependencyError(ImportError)     an optional extra is not installed
    ├── ModelError                              anything about a model (encoder or reranker)
    │   ├── ModelLoadError(OSError)             a checkpoint cannot be found, fetched or read
    │   │   └── MissingHeadError                an M3 checkpoint lacks a head file
    │   ├── UnsupportedOutputError(ValueError)  a head the model cannot produce was asked for
    │   ├── InputTooLongError(ValueError)       a length beyond the model's limit was asked for
    │   └── ModelProcessError(RuntimeError)     a model's child process (``m3rag serve``) died
    ├── UnknownLanguageError(ValueError)        a ``lang`` that is not a language code
    ├── DistributedError(RuntimeError)          a Ray cluster cannot be reached, a stage failed
    ├── CheckpointError(OSError)                a training checkpoint is damaged or incomplete
    ├── TrainingDivergedError(ValueError)       a training loss or weight became NaN or infinite
    └── CollectionError                         anything about a collection (index) on disk
        ├── CollectionNotFoundError(FileNotFoundError)  no collection at that path
        ├── CollectionExistsError(FileExistsError)  create() on a folder that already holds one
        ├── CollectionLockedError(RuntimeError)     another process is writing the collection
        ├── CollectionClosedError(RuntimeError)     a call on a collection after close()
        ├── ReadOnlyError(PermissionError)          a write on a collection opened read-only
        ├── IndexFormatError(ValueError)            a newer format, or a damaged/missing store file
        ├── CommitError(OSError)                    commit() failed; the message says what is kept
        ├── EncoderMismatchError(ValueError)        not the encoder the index was built with
        ├── DuplicateIdError(ValueError)            an id twice in one call, or add() of a held id
        ├── UnknownIdError(KeyError)                get()/delete() of ids the collection lacks
        ├── InvalidDocumentError(ValueError)        empty text, or metadata JSON cannot hold
        ├── EmbeddingMismatchError(ValueError)      precomputed embeddings of wrong count, heads,
        │                                           size, or non-finite/out-of-range values
        └── RemoteStoreError(OSError)               a vector database (Milvus) failed or refused
                                                    a call; the message names the operation

Catch a family (``except CollectionError``) or a built-in (``except ValueError``); the command
line maps the families to its exit codes.
"""

from __future__ import annotations

__all__ = [
    "M3RagError",
    "MissingDependencyError",
    "ModelError",
    "ModelLoadError",
    "MissingHeadError",
    "UnsupportedOutputError",
    "InputTooLongError",
    "ModelProcessError",
    "UnknownLanguageError",
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
    "DistributedError",
    "RemoteStoreError",
    "CheckpointError",
    "TrainingDivergedError",
]


class M3RagError(Exception):
    """Base class of every error raised by m3rag."""


class MissingDependencyError(M3RagError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ModelError(M3RagError):
    """Base class of the errors about a model: loading it, or asking it for what it cannot do."""


class CollectionError(M3RagError):
    """Base class of the errors about a collection: opening, validating, writing, committing."""


class ModelLoadError(ModelError, OSError):
    """A model cannot be found, downloaded or read; the message names the model and the remedy."""


class MissingHeadError(ModelLoadError):
    """An M3 checkpoint lacks one of its head files.

    FlagEmbedding silently initialises random heads in that case; m3rag refuses instead.
    """


class UnsupportedOutputError(ModelError, ValueError):
    """An output the loaded model cannot produce was asked for (sparse from a dense-only model)."""


class InputTooLongError(ModelError, ValueError):
    """A maximum length beyond what the model's position embeddings support was asked for."""


class ModelProcessError(ModelError, RuntimeError):
    """A model running in a child process (``m3rag serve``) exited, or sent what cannot cross."""


class UnknownLanguageError(M3RagError, ValueError):
    """A ``lang`` (argument or metadata) that is not a language code or ``"auto"``."""


class CollectionNotFoundError(CollectionError, FileNotFoundError):
    """No collection (no ``manifest.json``) at the given path."""


class CollectionExistsError(CollectionError, FileExistsError):
    """``Collection.create`` on a folder that already holds a collection."""


class CollectionLockedError(CollectionError, RuntimeError):
    """Another writer holds the collection's lock; there is one writer at a time."""


class CollectionClosedError(CollectionError, RuntimeError):
    """A method was called on a collection after [`close`][m3rag.Collection.close]."""


class ReadOnlyError(CollectionError, PermissionError):
    """A write was attempted on a collection opened read-only."""


class IndexFormatError(CollectionError, ValueError):
    """The on-disk format is newer than this m3rag understands, or the manifest is damaged."""


class CommitError(CollectionError, OSError):
    """``commit()`` failed (disk full, I/O error).

    The message says whether the staged changes are kept (they are, unless it says otherwise)
    and how to retry.
    """


class EncoderMismatchError(CollectionError, ValueError):
    """The encoder (model, dimensions, tokenizer) differs from the one the index was built with."""


class DuplicateIdError(CollectionError, ValueError):
    """An id appears twice in one call, or ``add`` was given an id the collection already holds."""


class UnknownIdError(CollectionError, KeyError):
    """``get`` or ``delete`` named ids the collection does not hold (the message lists them)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidDocumentError(CollectionError, ValueError):
    """A document cannot be indexed: empty text, or metadata that JSON cannot hold."""


class EmbeddingMismatchError(CollectionError, ValueError):
    """Precomputed embeddings do not fit: wrong count, missing heads, or wrong dimensions."""


class DistributedError(M3RagError, RuntimeError):
    """A Ray cluster cannot be started or reached, or a stage of a distributed pipeline failed."""


class RemoteStoreError(CollectionError, OSError):
    """A store on a server (e.g. [`MilvusStore`][m3rag.MilvusStore]) failed or refused a call.

    The message names the operation and the server's answer; the server's own exception is
    chained (``__cause__``).
    """


class CheckpointError(M3RagError, OSError):
    """A checkpoint (or run manifest) cannot be read: damaged, incomplete, or an old format."""


class TrainingDivergedError(M3RagError, ValueError):
    """The loss or the weights became NaN or infinite; nothing of that step was saved."""
