"""JSON forms of m3rag's value objects, shared by the server and the remote client.

No framework here: the client imports this module without the ``serve`` extra.

ColBERT matrices travel either as nested lists (``"json"``) or compactly (``"base64"``): the
little-endian float32 bytes of the ``[t, d]`` matrix, base64-encoded, with its shape -- a third
of the size of the JSON numbers and exact.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag.results import Hit, PathScore, SearchResults
from m3rag.types import M3Output

__all__ = [
    "decode_matrix",
    "encode_matrix",
    "output_from_json",
    "output_to_json",
    "results_from_json",
    "results_to_json",
]


def encode_matrix(matrix: npt.NDArray[np.float32]) -> dict[str, Any]:
    """``{"shape": [t, d], "dtype": "<f4", "data": base64}`` of a float32 matrix."""
    data = np.ascontiguousarray(matrix, dtype="<f4")
    return {
        "shape": list(data.shape),
        "dtype": "<f4",
        "data": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def decode_matrix(value: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    """The matrix of [`encode_matrix`][]."""
    if value.get("dtype") != "<f4":
        msg = f"unsupported matrix dtype {value.get('dtype')!r}; expected '<f4'"
        raise ValueError(msg)
    shape = tuple(int(x) for x in value["shape"])
    raw = np.frombuffer(base64.b64decode(value["data"]), dtype="<f4")
    return raw.reshape(shape).astype(np.float32)


def output_to_json(
    out: M3Output, *, colbert_format: str = "json", arrays: bool = False
) -> list[dict[str, Any]]:
    """One object per text: ``dense``, ``lexical_weights``, ``colbert``, ``token_count``.

    Lexical weights' token ids become string keys (JSON); heads not computed are left out.
    With ``arrays``, dense vectors and JSON-form ColBERT matrices stay float32 arrays, for a
    serializer that writes numpy arrays itself (orjson's ``OPT_SERIALIZE_NUMPY``) instead of
    going through a Python float per number.
    """
    items: list[dict[str, Any]] = []
    for i in range(len(out)):
        item: dict[str, Any] = {
            "token_count": int(out.token_counts[i]),
            "truncated": bool(out.truncated[i]),
        }
        if out.dense_vecs is not None:
            item["dense"] = out.dense_vecs[i] if arrays else out.dense_vecs[i].tolist()
        if out.lexical_weights is not None:
            item["lexical_weights"] = {str(k): v for k, v in out.lexical_weights[i].items()}
        if out.colbert_vecs is not None:
            mat = out.colbert_vecs[i]
            if colbert_format == "base64":
                item["colbert"] = encode_matrix(mat)
            else:
                item["colbert"] = np.ascontiguousarray(mat) if arrays else mat.tolist()
        items.append(item)
    return items


def output_from_json(items: Sequence[Mapping[str, Any]], *, dim: int | None = None) -> M3Output:
    """The [`M3Output`][m3rag.M3Output] of [`output_to_json`][]'s list.

    A number past float32's range becomes infinity, quietly: whoever reads the output checks
    that it is finite (the clients refuse such an answer).
    """
    n = len(items)

    def has(key: str) -> bool:
        return n > 0 and all(key in it for it in items)

    dense = None
    if has("dense"):
        with np.errstate(over="ignore"):
            dense = np.asarray([it["dense"] for it in items], dtype=np.float32)
    elif n == 0 and dim is not None:
        dense = np.zeros((0, dim), dtype=np.float32)
    lexical = (
        [{int(k): float(v) for k, v in it["lexical_weights"].items()} for it in items]
        if has("lexical_weights")
        else None
    )
    colbert = None
    if has("colbert"):
        colbert = []
        for it in items:
            value = it["colbert"]
            if isinstance(value, Mapping):
                colbert.append(decode_matrix(value))
            else:
                with np.errstate(over="ignore"):
                    matrix = np.asarray(value, dtype=np.float32)
                colbert.append(matrix.reshape(len(value), -1))
    return M3Output(
        dense,
        lexical,
        colbert,
        np.asarray([int(it.get("token_count", 0)) for it in items], dtype=np.int64),
        np.asarray([bool(it.get("truncated", False)) for it in items], dtype=np.bool_),
    )


def results_to_json(
    results: SearchResults, *, spans: Sequence[list[tuple[int, int]]] | None = None
) -> dict[str, Any]:
    """A search's JSON: the query, the paths, the candidate count and every hit's scores."""
    hits = []
    for i, hit in enumerate(results):
        item: dict[str, Any] = {
            "id": hit.id,
            "text": hit.text,
            "metadata": dict(hit.metadata),
            "score": hit.score,
            "fused_score": hit.fused_score,
            "rerank_score": hit.rerank_score,
            "paths": {
                p: {
                    "raw": s.raw,
                    "normalized": s.normalized,
                    "rank": s.rank,
                    "recalled": s.recalled,
                }
                for p, s in hit.paths.items()
            },
            "parent_id": hit.parent_id,
            "chunk_id": hit.chunk_id,
            "chunks": hit.chunks,
        }
        if spans is not None:
            item["highlights"] = [list(s) for s in spans[i]]
        hits.append(item)
    return {
        "query": results.query,
        "paths": list(results.paths),
        "candidates": results.candidates,
        "hits": hits,
    }


def results_from_json(value: Mapping[str, Any]) -> SearchResults:
    """The [`SearchResults`][m3rag.SearchResults] of [`results_to_json`][]."""
    hits = tuple(
        Hit(
            id=h["id"],
            text=h["text"],
            metadata=dict(h["metadata"]),
            score=float(h["score"]),
            fused_score=float(h["fused_score"]),
            rerank_score=None if h["rerank_score"] is None else float(h["rerank_score"]),
            paths={
                p: PathScore(float(s["raw"]), float(s["normalized"]), int(s["rank"]), s["recalled"])
                for p, s in h["paths"].items()
            },
            parent_id=h.get("parent_id"),
            chunk_id=h.get("chunk_id"),
            chunks=int(h.get("chunks", 1)),
        )
        for h in value["hits"]
    )
    return SearchResults(value["query"], hits, tuple(value["paths"]), int(value["candidates"]))
