"""Where a JSON value can be bent: shared by the fuzz tests of requests and of answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def places(value: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every field and item in ``value``, and a new field in each object."""
    if isinstance(value, dict):
        yield value, "unknown_field"
        for k, v in value.items():
            yield value, k
            yield from places(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield value, i
            yield from places(v)
