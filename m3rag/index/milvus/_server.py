"""Server calls of a MilvusStore: every pymilvus or gRPC failure becomes a `RemoteStoreError`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from m3rag.errors import M3RagError, RemoteStoreError

__all__ = ["Caller"]

T = TypeVar("T")


class Caller:
    """Runs server calls for collection ``name``, wrapping any failure.

    pymilvus and grpc raise many kinds of exceptions; none may leak to the caller. ``secrets``
    (the token, a password in the server's URI) are cut out of every message: pymilvus quotes
    the URI it was given, credentials included, in some of its errors.
    """

    def __init__(self, name: str, secrets: Iterable[str] = ()) -> None:
        self.name = name
        # longest first: a password inside a longer "user:password" goes with it
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, operation: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; a failure becomes a `RemoteStoreError` naming ``operation``."""
        try:
            return fn()
        except M3RagError:
            raise
        except Exception as exc:
            msg = f"Milvus {operation} on {self.name!r} failed: {self.scrub(server_message(exc))}"
            # from None: the chained pymilvus exception would show the secrets in a traceback
            raise RemoteStoreError(msg) from (None if self._leaks(exc) else exc)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _leaks(self, exc: BaseException) -> bool:
        """Whether ``exc`` (or what it chains) quotes a secret."""
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            text = f"{current!s} {current!r} {getattr(current, 'message', '')}"
            if any(secret in text for secret in self._secrets):
                return True
            current = current.__cause__ or current.__context__
        return False


def server_message(exc: BaseException) -> str:
    """The server's message, without pymilvus's wrapping (never the token: pymilvus omits it)."""
    message = getattr(exc, "message", None)
    code = getattr(exc, "code", None)
    text = str(message) if message else str(exc) or type(exc).__name__
    return f"{text} (code {code})" if code is not None else text
