"""The ColBERT side collection of a MilvusStore: float32 matrices packed into chunk rows.

``<name>_colbert`` holds, per document, ``ceil(ntok / tokens_per_chunk)`` rows::

    pk      VARCHAR primary key "<chunk>:<id>"     doc    VARCHAR id (inverted index)
    chunk   INT64 chunk number                     data   VARCHAR base64 of the chunk's bytes
    dummy   FLOAT_VECTOR dim 2 (Milvus loads no collection without a vector field)

where ``ntok`` is the main row's token count; see
[`ColbertLayout`][m3rag.index.milvus.ColbertLayout]. Its property ``m3rag.side_of`` names the
main collection it belongs to, so that dropping a store never drops a collection that merely
shares the name.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from m3rag.errors import IndexFormatError
from m3rag.index.milvus._limits import MAX_ID_BYTES, MAX_TEXT_BYTES
from m3rag.index.milvus._server import Caller
from m3rag.index.milvus_expr import ids_expr

__all__ = ["SIDE_KEY", "ColbertLayout", "ColbertSide"]

SIDE_KEY = "m3rag.side_of"
"""The side collection's property naming its main collection (set at creation)."""
_SIDE_FIELDS = frozenset({"pk", "doc", "chunk", "data", "dummy"})

_CHUNK_CHARS = MAX_TEXT_BYTES  # a packed ColBERT chunk is one VARCHAR of base64
_FETCH_CHUNKS = 1024  # chunk rows per lookup (primary keys in one expression)
_FETCH_BYTES = 16 * 2**20  # and at most this much base64 per lookup or upsert (gRPC messages)


@dataclass(frozen=True)
class ColbertLayout:
    """How ColBERT matrices are packed into the side collection (recorded in ``m3rag.config``).

    A document's ``[t, dim]`` float32 matrix is cut into chunks of ``tokens_per_chunk`` whole
    tokens (the last one shorter); chunk ``c`` is the row ``"<c>:<id>"`` whose ``data`` VARCHAR
    holds the chunk's little-endian float32 bytes, base64-encoded. The main row's ``ntok`` gives
    the number of chunks, so a fetch is a primary-key lookup of exactly those rows.

    Why: one row per token vector, fetched by a ``doc in [...]`` filter, took about a second per
    100 documents on milvus-lite; primary-key lookups of packed rows take a few tens of
    milliseconds. It stays exact: the float32 bytes round-trip bit for bit (no quantisation).
    The side rows carry a 2-d dummy vector only because Milvus loads no collection without a
    vector field (milvus-lite has neither binary vectors nor arrays of structs).
    """

    KIND: ClassVar[str] = "packed-base64-float32-le"
    VERSION: ClassVar[int] = 1

    dim: int
    tokens_per_chunk: int

    @classmethod
    def for_dim(cls, dim: int) -> ColbertLayout:
        """The layout packing as many whole ``dim``-d tokens as one VARCHAR holds.

        Raises:
            ValueError: One token does not fit in a VARCHAR (``dim`` over 12,287).
        """
        raw = _CHUNK_CHARS // 4 * 3  # base64 of n bytes is 4 * ceil(n / 3) characters
        per_chunk = raw // (4 * dim)
        if per_chunk < 1:
            msg = (
                f"colbert_dim={dim} is too large for Milvus: one float32 token vector must fit "
                f"in a {_CHUNK_CHARS}-byte VARCHAR as base64 (at most {raw // 4} dimensions)"
            )
            raise ValueError(msg)
        return cls(dim, per_chunk)

    def to_config(self) -> dict[str, Any]:
        """The ``colbert_layout`` entry of ``m3rag.config``."""
        return {
            "kind": self.KIND,
            "version": self.VERSION,
            "tokens_per_chunk": self.tokens_per_chunk,
        }

    @classmethod
    def from_config(cls, raw: object, dim: object, name: str) -> ColbertLayout:
        """The recorded layout of collection ``name``.

        Raises:
            IndexFormatError: No layout, or one this m3rag does not read.
        """
        if (
            not isinstance(raw, Mapping)
            or raw.get("kind") != cls.KIND
            or raw.get("version") != cls.VERSION
            or not isinstance(raw.get("tokens_per_chunk"), int)
            or raw["tokens_per_chunk"] < 1
            or not isinstance(dim, int)
            or dim < 1
        ):
            msg = (
                f"the ColBERT layout of the Milvus collection {name!r} is {raw!r}; this m3rag "
                f"reads {cls.KIND!r} version {cls.VERSION}; upgrade m3rag or re-create the "
                "collection"
            )
            raise IndexFormatError(msg)
        return cls(dim, int(raw["tokens_per_chunk"]))

    def chunks(self, ntok: int) -> int:
        """Rows holding a matrix of ``ntok`` tokens (0 for an empty matrix)."""
        return math.ceil(ntok / self.tokens_per_chunk)

    def pack(self, matrix: npt.NDArray[np.float32]) -> list[str]:
        """The chunks of a ``[t, dim]`` matrix, as base64 strings (none when ``t == 0``)."""
        arr = np.ascontiguousarray(matrix, dtype="<f4").reshape(-1, self.dim)
        step = self.tokens_per_chunk
        return [
            base64.b64encode(arr[start : start + step].tobytes()).decode("ascii")
            for start in range(0, arr.shape[0], step)
        ]

    def unpack(self, parts: Mapping[int, str], ntok: int) -> npt.NDArray[np.float32]:
        """The ``[ntok, dim]`` float32 matrix from its chunks by number (a missing one: zeros).

        Raises:
            IndexFormatError: A chunk is not base64 of whole float32 tokens.
        """
        out = np.zeros((ntok, self.dim), dtype=np.float32)
        for c, text in parts.items():
            start = c * self.tokens_per_chunk
            if start >= ntok:
                continue
            try:
                raw = base64.b64decode(text, validate=True)
            except ValueError as exc:
                msg = f"a packed ColBERT chunk is not base64: {exc}"
                raise IndexFormatError(msg) from exc
            if len(raw) % (4 * self.dim):
                msg = (
                    f"a packed ColBERT chunk holds {len(raw)} bytes, not whole {self.dim}-d tokens"
                )
                raise IndexFormatError(msg)
            rows = np.frombuffer(raw, dtype="<f4").reshape(-1, self.dim)
            stop = min(ntok, start + rows.shape[0])
            out[start:stop] = rows[: stop - start]
        return out


class ColbertSide:
    """Reads and writes the packed ColBERT rows of one side collection."""

    def __init__(self, client: Any, name: str, layout: ColbertLayout, call: Caller) -> None:
        self._client = client
        self.name = name
        self.layout = layout
        self._call = call

    def create(self, pm: Any, *, owner: str) -> None:
        """Create the side collection of main collection ``owner`` (``pm``: pymilvus)."""
        DataType = pm.DataType
        side = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        side.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES + 12)
        side.add_field("doc", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        side.add_field("chunk", DataType.INT64)
        side.add_field("data", DataType.VARCHAR, max_length=_CHUNK_CHARS)
        # Milvus loads no collection without a vector field: a constant 2-d stand-in
        side.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
        index = self._client.prepare_index_params()
        index.add_index("dummy", index_type="FLAT", metric_type="IP")
        # deletes (of a document, of chunks past a shorter version) filter on ``doc``
        index.add_index("doc", index_type="INVERTED")
        self._call(
            "create_collection",
            lambda: self._client.create_collection(
                self.name,
                schema=side,
                index_params=index,
                consistency_level="Strong",
                properties={SIDE_KEY: owner},
            ),
        )

    def owner(self) -> str | None:
        """The main collection this side collection belongs to, ``None`` if not an m3rag side.

        The ``m3rag.side_of`` mark says it; a collection made before the mark counts as the
        side of the name it extends when it has exactly the side's fields.
        """
        described = self._call(
            "describe_collection", lambda: self._client.describe_collection(self.name)
        )
        mark = (described.get("properties") or {}).get(SIDE_KEY)
        if mark is not None:
            return str(mark)
        fields = {str(f.get("name")) for f in described.get("fields") or ()}
        return self.name.removesuffix("_colbert") if fields == _SIDE_FIELDS else None

    def fetch(self, ids: list[str], ntok: list[int]) -> list[npt.NDArray[np.float32]]:
        """The matrices of ``ids`` (of ``ntok`` tokens each), by primary-key lookups.

        ``pk in [...]`` on the primary key, not a filter on ``doc``: the lookup that makes
        packed rows fast. (pymilvus's ``query(ids=...)`` builds the same expression, with
        unescaped quotes: an id with ``'`` would break it.)
        """
        layout = self.layout
        per_chunk = 4 * math.ceil(4 * layout.dim * layout.tokens_per_chunk / 3)
        wanted = {i: n for i, n in zip(ids, ntok, strict=True) if n > 0}
        groups: list[list[str]] = [[]]
        size = 0
        for doc_id, n in wanted.items():
            for c in range(layout.chunks(n)):
                if groups[-1] and (
                    len(groups[-1]) >= _FETCH_CHUNKS or size + per_chunk > _FETCH_BYTES
                ):
                    groups.append([])
                    size = 0
                groups[-1].append(f"{c}:{doc_id}")
                size += per_chunk
        parts: dict[str, dict[int, str]] = {i: {} for i in wanted}
        for group in groups:
            if not group:
                continue
            found = self._call(
                "query",
                lambda g=group: self._client.query(  # type: ignore[misc]
                    self.name,
                    filter=ids_expr(g, "pk"),
                    output_fields=["doc", "chunk", "data"],
                    limit=len(g),
                ),
            )
            for row in found:
                chunks = parts.get(str(row["doc"]))
                if chunks is not None:
                    chunks[int(row["chunk"])] = str(row["data"])
        empty = np.zeros((0, layout.dim), dtype=np.float32)
        return [layout.unpack(parts[i], wanted[i]) if i in wanted else empty.copy() for i in ids]

    def write(
        self, batch: list[tuple[str, npt.NDArray[np.float32] | None]]
    ) -> dict[int, list[str]]:
        """Upsert the chunk rows of ``batch`` (by ``"<chunk>:<id>"``); returns what to trim.

        Writing the same matrix again rewrites the same rows (idempotent). The result maps each
        new chunk count to its documents: pass it to `trim` once the main rows hold the new
        ``ntok``, so that no reader meets a main row whose chunks are gone.
        """
        layout = self.layout
        rows: list[dict[str, Any]] = []
        by_count: dict[int, list[str]] = {}
        for doc_id, matrix in batch:
            chunks = layout.pack(
                matrix if matrix is not None else np.zeros((0, layout.dim), np.float32)
            )
            for c, data in enumerate(chunks):
                rows.append(
                    {
                        "pk": f"{c}:{doc_id}",
                        "doc": doc_id,
                        "chunk": c,
                        "data": data,
                        "dummy": [0.0, 0.0],
                    }
                )
            by_count.setdefault(len(chunks), []).append(doc_id)
        part: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            part.append(row)
            size += len(row["data"])
            if size >= _FETCH_BYTES or len(part) >= _FETCH_CHUNKS:
                self._call("upsert", lambda r=part: self._client.upsert(self.name, r))  # type: ignore[misc]
                part, size = [], 0
        if part:
            self._call("upsert", lambda r=part: self._client.upsert(self.name, r))  # type: ignore[misc]
        return by_count

    def trim(self, by_count: Mapping[int, list[str]]) -> None:
        """Delete the chunks past each document's new count (a shorter version leaves none).

        Reads stop at the main row's ``ntok`` anyway; this frees the space.
        """
        for count, doc_ids in by_count.items():
            expr = f"chunk >= {count} and {ids_expr(doc_ids, 'doc')}"
            self._call("delete", lambda e=expr: self._client.delete(self.name, filter=e))  # type: ignore[misc]

    def load(self) -> None:
        """Load the side collection for reads."""
        self._call("load", lambda: self._client.load_collection(self.name))

    def flush(self) -> None:
        """Flush the side collection's writes."""
        self._call("flush", lambda: self._client.flush(self.name))

    def delete(self, ids: list[str]) -> None:
        """Delete every chunk of ``ids``."""
        self._call("delete", lambda: self._client.delete(self.name, filter=ids_expr(ids, "doc")))
