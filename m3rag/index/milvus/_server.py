"""Server calls of a MilvusStore: every pymilvus or gRPC failure becomes a `RemoteStoreError`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from m3rag.errors import M3RagError, RemoteStoreError

__all__ = ["Caller"]

T = TypeVar("T")


class Caller:
    """Runs server calls for collection ``name``, wrapping any failure.

    pymilvus and grpc raise many kinds of exceptions; none may leak to the caller.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, operation: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; a failure becomes a `RemoteStoreError` naming ``operation``."""
        try:
            return fn()
        except M3RagError:
            raise
        except Exception as exc:
            msg = f"Milvus {operation} on {self.name!r} failed: {server_message(exc)}"
            raise RemoteStoreError(msg) from exc


def server_message(exc: BaseException) -> str:
    """The server's message, without pymilvus's wrapping (never the token: pymilvus omits it)."""
    message = getattr(exc, "message", None)
    code = getattr(exc, "code", None)
    text = str(message) if message else str(exc) or type(exc).__name__
    return f"{text} (code {code})" if code is not None else text
