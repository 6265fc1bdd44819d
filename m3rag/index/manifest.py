"""The collection manifest, ``manifest.json``: read, checked field by field, typed.

The manifest is the commit point of a collection (see `m3rag.index.collection`). A manifest
that parses as JSON but lacks a field, or holds one of the wrong type, is damage: it is reported
as an [`IndexFormatError`][m3rag.errors.IndexFormatError] naming ``manifest.json`` and the field,
never as a
``KeyError`` from deep inside a store.
"""

from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3rag._version import __version__
from m3rag.errors import CollectionNotFoundError, IndexFormatError
from m3rag.types import HEADS, Head

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Manifest", "read_manifest"]

FORMAT = "m3rag-collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _is_int(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


@dataclass(frozen=True)
class Manifest:
    """The fields of a collection manifest every reader relies on, checked.

    Attributes:
        generation: The committed generation.
        next_key: Keys below this are committed documents (live or tombstoned).
        lengths: Committed items per store (``tombstones``, ``colbert`` rows, ``lexical``
            entries).
        heads: The heads stored.
        dim: Dense size (when ``dense`` is stored).
        colbert_dim: ColBERT size (when ``colbert`` is stored).
        vocab_size: Token ids of lexical weights are below this, when recorded.
        analysis: The BM25 analysis record (``version``, ``lang``, ``families``); ``None`` for
            a collection made before it was recorded (the legacy analyzer).
    """

    generation: int
    next_key: int
    lengths: dict[str, int]
    heads: tuple[Head, ...]
    dim: int | None
    colbert_dim: int | None
    vocab_size: int | None
    analysis: dict[str, Any] | None = None

    @classmethod
    def check(cls, data: object, path: Path) -> Manifest:
        """Check a parsed manifest; the typed view of its fields.

        Raises:
            IndexFormatError: Not an m3rag manifest, a newer format, or a field missing or of
                the wrong type (the message names the file and the field).
        """
        if not isinstance(data, dict):
            msg = f"{path} is not an m3rag collection manifest (not a JSON object)"
            raise IndexFormatError(msg)
        problem = _field_problem(data)
        if problem is not None:
            field, wanted = problem
            got = repr(data.get(field)) if field in data else "missing"
            msg = (
                f"{path} is damaged: field {field!r} must be {wanted}, got {got}; restore the "
                "collection from a backup or rebuild it"
            )
            raise IndexFormatError(msg)
        if data["format_version"] > FORMAT_VERSION:
            msg = (
                f"{path.parent} uses collection format {data['format_version']}, newer than the "
                f"{FORMAT_VERSION} this m3rag {__version__} reads; upgrade m3rag"
            )
            raise IndexFormatError(msg)
        heads = data["heads"]
        return cls(
            generation=data["generation"],
            next_key=data["next_key"],
            lengths=dict(data["lengths"]),
            heads=tuple(heads),
            dim=data.get("dim") if "dense" in heads else None,
            colbert_dim=data.get("colbert_dim") if "colbert" in heads else None,
            vocab_size=data.get("vocab_size"),
            analysis=data.get("analysis"),
        )


def _field_problem(data: dict[str, Any]) -> tuple[str, str] | None:
    """The first required field that is missing or of the wrong type: ``(field, wanted)``."""
    if data.get("format") != FORMAT:
        return "format", f"{FORMAT!r} (is this an m3rag collection?)"
    if not _is_int(data.get("format_version"), 1):
        return "format_version", "a positive int"
    for field in ("generation", "next_key"):
        if not _is_int(data.get(field)):
            return field, "a non-negative int"
    lengths = data.get("lengths")
    if not isinstance(lengths, dict) or not all(
        isinstance(k, str) and _is_int(v) for k, v in lengths.items()
    ):
        return "lengths", "a dict of non-negative ints"
    heads = data.get("heads")
    if not isinstance(heads, list) or any(h not in HEADS for h in heads):
        return "heads", f"a list of {list(HEADS)}"
    wanted: list[tuple[str, bool, str]] = []
    if "dense" in heads:
        wanted += [
            ("dim", _is_int(data.get("dim"), 1), "a positive int (dense is stored)"),
            ("dense_dtype", data.get("dense_dtype") in ("float32", "float16"), "a dense dtype"),
            ("dense_scan", data.get("dense_scan") in ("int8", None), "'int8' or null"),
            (
                "dense_max_norm",
                _is_number(data.get("dense_max_norm", 0.0)),
                "a finite non-negative number",
            ),
        ]
    if "colbert" in heads:
        wanted += [
            ("colbert_dim", _is_int(data.get("colbert_dim"), 1), "a positive int"),
            (
                "colbert_dtype",
                data.get("colbert_dtype") in ("float16", "float32", "bfloat16", "int8"),
                "one of float16, float32, bfloat16, int8",
            ),
        ]
    lexical = data.get("lexical")
    vocab = data.get("vocab_size")
    wanted += [
        (
            "lexical",
            isinstance(lexical, dict)
            and _is_number(lexical.get("max_error"))
            and _is_int(lexical.get("max_bit")),
            "a dict with a finite max_error and an int max_bit",
        ),
        ("vocab_size", vocab is None or _is_int(vocab, 1), "a positive int or null"),
        ("ann", isinstance(data.get("ann"), (dict, type(None))), "a dict or null"),
        ("encoder", isinstance(data.get("encoder"), (dict, type(None))), "a dict or null"),
        (
            "analysis",
            _analysis_ok(data.get("analysis")),
            "null or a dict of an int version, a str lang and a list of str families",
        ),
    ]
    return next(((field, want) for field, ok, want in wanted if not ok), None)


def _analysis_ok(analysis: object) -> bool:
    if analysis is None:
        return True
    if not isinstance(analysis, dict):
        return False
    families = analysis.get("families")
    return (
        _is_int(analysis.get("version"), 1)
        and isinstance(analysis.get("lang"), str)
        and isinstance(families, list)
        and all(isinstance(f, str) for f in families)
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``folder/manifest.json``; returns the raw dict (checked by `Manifest`).

    Raises:
        CollectionNotFoundError: No manifest in ``folder``.
        IndexFormatError: The manifest cannot be read or parsed, is of a newer format, or lacks
            a field (the message names the file and the field).
    """
    path = folder / MANIFEST
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system
        if isinstance(exc, OSError) and exc.errno != errno.ENAMETOOLONG:
            raise
        found = False
    if not found:
        msg = f"no collection at {folder} (no {MANIFEST}); create one with Collection.create"
        raise CollectionNotFoundError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        msg = f"{path} is damaged: {exc}; restore the collection from a backup or rebuild it"
        raise IndexFormatError(msg) from exc
    Manifest.check(data, path)
    result: dict[str, Any] = data
    return result
