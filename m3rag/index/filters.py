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

__all__ = ["OPERATORS", "Filter", "json_path", "plain_field"]

OPERATORS = ("$eq", "$in", "$gt", "$gte", "$lt", "$lte")
_RANGE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
Scalar = str | int | float | bool


_INT64 = (-(2**63), 2**63 - 1)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_scalar(field: str, value: object) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"filter on {field!r}: {value!r} is not a finite number"
        raise ValueError(msg)
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not _INT64[0] <= value <= _INT64[1]
    ):
        msg = (
            f"filter on {field!r}: an int of {value.bit_length()} bits is outside the signed "
            "64-bit integers metadata can hold"
        )
        raise ValueError(msg)
    if isinstance(value, str) and not _encodable(value):
        msg = f"filter on {field!r}: {value!r} is not valid Unicode (a lone surrogate)"
        raise ValueError(msg)
    if not isinstance(value, (str, int, float, bool)):
        msg = (
            f"filter on {field!r}: values must be str, int, float or bool, "
            f"got {type(value).__name__}"
        )
        raise TypeError(msg)
    return value


def _check_number(field: str, op: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"filter on {field!r}: {op} needs a finite number, got {value!r}"
        raise ValueError(msg)
    # ints first: math.isfinite(10**400) raises OverflowError, and SQLite binds int64 only
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        msg = (
            f"filter on {field!r}: {op} bound, an int of {value.bit_length()} bits, is outside "
            "the signed 64-bit integers metadata can hold; use a float bound"
        )
        raise ValueError(msg)
    if isinstance(value, float) and not math.isfinite(value):
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
            if not _encodable(field) or "\x00" in field:
                msg = (
                    f"filter field name {field!r} cannot be stored: a lone surrogate or NUL; "
                    "metadata refuses such names too"
                )
                raise ValueError(msg)
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
            # a name a JSON path can spell is looked up by path (fast); any other (a '"', a
            # backslash, a control character) through json_each, which decodes the keys
            plain = plain_field(field)
            path = json_path(field)
            if plain:
                extract, kind = f"json_extract({column}, ?)", f"json_type({column}, ?)"
            else:
                extract, kind = "je.value", "je.type"
            conds: list[str] = []
            args: list[Any] = []
            values = (value if op == "$in" else (value,)) if op in ("$eq", "$in") else ()
            for v in values:
                conds.append(f"({extract} = ? AND {kind} {_json_types(v)})")
                args.extend([path, _sql_value(v), path] if plain else [_sql_value(v)])
            if op not in ("$eq", "$in"):
                conds.append(f"({extract} {_RANGE_SQL[op]} ? AND {kind} IN ('integer', 'real'))")
                args.extend([path, value, path] if plain else [value])
            if not conds:  # $in of nothing
                parts.append("0")
                continue
            cond = "(" + " OR ".join(conds) + ")"
            if plain:
                parts.append(cond)
            else:
                parts.append(
                    f"EXISTS (SELECT 1 FROM json_each({column}) AS je WHERE je.key = ? AND {cond})"  # noqa: S608 - placeholders only
                )
                args.insert(0, field)
            params.extend(args)
        return " AND ".join(parts) if parts else "1", params


def plain_field(field: str) -> bool:
    """Whether SQLite can address ``field`` by a quoted JSON path.

    SQLite compares a path's quoted label with the key as written in the JSON text, escapes
    included, and ends the label at the first ``"``: names JSON writes with escapes (``"``,
    backslash, control characters) are looked up with ``json_each`` instead.
    """
    return json.dumps(field, ensure_ascii=False)[1:-1] == field


def json_path(field: str) -> str:
    """The SQLite JSON path of a top-level field (see `plain_field`)."""
    return '$."' + field + '"'


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
