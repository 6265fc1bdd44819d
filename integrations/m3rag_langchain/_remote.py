"""The ``m3rag serve`` clients behind ``base_url=``, rebuilt when the fields they came from change.

Pydantic's ``model_copy(update=...)`` copies private attributes without running validators, so
a client built once at construction would keep calling the old server from the copy. Each client
is kept with the ``(base_url, api_key)`` it was built from and built again when they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import SecretStr

__all__ = ["Remote", "remote_client", "secret"]

C = TypeVar("C")
Remote = tuple[tuple[str, SecretStr | None], C]
"""A client and the ``(base_url, api_key)`` it was built from."""


def secret(api_key: SecretStr | None) -> str | None:
    """The key itself, for the client (``None``: the client reads ``M3RAG_API_KEY``)."""
    return None if api_key is None else api_key.get_secret_value()


def remote_client(
    cached: Remote[C] | None,
    factory: Callable[..., C],
    base_url: str,
    api_key: SecretStr | None,
) -> Remote[C]:
    """``cached`` if it was built for ``base_url`` and ``api_key``, else a new client.

    Raises:
        ValueError: ``base_url`` is not an http(s) URL, or the key cannot be sent in a header
            (the message never shows the key).
    """
    fields = (base_url, api_key)
    if cached is not None and cached[0] == fields:
        return cached
    return fields, factory(base_url, api_key=secret(api_key))
