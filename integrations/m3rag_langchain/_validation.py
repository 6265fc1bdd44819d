"""The one place the LangChain adapters check their arguments before calling m3rag.

LangChain types most inputs as ``Iterable``/``list``, so a bare string slips through and is read
character by character (``add_texts("xyz")`` indexed three documents); a list of strings where
Documents are expected fails deep inside with an ``AttributeError``. Each check names the
argument, the index for batches, and says what to pass instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.documents import Document

from m3rag._inputs import as_list as _as_list
from m3rag._inputs import check_positive_int, check_text
from m3rag._inputs import check_strings as check_texts

__all__ = [
    "check_documents",
    "check_ids",
    "check_metadatas",
    "check_positive_int",
    "check_text",
    "check_texts",
]


def check_documents(value: object, name: str = "documents") -> list[Document]:
    """A list of LangChain ``Document`` objects, as a list."""
    items = _as_list(value, name, "Documents")
    for i, item in enumerate(items):
        if not isinstance(item, Document):
            msg = (
                f"{name}[{i}] must be a langchain_core Document, got {type(item).__name__}; "
                "wrap texts as Document(page_content=text)"
            )
            raise TypeError(msg)
    return items


def check_metadatas(value: object, n: int) -> list[dict[str, Any]] | None:
    """``None``, or one metadata dict per text."""
    if value is None:
        return None
    items = _as_list(value, "metadatas", "dicts")
    if len(items) != n:
        msg = f"metadatas has {len(items)} entries for {n} texts; pass one dict per text"
        raise ValueError(msg)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            msg = f"metadatas[{i}] must be a dict, got {type(item).__name__}"
            raise TypeError(msg)
    return [dict(m) for m in items]


def check_ids(value: object, n: int | None = None) -> list[str | None] | None:
    """``None``, or one id (a string, or ``None`` for a generated one) per item."""
    if value is None:
        return None
    items = _as_list(value, "ids", "strings")
    if n is not None and len(items) != n:
        msg = f"ids has {len(items)} entries for {n} texts; pass one id per text"
        raise ValueError(msg)
    for i, item in enumerate(items):
        if item is not None and not isinstance(item, str):
            msg = f"ids[{i}] must be a string, got {type(item).__name__}"
            raise TypeError(msg)
    return items
