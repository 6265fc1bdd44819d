"""The one place the LlamaIndex adapters check their arguments before calling m3rag.

LlamaIndex iterates whatever it is given: a bare string passed as a batch is embedded character
by character, a plain dict of filters fails with an ``AttributeError``, a list of strings where
nodes are expected fails deep inside. Each check names the argument, the index for batches, and
says what to pass instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llama_index.core.schema import NodeWithScore

__all__ = ["check_nodes", "check_positive_int", "check_text", "check_texts"]


def _as_list(value: object, name: str, what: str) -> list[Any]:
    """``value`` as a list, refusing a bare string (which would be read character by character)."""
    kind = type(value).__name__
    if isinstance(value, (str, bytes)):
        msg = f"{name} must be a list of {what}, got a single {kind}; wrap it in a list"
        raise TypeError(msg)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        msg = f"{name} must be a list of {what}, got {kind}"
        raise TypeError(msg)
    return list(value)


def check_text(value: object, name: str) -> str:
    """A single string (a query, one text)."""
    if not isinstance(value, str):
        msg = f"{name} must be a string, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def check_texts(value: object, name: str = "texts") -> list[str]:
    """A list of strings."""
    items = _as_list(value, name, "strings")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            msg = f"{name}[{i}] must be a string, got {type(item).__name__}"
            raise TypeError(msg)
    return items


def check_nodes(value: object, name: str = "nodes") -> list[NodeWithScore]:
    """A list of ``NodeWithScore``."""
    items = _as_list(value, name, "NodeWithScore")
    for i, item in enumerate(items):
        if not isinstance(item, NodeWithScore):
            msg = (
                f"{name}[{i}] must be a llama_index NodeWithScore, got {type(item).__name__}; "
                "wrap nodes as NodeWithScore(node=TextNode(text=...))"
            )
            raise TypeError(msg)
    return items


def check_positive_int(value: object, name: str) -> int:
    """``similarity_top_k`` and ``top_n``: a positive int (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        msg = f"{name} must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value
