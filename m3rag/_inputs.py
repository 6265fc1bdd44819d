"""Validation of the texts and pairs every encode and rerank entry point takes, done up front.

The tokenizer fails late and vaguely on bad input (a lone surrogate raises a ``TypeError`` that
names neither the text nor the character), so each entry point checks its whole input first and
names the offending index. Empty strings are valid: they encode as ``<s></s>``, as FlagEmbedding
does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "as_list",
    "check_api_key",
    "check_min_score",
    "check_positive_int",
    "check_rerank_inputs",
    "check_strings",
    "check_text",
    "validate_pairs",
    "validate_texts",
]


def as_list(value: object, name: str, what: str) -> list[Any]:
    """``value`` as a list, refusing a bare string (which would be read character by character).

    The framework adapters use it for every list argument.

    Raises:
        TypeError: ``value`` is a string, bytes, a mapping or not iterable.
    """
    kind = type(value).__name__
    if isinstance(value, (str, bytes)):
        msg = f"{name} must be a list of {what}, got a single {kind}; wrap it in a list"
        raise TypeError(msg)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        msg = f"{name} must be a list of {what}, got {kind}"
        raise TypeError(msg)
    return list(value)


def check_strings(value: object, name: str = "texts") -> list[str]:
    """A list (or any non-string iterable) of strings UTF-8 can encode, as a list.

    Unlike `validate_texts`, a bare string is refused rather than taken as one text.

    Raises:
        TypeError: A bare string, a non-iterable, or an item that is not a string (named by
            index).
        ValueError: An item with a lone surrogate.
    """
    items = as_list(value, name, "strings")
    return [check_text(item, f"{name}[{i}]") for i, item in enumerate(items)]


def check_api_key(value: object, name: str = "api_key") -> str:
    """An API key: a non-empty string of printable ASCII without spaces.

    HTTP clients send a header's other characters in different encodings (Latin-1, UTF-8) or not
    at all, and servers trim its spaces, so such a key could not match for every client. The
    message never shows the key.

    Raises:
        ValueError: Anything else.
    """
    if not isinstance(value, str) or not value.strip():
        msg = f"{name} is empty; give a non-empty key or none"
        raise ValueError(msg)
    if not all("!" <= c <= "~" for c in value):
        msg = (
            f"{name} must be printable ASCII without spaces (letters, digits and punctuation): "
            "headers cannot carry other characters reliably"
        )
        raise ValueError(msg)
    return value


def check_positive_int(value: object, name: str) -> int:
    """``k``, ``top_n`` and the like: a positive int (not a bool).

    Raises:
        ValueError: Anything else (the message names ``name`` and the value).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        msg = f"{name} must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value


def check_min_score(value: object) -> float | None:
    """A relevance cutoff: ``None`` or a finite number (not a bool).

    Raises:
        ValueError: Anything else.
    """
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        msg = f"min_score must be None or a finite number, got {value!r}"
        raise ValueError(msg)
    return value


def check_text(text: object, label: str) -> str:
    """Return ``text`` if it is a string that UTF-8 can encode.

    Args:
        text: The value to check.
        label: How the message names it, e.g. ``"texts[3]"`` or ``"query"``.

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: ``text`` holds a lone surrogate (the message gives its position).
    """
    if not isinstance(text, str):
        nested = isinstance(text, (list, tuple))
        hint = " (nested lists are not accepted; flatten them)" if nested else ""
        msg = f"{label} must be a string, got {type(text).__name__}{hint}"
        raise TypeError(msg)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = (
            f"{label} has a lone surrogate {text[exc.start]!r} at position {exc.start}, which "
            "UTF-8 cannot encode (text decoded with errors='surrogateescape', or a broken "
            "\\ud83d-style escape); clean it, e.g. "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        )
        raise ValueError(msg) from exc
    return text


def validate_texts(texts: object, *, what: str = "texts") -> list[str]:
    """Check that ``texts`` is a string or a sequence of strings; return it as a list.

    Raises:
        TypeError: ``texts`` is not a string or a sequence, or an item is not a string (the
            message names its index and type).
        ValueError: A text holds a lone surrogate (the message names its index and position).
    """
    if isinstance(texts, str):
        return [check_text(texts, what)]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        msg = f"{what} must be a string or a list of strings, got {type(texts).__name__}"
        raise TypeError(msg)
    return [check_text(text, f"{what}[{i}]") for i, text in enumerate(texts)]


def validate_pairs(pairs: object) -> tuple[list[str], list[str]]:
    """Split ``(query, passage)`` pairs (or one pair) into queries and passages.

    Raises:
        TypeError: ``pairs`` is not a list of pairs, or an item is not a 2-tuple (or 2-list) of
            strings (the message names its index).
        ValueError: A text holds a lone surrogate (the message names the pair and the side).
    """
    items: Sequence[object]
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
        items = [pairs]
    elif isinstance(pairs, Sequence) and not isinstance(pairs, (str, bytes, bytearray)):
        items = pairs
    else:
        msg = f"pairs must be a list of (query, passage) tuples, got {type(pairs).__name__}"
        raise TypeError(msg)
    queries: list[str] = []
    passages: list[str] = []
    for i, pair in enumerate(items):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            msg = f"pairs[{i}] must be a (query, passage) pair of strings, got {pair!r:.80}"
            raise TypeError(msg)
        queries.append(check_text(pair[0], f"pairs[{i}][0] (the query)"))
        passages.append(check_text(pair[1], f"pairs[{i}][1] (the passage)"))
    return queries, passages


def check_rerank_inputs(query: str, passages: Sequence[str], top_n: int | None) -> list[str]:
    """The arguments of [`Reranker.rerank`][m3rag.Reranker.rerank], checked; returns the passages.

    Raises:
        TypeError: ``query`` or a passage is not a string, or ``passages`` is one string.
        ValueError: ``top_n`` is not a positive int, or a text holds a lone surrogate.
    """
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0):
        msg = f"top_n must be a positive int or None, got {top_n!r}"
        raise ValueError(msg)
    check_text(query, "query")
    if isinstance(passages, str):
        msg = "passages must be a list of strings, got a single string; wrap it in a list"
        raise TypeError(msg)
    return validate_texts(passages, what="passages")
