"""m3rag filters compiled to Milvus boolean expressions over a JSON metadata field.

Milvus compares JSON values loosely: ``meta["x"] == 1`` also matches ``true`` and ``1.0``, and
``meta["x"] >= 1`` matches ``true``. m3rag's filters follow JSON's types (``true`` is not ``1``,
``"1"`` is not ``1``; ``1`` equals ``1.0``, see [`Filter.matches`][m3rag.Filter.matches]), so a
[`MilvusStore`][m3rag.index.milvus.MilvusStore] keeps a second JSON field, ``mtypes``, with
the JSON type of every top-level metadata value (`type_tags`), and every compiled clause
checks it::

    {"year": {"$gte": 2020}}  ->  (meta["year"] >= 2020 and mtypes["year"] == "n")
    {"lang": {"$in": ["en", "de"]}}
        ->  ((meta["lang"] == "en" and mtypes["lang"] == "s")
             or (meta["lang"] == "de" and mtypes["lang"] == "s"))

(Milvus refuses ``in`` on a JSON path, hence the ``or``.) String literals escape only
backslash, double quote, newline, carriage return and tab, the escapes both milvus-lite and
the Milvus server parse; other characters are written as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from m3rag.index.filters import Filter

__all__ = ["compile_filter", "ids_expr", "literal", "type_tags"]

_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def literal(text: str) -> str:
    """A Milvus string literal of ``text`` (double-quoted)."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):  # pragma: no cover - Filter.parse refuses these
        msg = f"{value!r} cannot be written in a Milvus expression"
        raise ValueError(msg)
    return repr(float(value))


def _tag(value: object) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, (int, float)):
        return "n"
    if isinstance(value, str):
        return "s"
    return "o"  # null, lists, objects: never equal to a scalar, never in a range


def type_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The JSON type of each top-level metadata value: ``b``, ``n``, ``s`` or ``o`` (other)."""
    return {key: _tag(value) for key, value in metadata.items()}


def _equal(path: str, tags: str, value: object) -> str:
    if isinstance(value, bool):
        return f'({path} == {"true" if value else "false"} and {tags} == "b")'
    if isinstance(value, str):
        return f'({path} == {literal(value)} and {tags} == "s")'
    assert isinstance(value, (int, float))  # noqa: S101 - Filter.parse checked the scalars
    return f'({path} == {_number(value)} and {tags} == "n")'


def compile_filter(
    spec: Mapping[str, Any] | Filter | None, *, meta: str = "meta", types: str = "mtypes"
) -> str:
    """The Milvus expression of an m3rag filter (``""`` for no filter).

    Raises:
        TypeError, ValueError: As [`Filter.parse`][m3rag.Filter.parse] for a bad filter.
    """
    flt = Filter.parse(spec)
    if flt is None:
        return ""
    parts: list[str] = []
    for field, op, value in flt.clauses:
        key = literal(field)
        path, tags = f"{meta}[{key}]", f"{types}[{key}]"
        if op == "$eq":
            parts.append(_equal(path, tags, value))
        elif op == "$in":
            if not value:
                parts.append("false")
            else:
                parts.append("(" + " or ".join(_equal(path, tags, v) for v in value) + ")")
        else:
            parts.append(f'({path} {_RANGE[op]} {_number(value)} and {tags} == "n")')
    return " and ".join(parts)


def ids_expr(ids: list[str], field: str = "id") -> str:
    """``field in [...]`` for string ids (pymilvus's own ``get`` does not escape quotes)."""
    return f"{field} in [" + ", ".join(literal(i) for i in ids) + "]"
