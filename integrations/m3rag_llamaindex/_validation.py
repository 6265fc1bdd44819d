"""The one place the LlamaIndex adapters check their arguments before calling m3rag.

LlamaIndex iterates whatever it is given: a bare string passed as a batch is embedded character
by character, a plain dict of filters fails with an ``AttributeError``, a list of strings where
nodes are expected fails deep inside. Each check names the argument, the index for batches, and
says what to pass instead.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import NodeWithScore

from m3rag._inputs import as_list as _as_list
from m3rag._inputs import check_positive_int, check_text
from m3rag._inputs import check_strings as check_texts

__all__ = ["check_nodes", "check_positive_int", "check_text", "check_texts", "loaded_name"]


def loaded_name(given: str | None, field: str, model: Any, argument: str) -> str:
    """The name of a model passed in (``encoder=``, ``reranker=``): its ``model_name_or_path``.

    Raises:
        ValueError: ``given`` (the ``field`` the caller also set) names another model.
    """
    actual = str(model.model_name_or_path)
    if given is not None and given != actual:
        msg = (
            f"{field}={given!r} but {argument}= is {actual!r}; leave {field} out "
            f"(it is read from the {argument})"
        )
        raise ValueError(msg)
    return actual


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
