"""The m3rag exception tree.

Every m3rag error also subclasses the matching built-in, so ``except ValueError`` and friends keep
working in code that does not know about m3rag::

    M3RagError
    ├── MissingDependencyError(ImportError)     an optional extra is not installed
    ├── ModelLoadError(OSError)                 a checkpoint cannot be found, fetched or read
    │   └── MissingHeadError                    an M3 checkpoint lacks a head file
    ├── UnsupportedOutputError(ValueError)      a head the model cannot produce was asked for
    └── InputTooLongError(ValueError)           a length beyond the model's limit was asked for
"""

from __future__ import annotations

__all__ = [
    "M3RagError",
    "MissingDependencyError",
    "ModelLoadError",
    "MissingHeadError",
    "UnsupportedOutputError",
    "InputTooLongError",
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
