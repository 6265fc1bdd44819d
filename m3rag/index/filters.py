"""Metadata filters: equality, membership and numeric ranges, AND-ed over fields.

A filter is a plain dict, validated once into a [`Filter`][m3rag.Filter]::

    {"lang": "zh"}                               # equality
    {"lang": {"$in": ["zh", "ja"]}}              # membership
    {"year": {"$gte": 2020, "$lt": 2024}}        # numeric range (any of $gt $gte $lt $lte)
    {"lang": "en", "year": {"$gte": 2020}}       # several fields: all must hold

The same filter is compiled to SQL for the document store and evaluated in Python by
[`Filter.matches`][] (used by tests as the oracle, and by adapters on in-memory data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OPERATORS", "Filter"]

OPERATORS = ("$eq", "$in", "$gt", "$gte", "$lt", "$lte")
_RANGE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
Scalar = str | int | float | bool


def _check_scalar(field: str, value: object) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"filter on {field!r}: {value!r} is not a finite number"
        raise ValueError(msg)
    if not isinstance(value, (str, int, float, bool)):
        msg = (
            f"filter on {field!r}: values must be str, int, float or bool, "
            f"got {type(value).__name__}"
        )
        raise TypeError(msg)
    return value


def _check_number(field: str, op: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"filter on {field!r}: {op} needs a finite number, got {value!r}"
        raise ValueError(msg)
    return value


@dataclass(frozen=True)
class Filter:
    """A validated metadata filter; build it with [`parse`][m3rag.Filter.parse].

    Attributes:
        clauses: ``(field, operator, value)`` triples, all of which must hold.
    """

    clauses: tuple[tuple[str, str, Any], ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | Filter | None) -> Filter | None:
        """Validate a filter dict (``None`` and ``{}`` mean no filter).

        Raises:
            TypeError: ``spec`` is not a dict, or a value has an unsupported type.
            ValueError: An unknown operator (the message lists the valid ones) or a bad bound.
        """
        if spec is None or isinstance(spec, Filter):
            return spec
        if not isinstance(spec, Mapping):
            msg = f"filter must be a dict such as {{'lang': 'en'}}, got {type(spec).__name__}"
            raise TypeError(msg)
        clauses: list[tuple[str, str, Any]] = []
        for field, cond in spec.items():
            if not isinstance(field, str) or not field:
                msg = f"filter field names must be non-empty strings, got {field!r}"
                raise TypeError(msg)
            if isinstance(cond, Mapping):
                if not cond:
                    msg = f"filter on {field!r} has no operator; use one of {', '.join(OPERATORS)}"
                    raise ValueError(msg)
                for op, value in cond.items():
                    if op not in OPERATORS:
                        msg = (
                            f"unknown filter operator {op!r} on {field!r}; "
                            f"use one of {', '.join(OPERATORS)}"
                        )
                        raise ValueError(msg)
                    if op == "$eq":
                        clauses.append((field, op, _check_scalar(field, value)))
                    elif op == "$in":
                        if isinstance(value, (str, bytes)) or not isinstance(
                            value, (list, tuple, set, frozenset)
                        ):
                            msg = f"filter on {field!r}: $in needs a list of values, got {value!r}"
                            raise TypeError(msg)
                        values = tuple(_check_scalar(field, v) for v in value)
                        clauses.append((field, op, values))
                    else:
                        clauses.append((field, op, _check_number(field, op, value)))
            else:
                clauses.append((field, "$eq", _check_scalar(field, cond)))
        return cls(tuple(clauses)) if clauses else None

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """Evaluate the filter on one metadata dict (missing fields never match)."""
        for field, op, value in self.clauses:
            if field not in metadata:
                return False
            have = metadata[field]
            if op == "$eq":
                if not _same(have, value):
                    return False
            elif op == "$in":
                if not any(_same(have, v) for v in value):
                    return False
            else:
                if isinstance(have, bool) or not isinstance(have, (int, float)):
                    return False
                ok = {
                    "$gt": have > value,
                    "$gte": have >= value,
                    "$lt": have < value,
                    "$lte": have <= value,
                }[op]
                if not ok:
                    return False
        return True

    def to_sql(self, column: str = "metadata") -> tuple[str, list[Any]]:
        """A SQLite condition over a JSON column, and its parameters."""
        parts: list[str] = []
        params: list[Any] = []
        for field, op, value in self.clauses:
            path = json_path(field)
            extract = f"json_extract({column}, ?)"
            kind = f"json_type({column}, ?)"
            if op in ("$eq", "$in"):
                values = value if op == "$in" else (value,)
                if not values:
                    parts.append("0")
                    continue
                ors = []
                for v in values:
                    ors.append(f"({extract} = ? AND {kind} {_json_types(v)})")
                    params.extend([path, _sql_value(v), path])
                parts.append("(" + " OR ".join(ors) + ")")
            else:
                parts.append(f"({extract} {_RANGE_SQL[op]} ? AND {kind} IN ('integer', 'real'))")
                params.extend([path, value, path])
        return " AND ".join(parts) if parts else "1", params


def json_path(field: str) -> str:
    """The SQLite JSON path of a top-level field, quoted so any field name is safe."""
    return '$."' + field.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _same(a: object, b: object) -> bool:
    # JSON semantics: true is not 1, "1" is not 1; 1 equals 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b


def _sql_value(v: Scalar) -> Any:
    return int(v) if isinstance(v, bool) else v


def _json_types(v: Scalar) -> str:
    if isinstance(v, bool):
        return "IN ('true', 'false')"
    if isinstance(v, str):
        return "= 'text'"
    return "IN ('integer', 'real')"


def dumps_metadata(metadata: Mapping[str, Any]) -> str:
    """Serialise metadata as JSON, refusing what JSON cannot hold (NaN, objects, non-str keys)."""
    return json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False, sort_keys=True)
