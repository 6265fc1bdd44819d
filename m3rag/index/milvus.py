"""A hybrid store on Milvus: the writer/reader API of [`Collection`][m3rag.Collection] on a server.

[`MilvusStore`][m3rag.MilvusStore] implements `m3rag.index.Store` and
`m3rag.index.WritableStore`, so ``HybridRetriever(MilvusStore(...))`` works unchanged. One
Milvus collection holds, per document (primary key: the m3rag id, ``VARCHAR``)::

    text      VARCHAR with an analyzer; Milvus's BM25 function fills ``bm25`` from it
    meta      JSON metadata            mtypes   JSON type of each metadata value (filters)
    dense     FLOAT_VECTOR (FLAT, IVF_FLAT, HNSW or AUTOINDEX, inner product)
    sparse    SPARSE_FLOAT_VECTOR: BGE-M3 lexical weights (inverted index, inner product)
    bm25      SPARSE_FLOAT_VECTOR made by the server (BM25 metric)
    ntok      ColBERT rows of the document    hash   SHA-256 of text + metadata

and a side collection ``<name>_colbert`` holding each document's float32 ColBERT matrix packed
into rows of whole tokens (primary key ``"<chunk>:<id>"``, the little-endian bytes base64-encoded
in a VARCHAR), fetched by primary key for exact MaxSim; see `ColbertLayout`. (Milvus >= 2.6.4
can hold the vectors as an array of structs in the main row; milvus-lite 3.2 cannot.)

**Exactness.** Milvus recalls candidates on each path; m3rag then scores every candidate itself
from the fetched vectors (dense inner product, lexical matching score, ColBERT MaxSim), never
trusting the server's own scores for those paths. BM25 scores come from the server (its
statistics live there) by a search restricted to the candidates.

**Writes are staged client-side** until [`commit`][m3rag.MilvusStore.commit], as in
`Collection`: a search does not see them, [`get`][m3rag.MilvusStore.get] and
[`count`][m3rag.MilvusStore.count] do. ``commit`` upserts (and deletes) and then flushes.
Milvus has no multi-row transactions: a commit interrupted half-way leaves some documents
written, and committing again (or re-running the ingest) converges, because every write is an
idempotent upsert by id.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from m3rag._optional import require
from m3rag.analysis import SNOWBALL, STOPWORDS, family_of
from m3rag.errors import (
    CollectionClosedError,
    CollectionNotFoundError,
    CommitError,
    DuplicateIdError,
    EmbeddingMismatchError,
    IndexFormatError,
    InvalidDocumentError,
    M3RagError,
    ReadOnlyError,
    RemoteStoreError,
    UnknownIdError,
)
from m3rag.index.collection import (
    MAX_TOKEN_ID,
    _check_encoder,
    _check_k,
    _check_text_query,
    _finite32,
    _id_list,
    _metadata_json,
    _token_problem,
    _utf8,
    _weight_problem,
    content_hash,
)
from m3rag.index.filters import Filter, dumps_metadata
from m3rag.index.milvus_expr import compile_filter, ids_expr, literal, type_tags
from m3rag.results import Hits
from m3rag.scoring import colbert_scores, lexical_scores
from m3rag.types import HEADS, Document, Head, M3Output

if TYPE_CHECKING:
    from m3rag.encoder import Encoder

__all__ = ["DENSE_INDEXES", "MilvusStore", "analyzer_params"]

logger = logging.getLogger(__name__)

CONFIG_KEY = "m3rag.config"
"""The collection property that records how m3rag made the collection (JSON)."""
CONFIG_VERSION = 2
"""2: ColBERT matrices packed into chunk rows (`ColbertLayout`); 1 held one row per token."""
DENSE_INDEXES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
"""Dense index types: FLAT recalls exactly; the others approximately (scores stay exact)."""
MAX_ID_BYTES = 512
MAX_TEXT_BYTES = 65_535
MAX_LIMIT = 16_384  # Milvus's largest topk / query window
_EMPTY_TOKEN = 2**32 - 2  # Milvus refuses an empty sparse vector: a zero-impact stand-in
_EMPTY_WEIGHT = 1e-30
_FETCH = 256  # ids per fetch query
_CHUNK_CHARS = MAX_TEXT_BYTES  # a packed ColBERT chunk is one VARCHAR of base64
_FETCH_CHUNKS = 1024  # packed chunks per fetch query (primary keys in one expression)
_FETCH_BYTES = 16 * 2**20  # and at most this much base64 per fetch query (gRPC messages)

T = TypeVar("T")


def analyzer_params(lang: str) -> dict[str, Any]:
    """The Milvus analyzer mirroring m3rag's BM25 family of ``lang`` as far as Milvus allows.

    Chinese gets ``jieba`` (a word segmenter, where the embedded index uses bigrams); languages
    with a Snowball stemmer get the standard tokenizer, lower-casing, the same stop-word list
    (where m3rag has one) and the same stemmer; every other language the standard tokenizer
    and lower-casing.

    Raises:
        UnknownLanguageError: ``lang`` is not a language code.
    """
    family = family_of(lang)
    if lang.strip().lower().replace("_", "-").split("-")[0] == "zh":
        return {"tokenizer": "jieba"}
    filters: list[Any] = ["lowercase"]
    if family in STOPWORDS:
        filters.append({"type": "stop", "stop_words": [f"_{SNOWBALL[family]}_"]})
    if family in SNOWBALL:
        filters.append({"type": "stemmer", "language": SNOWBALL[family]})
    return {"tokenizer": "standard", "filter": filters}


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


@dataclass
class _Put:
    text: str
    meta: dict[str, Any]
    meta_json: str
    dense: npt.NDArray[np.float32] | None
    sparse: dict[int, float] | None
    colbert: npt.NDArray[np.float32] | None


class MilvusStore:
    """A hybrid store in a Milvus collection, with the API of [`Collection`][m3rag.Collection].

    Args:
        uri: The server, e.g. ``"http://127.0.0.1:19530"`` (a ``milvus-lite server`` too).
        collection_name: The Milvus collection (a ColBERT side collection ``<name>_colbert``
            goes with it).
        encoder: Embeds documents and queries; recorded at creation and checked at opening.
        create: Create the collection if it does not exist (else open it; the recorded heads
            and sizes win over ``heads``/``dim``).
        token: The server's token (``"user:password"`` or an API key); ``None`` reads
            ``M3RAG_MILVUS_TOKEN`` from the environment. Never logged.
        db_name: The Milvus database.
        heads: Heads to store at creation (default: the encoder's, else all three).
        dim: Dense size without an encoder.
        colbert_dim: ColBERT size without an encoder.
        vocab_size: Lexical token ids are below this (default: the encoder's vocabulary).
        lang: BM25 analysis language at creation (see `analyzer_params`); ``"auto"``
            (per-document detection) is not available on Milvus.
        analyzer: Milvus ``analyzer_params`` to use instead of the one ``lang`` chooses.
        dense_index: One of `DENSE_INDEXES` (default ``"FLAT"``: exact recall).
        dense_index_params: Build parameters of the dense index (``{"M": 16, ...}``).
        dense_search_params: Search parameters (``{"ef": 128}``, ``{"nprobe": 16}``).
        recall_factor: Approximate dense indexes return ``recall_factor * k`` candidates,
            all rescored exactly (default 2).
        read_only: Refuse writes.
        timeout: Seconds for each server call (``None``: pymilvus's default).

    Raises:
        CollectionNotFoundError: The collection does not exist and ``create`` is false.
        IndexFormatError: The collection was not made by m3rag, or by a newer one.
        EncoderMismatchError: ``encoder`` differs from the recorded one.
        RemoteStoreError: The server cannot be reached or refused a call.
        MissingDependencyError: pymilvus is not installed (``pip install "m3rag[milvus]"``).

    Example:
        ```python
        store = MilvusStore("http://127.0.0.1:19530", "docs", encoder=encoder, create=True)
        store.add(["BGE M3 is an embedding model."], ids=["a"])
        store.commit()
        HybridRetriever(store).retrieve("embedding model", k=1)
        ```
    """

    def __init__(
        self,
        uri: str,
        collection_name: str,
        *,
        encoder: Encoder | None = None,
        create: bool = False,
        token: str | None = None,
        db_name: str | None = None,
        heads: Sequence[Head] | None = None,
        dim: int | None = None,
        colbert_dim: int | None = None,
        vocab_size: int | None = None,
        lang: str = "en",
        analyzer: Mapping[str, Any] | None = None,
        dense_index: str = "FLAT",
        dense_index_params: Mapping[str, Any] | None = None,
        dense_search_params: Mapping[str, Any] | None = None,
        recall_factor: int = 2,
        read_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        pymilvus = require("pymilvus", extra="milvus", purpose="MilvusStore")
        if not isinstance(collection_name, str) or not collection_name:
            msg = f"collection_name must be a non-empty string, got {collection_name!r}"
            raise TypeError(msg)
        if dense_index not in DENSE_INDEXES:
            msg = f"dense_index must be one of {list(DENSE_INDEXES)}, got {dense_index!r}"
            raise ValueError(msg)
        if (
            isinstance(recall_factor, bool)
            or not isinstance(recall_factor, int)
            or recall_factor < 1
        ):
            msg = f"recall_factor must be a positive int, got {recall_factor!r}"
            raise ValueError(msg)
        self._pm = pymilvus
        self.uri = uri
        self.name = collection_name
        self.side = f"{collection_name}_colbert"
        self.encoder = encoder
        self.read_only = read_only
        self.recall_factor = recall_factor
        self._timeout = timeout
        self._closed = True
        kwargs: dict[str, Any] = {"uri": uri}
        secret = token if token is not None else os.environ.get("M3RAG_MILVUS_TOKEN")
        if secret:
            kwargs["token"] = secret
        if db_name:
            kwargs["db_name"] = db_name
        if timeout is not None:
            kwargs["timeout"] = timeout
        self._client = self._call("connect", lambda: pymilvus.MilvusClient(**kwargs))
        self._closed = False
        try:
            exists = self._call("has_collection", lambda: self._client.has_collection(self.name))
            if not exists:
                if not create:
                    msg = (
                        f"no Milvus collection {collection_name!r} at {uri}; pass create=True "
                        "to create it"
                    )
                    raise CollectionNotFoundError(msg)
                if read_only:
                    msg = "create=True with read_only=True: a read-only store cannot create"
                    raise ValueError(msg)
                config = self._create(
                    heads=heads,
                    dim=dim,
                    colbert_dim=colbert_dim,
                    vocab_size=vocab_size,
                    lang=lang,
                    analyzer=analyzer,
                    dense_index=dense_index,
                    dense_index_params=dense_index_params,
                )
            else:
                config = self._read_config()
            self._config = config
            self.heads: tuple[Head, ...] = tuple(config["heads"])
            self.dim: int | None = config.get("dim")
            self.colbert_dim: int | None = config.get("colbert_dim")
            self.lang: str = config["lang"]
            self.dense_index: str = config.get("dense_index", "FLAT")
            self._layout: ColbertLayout | None = (
                ColbertLayout.from_config(config.get("colbert_layout"), self.colbert_dim, self.name)
                if "colbert" in self.heads
                else None
            )
            vocab = config.get("vocab_size")
            self._vocab_size = int(vocab) if isinstance(vocab, int) and vocab > 0 else MAX_TOKEN_ID
            if encoder is not None:
                _check_encoder(config, encoder)
            self._dense_search = dict(dense_search_params or {})
            self._call("load", lambda: self._client.load_collection(self.name))
            if "colbert" in self.heads:
                self._call("load", lambda: self._client.load_collection(self.side))
        except BaseException:
            self.close()
            raise
        self._staged: dict[str, _Put | None] = {}
        self._keys: dict[str, int] = {}
        self._id_of: list[str] = []
        self._rows: dict[str, dict[str, Any]] = {}
        self._has_field: dict[str, bool] = {}  # has_metadata answers until commit/refresh
        self._generation = 0

    # -- server calls ---------------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run a server call; any failure becomes a `RemoteStoreError` naming ``operation``."""
        try:
            return fn()
        except M3RagError:
            raise
        except Exception as exc:  # pymilvus and grpc raise many kinds; none may leak
            msg = f"Milvus {operation} on {self.name!r} failed: {_server_message(exc)}"
            raise RemoteStoreError(msg) from exc

    def _create(
        self,
        *,
        heads: Sequence[Head] | None,
        dim: int | None,
        colbert_dim: int | None,
        vocab_size: int | None,
        lang: str,
        analyzer: Mapping[str, Any] | None,
        dense_index: str,
        dense_index_params: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        encoder = self.encoder
        fingerprint = None
        if encoder is not None:
            fingerprint = encoder.fingerprint()
            chosen = tuple(heads) if heads is not None else tuple(encoder.heads)
            missing = [h for h in chosen if h not in encoder.heads]
            if missing:
                msg = f"the encoder cannot produce {missing}; it has {list(encoder.heads)}"
                raise ValueError(msg)
            dim, colbert_dim = encoder.dim, encoder.colbert_dim
            if vocab_size is None:
                vocab_size = getattr(encoder, "vocab_size", None)
        else:
            chosen = tuple(heads) if heads is not None else HEADS
        bad = [h for h in chosen if h not in HEADS]
        if bad:
            msg = f"heads must be a subset of {list(HEADS)} (empty: BM25 only), got {list(chosen)}"
            raise ValueError(msg)
        if "dense" in chosen and (not isinstance(dim, int) or dim < 1):
            msg = "dim (the dense size) is required to store dense vectors without an encoder"
            raise ValueError(msg)
        if "colbert" in chosen and (not isinstance(colbert_dim, int) or colbert_dim < 1):
            msg = "colbert_dim is required to store ColBERT vectors without an encoder"
            raise ValueError(msg)
        if lang == "auto":
            msg = (
                "lang='auto' (per-document language detection) is not available on Milvus, "
                "whose BM25 field has one analyzer: pass the corpus language, e.g. lang='en'"
            )
            raise ValueError(msg)
        params = dict(analyzer) if analyzer is not None else analyzer_params(lang)
        layout = ColbertLayout.for_dim(int(colbert_dim or 0)) if "colbert" in chosen else None
        config: dict[str, Any] = {
            "format": "m3rag-milvus",
            "version": CONFIG_VERSION,
            "heads": list(chosen),
            "dim": dim if "dense" in chosen else None,
            "colbert_dim": colbert_dim if "colbert" in chosen else None,
            "vocab_size": vocab_size if "sparse" in chosen else None,
            "lang": lang,
            "analyzer": params,
            "dense_index": dense_index,
            "encoder": fingerprint,
            "colbert_layout": layout.to_config() if layout is not None else None,
        }
        pm = self._pm
        DataType, Function, FunctionType = pm.DataType, pm.Function, pm.FunctionType
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field(
            "text",
            DataType.VARCHAR,
            max_length=MAX_TEXT_BYTES,
            enable_analyzer=True,
            analyzer_params=params,
        )
        schema.add_field("meta", DataType.JSON)
        schema.add_field("mtypes", DataType.JSON)
        schema.add_field("hash", DataType.VARCHAR, max_length=64)
        schema.add_field("ntok", DataType.INT64)
        schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
        index = self._client.prepare_index_params()
        index.add_index("bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        if "dense" in chosen:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
            index.add_index(
                "dense",
                index_type=dense_index,
                metric_type="IP",
                params=dict(dense_index_params or {}),
            )
        if "sparse" in chosen:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        schema.add_function(
            Function(
                name="m3rag_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["bm25"],
            )
        )
        props = {CONFIG_KEY: json.dumps(config)}
        if "colbert" in chosen:
            side = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            side.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES + 12)
            side.add_field("doc", DataType.VARCHAR, max_length=MAX_ID_BYTES)
            side.add_field("chunk", DataType.INT64)
            side.add_field("data", DataType.VARCHAR, max_length=_CHUNK_CHARS)
            # Milvus loads no collection without a vector field: a constant 2-d stand-in
            side.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
            side_index = self._client.prepare_index_params()
            side_index.add_index("dummy", index_type="FLAT", metric_type="IP")
            # deletes (of a document, of chunks past a shorter version) filter on ``doc``
            side_index.add_index("doc", index_type="INVERTED")
            self._call(
                "create_collection",
                lambda: self._client.create_collection(
                    self.side, schema=side, index_params=side_index, consistency_level="Strong"
                ),
            )
        self._call(
            "create_collection",
            lambda: self._client.create_collection(
                self.name,
                schema=schema,
                index_params=index,
                properties=props,
                consistency_level="Strong",
            ),
        )
        return config

    def _read_config(self) -> dict[str, Any]:
        described = self._call(
            "describe_collection", lambda: self._client.describe_collection(self.name)
        )
        raw = (described.get("properties") or {}).get(CONFIG_KEY)
        if raw is None:
            msg = (
                f"the Milvus collection {self.name!r} was not made by m3rag (no {CONFIG_KEY!r} "
                "property); use another collection_name"
            )
            raise IndexFormatError(msg)
        try:
            config: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            msg = f"the {CONFIG_KEY!r} property of {self.name!r} is not JSON: {exc}"
            raise IndexFormatError(msg) from exc
        version = config.get("version", 0) if isinstance(config, dict) else None
        if (
            not isinstance(config, dict)
            or config.get("format") != "m3rag-milvus"
            or not isinstance(version, int)
            or version > CONFIG_VERSION
        ):
            found = config.get("format") if isinstance(config, dict) else config
            msg = (
                f"{self.name!r} was made by a newer m3rag (format {found!r}, "
                f"version {version!r}); upgrade m3rag"
            )
            raise IndexFormatError(msg)
        if "colbert" in config.get("heads", ()) and version < 2:
            msg = (
                f"the Milvus collection {self.name!r} stores ColBERT vectors one row per token "
                "(m3rag-milvus version 1, an unreleased development layout) which this m3rag "
                "no longer reads; re-create the collection (drop it and ingest again)"
            )
            raise IndexFormatError(msg)
        return config

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self.read_only and not self._closed:
            self.commit()
        self.close()

    def close(self) -> None:
        """Close the connection; uncommitted changes are dropped (with a warning)."""
        if self._closed:
            return
        if getattr(self, "_staged", None):
            logger.warning("closing MilvusStore %r with uncommitted changes", self.name)
        self._staged = {}
        try:
            self._client.close()
        except Exception:  # pragma: no cover - best effort
            logger.debug("closing the Milvus client failed", exc_info=True)
        self._closed = True

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writer"
        state = "closed" if self._closed else f"heads={list(self.heads)}"
        return f"MilvusStore({self.uri!r}, {self.name!r}, {mode}, {state})"

    def drop(self) -> None:
        """Delete the collection (and its ColBERT side collection) on the server, and close."""
        self._check_open(write=True)
        for name in (self.name, self.side):
            if self._call("has_collection", lambda n=name: self._client.has_collection(n)):  # type: ignore[misc]
                self._call("drop_collection", lambda n=name: self._client.drop_collection(n))  # type: ignore[misc]
        self._staged = {}
        self.close()

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the configuration recorded with the collection.

        Heads, sizes, analyzer and encoder fingerprint: the counterpart of
        [`Collection.manifest`][m3rag.Collection.manifest].
        """
        self._check_open()
        copy: dict[str, Any] = json.loads(json.dumps(self._config))
        return copy

    @property
    def generation(self) -> int:
        """Commits made through this handle (Milvus has no global generation)."""
        return self._generation

    def _check_open(self, *, write: bool = False) -> None:
        if self._closed:
            msg = f"the MilvusStore {self.name!r} is closed; open a new one"
            raise CollectionClosedError(msg)
        if write and self.read_only:
            msg = f"the MilvusStore {self.name!r} is read-only; open it without read_only to write"
            raise ReadOnlyError(msg)

    def refresh(self) -> bool:
        """Forget fetched rows and cached answers, so the next reads ask the server again.

        Returns ``True`` (other writers' commits may have changed the collection).
        """
        self._check_open()
        self._rows = {}
        self._has_field = {}
        return True

    # -- keys -----------------------------------------------------------------------------------

    def _key(self, doc_id: str) -> int:
        key = self._keys.get(doc_id)
        if key is None:
            key = len(self._id_of)
            self._keys[doc_id] = key
            self._id_of.append(doc_id)
        return key

    def _ids_for(self, keys: npt.ArrayLike) -> list[str]:
        arr = np.asarray(keys)
        if arr.size == 0:
            return []
        if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            msg = f"keys must be a 1-d array of ints (Hits.keys), got {arr.dtype} {arr.shape}"
            raise ValueError(msg)
        n = len(self._id_of)
        if int(arr.min()) < 0 or int(arr.max()) >= n:
            msg = (
                f"keys must be keys this MilvusStore handed out in [0, {n}), got "
                f"{int(arr.min())}..{int(arr.max())}; take them from Hits.keys"
            )
            raise ValueError(msg)
        return [self._id_of[int(k)] for k in arr.tolist()]

    def _hits(self, ids: list[str], scores: Sequence[float] | npt.NDArray[Any]) -> Hits:
        keys = np.array([self._key(i) for i in ids], dtype=np.int64)
        return Hits(list(ids), np.asarray(scores, dtype=np.float32).reshape(-1), keys)

    # -- fetching -------------------------------------------------------------------------------

    def _output_fields(self) -> list[str]:
        fields = ["id", "text", "meta", "ntok"]
        if "dense" in self.heads:
            fields.append("dense")
        if "sparse" in self.heads:
            fields.append("sparse")
        return fields

    def _fetch(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Rows of ``ids`` present on the server (cached until the next search or commit)."""
        missing = [i for i in dict.fromkeys(ids) if i not in self._rows]
        fields = self._output_fields()
        for start in range(0, len(missing), _FETCH):
            chunk = missing[start : start + _FETCH]
            expr = ids_expr(chunk)
            rows = self._call(
                "query",
                lambda e=expr, c=chunk: self._client.query(  # type: ignore[misc]
                    self.name, filter=e, output_fields=fields, limit=len(c)
                ),
            )
            for row in rows:
                self._rows[str(row["id"])] = dict(row)
        return {i: self._rows[i] for i in ids if i in self._rows}

    def _rows_for_keys(self, keys: npt.ArrayLike) -> tuple[list[str], list[dict[str, Any] | None]]:
        ids = self._ids_for(keys)
        rows = self._fetch(ids)
        return ids, [rows.get(i) for i in ids]

    def _colbert_matrices(self, ids: list[str], ntok: list[int]) -> list[npt.NDArray[np.float32]]:
        """The ColBERT matrices of ``ids`` (of ``ntok`` tokens each), by primary-key lookups."""
        layout = self._require_layout()
        # one lookup per group of chunk rows, bounded in keys and in bytes returned
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
                    self.side,
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

    def _require_layout(self) -> ColbertLayout:
        if self._layout is None:  # pragma: no cover - the callers check the heads
            msg = f"the Milvus collection {self.name!r} holds no ColBERT vectors"
            raise ValueError(msg)
        return self._layout

    # -- validation -----------------------------------------------------------------------------

    def _require(self, head: Head) -> None:
        self._check_open()
        if head not in self.heads:
            msg = f"this store holds {list(self.heads)}, not {head}"
            raise ValueError(msg)

    def _dense_query(self, query: npt.ArrayLike) -> npt.NDArray[np.float32]:
        try:
            with np.errstate(all="ignore"):
                q = np.asarray(query, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            msg = f"the dense query must be a vector of {self.dim} floats: {exc}"
            raise ValueError(msg) from exc
        if q.shape[0] != self.dim:
            msg = f"query vector has {q.shape[0]} dimensions, the store {self.dim}"
            raise ValueError(msg)
        if not np.isfinite(q).all():
            msg = "the dense query vector contains NaN or infinity (as float32); pass finite values"
            raise ValueError(msg)
        return q

    def _lexical_query(self, query: Mapping[int, float]) -> dict[int, float]:
        if not isinstance(query, Mapping):
            msg = f"the lexical query must be a dict of token id -> weight, got {query!r:.80}"
            raise TypeError(msg)
        out: dict[int, float] = {}
        for token, weight in query.items():
            problem = _token_problem(token, self._vocab_size) or _weight_problem(weight)
            if problem:
                msg = f"the lexical query is invalid: {problem}"
                raise ValueError(msg)
            out[int(token)] = float(weight)
        return out

    def _colbert_query(self, query: npt.ArrayLike) -> npt.NDArray[np.float32]:
        try:
            with np.errstate(all="ignore"):
                q = np.asarray(query, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            msg = f"the ColBERT query must be a [t, {self.colbert_dim}] array: {exc}"
            raise ValueError(msg) from exc
        if q.ndim != 2 or q.shape[1] != self.colbert_dim:
            msg = f"the ColBERT query has shape {q.shape}, expected [t, {self.colbert_dim}]"
            raise ValueError(msg)
        if not np.isfinite(q).all():
            msg = "the ColBERT query contains NaN or infinity (as float32); pass finite values"
            raise ValueError(msg)
        return q

    def _bm25_applies(self, lang: str | None) -> bool:
        """Whether a BM25 query analysed as ``lang`` can match this store's documents."""
        if lang is None:
            return True
        return family_of(lang) == family_of(self.lang)

    # -- recall ---------------------------------------------------------------------------------

    def _search(
        self, field: str, data: Any, limit: int, expr: str, params: Mapping[str, Any]
    ) -> list[tuple[str, float]]:
        found = self._call(
            "search",
            lambda: self._client.search(
                self.name,
                data=[data],
                anns_field=field,
                limit=limit,
                filter=expr,
                output_fields=["id"],
                search_params=dict(params),
            ),
        )
        return [(str(hit["id"]), float(hit["distance"])) for hit in found[0]]

    def _top(self, ids: list[str], scores: npt.NDArray[np.float32], k: int) -> Hits:
        order = sorted(range(len(ids)), key=lambda j: (-float(scores[j]), ids[j]))[:k]
        return self._hits([ids[j] for j in order], scores[order] if order else np.zeros(0))

    def search_dense(
        self,
        query: npt.ArrayLike,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        exact: bool | None = None,
    ) -> Hits:
        """Top ``k`` by dense inner product: recalled by Milvus, scored here exactly.

        With ``dense_index="FLAT"`` the recall is exact; with an approximate index Milvus
        returns ``recall_factor * k`` candidates (``exact=True``: at least ``MAX_LIMIT`` or
        every match, whichever is fewer), each rescored from its stored vector.

        Raises:
            ValueError: ``k`` not a positive int, a bad query or filter.
            RemoteStoreError: The server failed.
        """
        self._require("dense")
        k = _check_k(k)
        q = self._dense_query(query)
        expr = compile_filter(filter)
        self._rows = {}
        approximate = self.dense_index != "FLAT"
        limit = min(MAX_LIMIT, k * self.recall_factor if approximate else k)
        if approximate and exact is True:
            limit = MAX_LIMIT
        params: dict[str, Any] = {"metric_type": "IP"}
        if self._dense_search:
            params["params"] = dict(self._dense_search)
        elif self.dense_index == "HNSW":
            params["params"] = {"ef": max(64, limit)}
        found = self._search("dense", q.tolist(), limit, expr, params)
        ids = [i for i, _ in found]
        return self._top(ids, self._dense_exact(q, ids), k)

    def search_lexical(
        self,
        query: Mapping[int, float],
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
    ) -> Hits:
        """Top ``k`` by BGE-M3's lexical matching score (recalled by Milvus, scored here).

        An empty query (or one of zero weights) returns no hits without asking the server
        (Milvus refuses empty sparse vectors).
        """
        self._require("sparse")
        k = _check_k(k)
        weights = {t: w for t, w in self._lexical_query(query).items() if w > 0}
        expr = compile_filter(filter)
        self._rows = {}
        if not weights:
            return self._hits([], np.zeros(0, np.float32))
        limit = min(MAX_LIMIT, 2 * k + 16)
        found = self._search("sparse", weights, limit, expr, {"metric_type": "IP"})
        ids = [i for i, _ in found]
        scores = self._lexical_exact(weights, ids)
        keep = [j for j, s in enumerate(scores.tolist()) if s > 0]
        return self._top([ids[j] for j in keep], scores[keep], k)

    def search_bm25(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        lang: str | None = None,
    ) -> Hits:
        """Top ``k`` by the server's BM25 (scores made positive: milvus-lite negates them).

        ``lang``: only a language of this store's analysis family can match (one analyzer per
        Milvus field); another returns no hits.
        """
        self._check_open()
        k = _check_k(k)
        _check_text_query(query)
        expr = compile_filter(filter)
        self._rows = {}
        if not query.strip() or not self._bm25_applies(lang):
            return self._hits([], np.zeros(0, np.float32))
        found = self._search("bm25", query, min(MAX_LIMIT, k), expr, {"metric_type": "BM25"})
        ids = [i for i, _ in found]
        scores = np.array([abs(d) for _, d in found], dtype=np.float32)
        return self._top(ids, scores, k)

    def hybrid_search(
        self,
        query: str,
        query_embeddings: M3Output,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        ranker: str = "rrf",
        weights: Mapping[str, float] | None = None,
        recall_k: int = 100,
    ) -> Hits:
        """The opt-in fast mode: Milvus's own ``hybrid_search`` fuses the paths on the server.

        One round trip, no exact rescoring: each path contributes its top ``recall_k`` as
        Milvus scored them, and only the paths that recalled a document count for it (m3rag's
        retriever scores every candidate on every path, ColBERT included, then fuses).
        ``ranker="rrf"`` is reciprocal rank fusion (k=60); ``"weighted"`` sums the raw
        scores with ``weights`` per path (``dense``, ``lexical``, ``bm25``; default 1 each);
        Milvus normalises some metrics before weighting, m3rag z-scores. The scores are
        Milvus's fused scores. ColBERT is not used.
        """
        self._check_open()
        k = _check_k(k)
        _check_text_query(query)
        if not isinstance(query_embeddings, M3Output) or len(query_embeddings) != 1:
            msg = "query_embeddings must be an M3Output of one query"
            raise ValueError(msg)
        if ranker not in ("rrf", "weighted"):
            msg = f"ranker must be 'rrf' or 'weighted', got {ranker!r}"
            raise ValueError(msg)
        expr = compile_filter(filter)
        pm = self._pm
        limit = min(MAX_LIMIT, max(recall_k, k))
        requests: list[Any] = []
        paths: list[str] = []
        if "dense" in self.heads and query_embeddings.dense_vecs is not None:
            q = self._dense_query(query_embeddings.dense_vecs[0])
            requests.append(
                pm.AnnSearchRequest([q.tolist()], "dense", {"metric_type": "IP"}, limit, expr=expr)
            )
            paths.append("dense")
        if "sparse" in self.heads and query_embeddings.lexical_weights is not None:
            lex = {
                t: w
                for t, w in self._lexical_query(query_embeddings.lexical_weights[0]).items()
                if w > 0
            }
            if lex:  # Milvus refuses an empty sparse query
                requests.append(
                    pm.AnnSearchRequest([lex], "sparse", {"metric_type": "IP"}, limit, expr=expr)
                )
                paths.append("lexical")
        if query.strip():
            requests.append(
                pm.AnnSearchRequest([query], "bm25", {"metric_type": "BM25"}, limit, expr=expr)
            )
            paths.append("bm25")
        self._rows = {}
        if not requests:
            return self._hits([], np.zeros(0, np.float32))
        chosen = (
            pm.RRFRanker(60)
            if ranker == "rrf"
            else pm.WeightedRanker(*[float((weights or {}).get(p, 1.0)) for p in paths])
        )
        found = self._call(
            "hybrid_search",
            lambda: self._client.hybrid_search(
                self.name, requests, chosen, limit=min(k, MAX_LIMIT), output_fields=["id"]
            ),
        )
        ids = [str(h["id"]) for h in found[0]]
        return self._hits(ids, [float(h["distance"]) for h in found[0]])

    # -- exact scores ---------------------------------------------------------------------------

    def _dense_exact(self, q: npt.NDArray[np.float32], ids: list[str]) -> npt.NDArray[np.float32]:
        rows = self._fetch(ids)
        out = np.zeros(len(ids), dtype=np.float32)
        present = [j for j, i in enumerate(ids) if i in rows]
        if present:
            mat = np.array([rows[ids[j]]["dense"] for j in present], dtype=np.float32)
            out[present] = mat @ q
        return out

    def _lexical_exact(
        self, weights: Mapping[int, float], ids: list[str]
    ) -> npt.NDArray[np.float32]:
        rows = self._fetch(ids)
        docs = [_lexical_of(rows.get(i)) for i in ids]
        return lexical_scores(weights, docs)

    def dense_scores(
        self, query: npt.ArrayLike, keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Exact dense inner products of ``keys`` (0 for a document deleted meanwhile)."""
        self._require("dense")
        q = self._dense_query(query)
        return self._dense_exact(q, self._ids_for(keys))

    def lexical_scores(
        self, query: Mapping[int, float], keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Exact lexical matching scores of ``keys``."""
        self._require("sparse")
        return self._lexical_exact(self._lexical_query(query), self._ids_for(keys))

    def colbert_scores(
        self, query: npt.ArrayLike, keys: npt.NDArray[np.int64], *, precision: str = "float32"
    ) -> npt.NDArray[np.float32]:
        """Exact ColBERT MaxSim of ``keys`` from the fetched float32 vectors.

        ``precision`` is accepted for the protocol; the vectors are float32, so both values
        compute in float32.
        """
        self._require("colbert")
        if precision not in ("float32", "bfloat16"):
            msg = f"precision must be 'float32' or 'bfloat16', got {precision!r}"
            raise ValueError(msg)
        q = self._colbert_query(query)
        ids, rows = self._rows_for_keys(keys)
        ntok = [int(r["ntok"]) if r is not None else 0 for r in rows]
        return colbert_scores(q, self._colbert_matrices(ids, ntok))

    def colbert_vecs(self, keys: npt.NDArray[np.int64]) -> list[npt.NDArray[np.float32]]:
        """Stored ColBERT matrices of ``keys``."""
        self._require("colbert")
        ids, rows = self._rows_for_keys(keys)
        return self._colbert_matrices(ids, [int(r["ntok"]) if r else 0 for r in rows])

    def bm25_scores(
        self, query: str, keys: npt.NDArray[np.int64], *, lang: str | None = None
    ) -> npt.NDArray[np.float32]:
        """BM25 scores of ``keys`` (0 where no term matches), by the server, restricted to them."""
        self._check_open()
        _check_text_query(query)
        ids = self._ids_for(keys)
        out = np.zeros(len(ids), dtype=np.float32)
        if not ids or not query.strip() or not self._bm25_applies(lang):
            return out
        where: dict[str, float] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _FETCH):
            chunk = unique[start : start + _FETCH]
            for doc_id, d in self._search(
                "bm25", query, len(chunk), ids_expr(chunk), {"metric_type": "BM25"}
            ):
                where[doc_id] = abs(d)
        return np.array([where.get(i, 0.0) for i in ids], dtype=np.float32)

    def dense_vecs(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Stored dense vectors of ``keys``, float32 ``[len(keys), dim]``."""
        self._require("dense")
        ids, rows = self._rows_for_keys(keys)
        out = np.zeros((len(ids), int(self.dim or 0)), dtype=np.float32)
        for j, row in enumerate(rows):
            if row is not None:
                out[j] = np.asarray(row["dense"], dtype=np.float32)
        return out

    # -- documents ------------------------------------------------------------------------------

    def documents(self, keys: npt.NDArray[np.int64]) -> list[Document]:
        """Documents by key, in order.

        Raises:
            UnknownIdError: A document was deleted since it was recalled.
        """
        self._check_open()
        ids, rows = self._rows_for_keys(keys)
        gone = [i for i, r in zip(ids, rows, strict=True) if r is None]
        if gone:
            msg = f"{len(gone)} document(s) are no longer on the server: {gone[:10]}"
            raise UnknownIdError(msg)
        return [
            Document(r["text"], i, dict(r["meta"] or {}))
            for i, r in zip(ids, rows, strict=True)
            if r
        ]

    def _server_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are on the server."""
        found: set[str] = set()
        storable = [i for i in dict.fromkeys(ids) if _utf8(i)]
        for start in range(0, len(storable), _FETCH):
            chunk = storable[start : start + _FETCH]
            rows = self._call(
                "query",
                lambda c=chunk: self._client.query(  # type: ignore[misc]
                    self.name, filter=ids_expr(c), output_fields=["id"], limit=len(c)
                ),
            )
            found.update(str(r["id"]) for r in rows)
        return found

    def _live(self, ids: Sequence[str]) -> set[str]:
        """Ids that exist once the staged changes are applied."""
        on_server = self._server_ids([i for i in ids if i not in self._staged])
        return {
            i for i in ids if (self._staged[i] is not None if i in self._staged else i in on_server)
        }

    def get(self, ids: str | Sequence[str]) -> list[Document]:
        """Documents by id, in the order asked (staged documents included).

        Raises:
            UnknownIdError: Some ids are not in the store.
        """
        self._check_open()
        wanted = _id_list(ids)
        staged = {i: p for i in wanted if (p := self._staged.get(i)) is not None}
        server = [i for i in dict.fromkeys(wanted) if i not in self._staged]
        self._rows = {}
        rows = self._fetch([i for i in server if _utf8(i)])
        missing = [i for i in dict.fromkeys(wanted) if i not in staged and i not in rows]
        if missing:
            msg = f"{len(missing)} id(s) not in the store: {missing[:10]}"
            raise UnknownIdError(msg)
        out = []
        for i in wanted:
            if i in staged:
                out.append(Document(staged[i].text, i, json.loads(staged[i].meta_json)))
            else:
                out.append(Document(rows[i]["text"], i, dict(rows[i]["meta"] or {})))
        return out

    def _iterate(self, expr: str, fields: list[str]) -> Iterable[dict[str, Any]]:
        iterator = self._call(
            "query_iterator",
            lambda: self._client.query_iterator(
                self.name, batch_size=1000, filter=expr, output_fields=fields
            ),
        )
        try:
            while True:
                batch = self._call("query_iterator", iterator.next)
                if not batch:
                    break
                yield from batch
        finally:
            iterator.close()

    def ids(self) -> list[str]:
        """Every committed id (in the server's order)."""
        self._check_open()
        return [str(r["id"]) for r in self._iterate("", ["id"])]

    def ids_matching(self, filter: Mapping[str, Any] | Filter) -> list[str]:
        """Committed ids whose metadata matches ``filter``."""
        self._check_open()
        return [str(r["id"]) for r in self._iterate(compile_filter(filter), ["id"])]

    def metadata_values(self, field: str) -> set[Any]:
        """Distinct (hashable) values of a metadata field over the committed documents."""
        self._check_open()
        _check_field(field)
        if not _utf8(field):
            return set()
        expr = f"exists meta[{_lit(field)}]"
        values: set[Any] = set()
        for row in self._iterate(expr, ["meta"]):
            value = (row.get("meta") or {}).get(field)
            if isinstance(value, (str, int, float, bool)):
                values.add(value)
        return values

    def has_metadata(self, field: str) -> bool:
        """Whether a committed document has the metadata ``field``.

        The answer is kept until this handle's next [`commit`][m3rag.MilvusStore.commit] or
        [`refresh`][m3rag.MilvusStore.refresh] (a retriever asks on every construction, and
        a field no document has costs the server a scan of every row).
        """
        self._check_open()
        _check_field(field)
        if not _utf8(field):
            return False
        if field not in self._has_field:
            rows = self._call(
                "query",
                lambda: self._client.query(
                    self.name, filter=f"exists meta[{_lit(field)}]", output_fields=["id"], limit=1
                ),
            )
            self._has_field[field] = bool(rows)
        return self._has_field[field]

    def has_content(
        self, texts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> list[bool]:
        """Whether a committed document has exactly this text and metadata (resumable ingest)."""
        self._check_open()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            msg = "texts must be a list of strings"
            raise TypeError(msg)
        metas = metadata if metadata is not None else [{}] * len(texts)
        if len(metas) != len(texts):
            msg = f"metadata must be one dict per text ({len(texts)})"
            raise TypeError(msg)
        hashes = [content_hash(t, dumps_metadata(m)) for t, m in zip(texts, metas, strict=True)]
        live: set[str] = set()
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), _FETCH):
            chunk = unique[start : start + _FETCH]
            rows = self._call(
                "query",
                lambda c=chunk: self._client.query(  # type: ignore[misc]
                    self.name, filter=ids_expr(c, "hash"), output_fields=["hash"], limit=MAX_LIMIT
                ),
            )
            live.update(str(r["hash"]) for r in rows)
        return [h in live for h in hashes]

    def count(self) -> int:
        """Live documents, counting this handle's staged adds and deletes."""
        self._check_open()
        rows = self._call(
            "count",
            lambda: self._client.query(self.name, filter="", output_fields=["count(*)"]),
        )
        total = int(rows[0]["count(*)"])
        if self._staged:
            on_server = self._server_ids(list(self._staged))
            for doc_id, put in self._staged.items():
                if put is not None and doc_id not in on_server:
                    total += 1
                elif put is None and doc_id in on_server:
                    total -= 1
        return total

    # -- writing --------------------------------------------------------------------------------

    def add(
        self,
        texts_or_documents: str | Document | Iterable[str | Document],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        embeddings: M3Output | None = None,
    ) -> list[str]:
        """Stage new documents (sent at [`commit`][m3rag.MilvusStore.commit]).

        Raises:
            DuplicateIdError: An id repeats in the call, or exists (use `upsert`).
            InvalidDocumentError: Empty text, text over 65,535 UTF-8 bytes, an id over 512,
                metadata JSON cannot hold.
            EmbeddingMismatchError: ``embeddings`` do not fit (count, heads, sizes, values).
            ReadOnlyError: The store is read-only.

        A call that raises stages nothing.
        """
        return self._write(texts_or_documents, ids, metadata, embeddings, replace=False)

    def upsert(
        self,
        texts_or_documents: str | Document | Iterable[str | Document],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        embeddings: M3Output | None = None,
    ) -> list[str]:
        """Like [`add`][m3rag.MilvusStore.add], replacing documents whose id exists."""
        return self._write(texts_or_documents, ids, metadata, embeddings, replace=True)

    def _write(
        self,
        texts_or_documents: Any,
        ids: Sequence[str] | None,
        metadata: Any,
        embeddings: M3Output | None,
        *,
        replace: bool,
    ) -> list[str]:
        self._check_open(write=True)
        texts, doc_ids, metas = _normalise(texts_or_documents, ids, metadata)
        final = [i if i is not None else uuid.uuid4().hex for i in doc_ids]
        dupes = sorted(i for i, n in Counter(final).items() if n > 1)
        if dupes:
            msg = f"ids repeat within one call: {dupes[:10]}"
            raise DuplicateIdError(msg)
        for j, (text, doc_id) in enumerate(zip(texts, final, strict=True)):
            if len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
                msg = f"ids[{j}] is longer than Milvus's {MAX_ID_BYTES} bytes; use a shorter id"
                raise InvalidDocumentError(msg)
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                msg = (
                    f"document {j} (id {doc_id!r}) has more than {MAX_TEXT_BYTES} UTF-8 bytes, "
                    "Milvus's largest VARCHAR; chunk it (m3rag.Chunker)"
                )
                raise InvalidDocumentError(msg)
        meta_json = [_metadata_json(j, m) for j, m in enumerate(metas)]
        if not replace:
            existing = sorted(self._live(final))
            if existing:
                msg = (
                    f"{len(existing)} id(s) already exist: {existing[:10]}; use upsert() to "
                    "replace them"
                )
                raise DuplicateIdError(msg)
        if not texts:
            return []
        output = self._embed(texts, final, embeddings)
        for j, doc_id in enumerate(final):
            self._staged.pop(doc_id, None)  # re-staged ids go to the end, as the last write
            self._staged[doc_id] = _Put(
                text=texts[j],
                meta=json.loads(meta_json[j]),
                meta_json=meta_json[j],
                dense=None if output is None or output.dense_vecs is None else output.dense_vecs[j],
                sparse=None
                if output is None or output.lexical_weights is None
                else output.lexical_weights[j],
                colbert=None
                if output is None or output.colbert_vecs is None
                else output.colbert_vecs[j],
            )
        return final

    def _embed(
        self, texts: list[str], ids: list[str], embeddings: M3Output | None
    ) -> M3Output | None:
        if not self.heads:
            return None
        if embeddings is None:
            if self.encoder is None:
                msg = (
                    "this store has no encoder to embed texts with; pass encoder= to "
                    "MilvusStore, or pass precomputed embeddings="
                )
                raise ValueError(msg)
            flags = {h: (h in self.heads) for h in HEADS}
            embeddings = self.encoder.encode_corpus(
                texts, dense=flags["dense"], sparse=flags["sparse"], colbert=flags["colbert"]
            )
        return self._check_embeddings(embeddings, ids)

    def _check_embeddings(self, embeddings: M3Output, ids: Sequence[str]) -> M3Output:
        n = len(ids)
        if not isinstance(embeddings, M3Output):
            msg = f"embeddings must be an M3Output, got {type(embeddings).__name__}"
            raise TypeError(msg)
        if len(embeddings) != n:
            msg = f"embeddings hold {len(embeddings)} texts for {n} documents"
            raise EmbeddingMismatchError(msg)
        missing = [h for h in self.heads if h not in embeddings.heads]
        if missing:
            msg = f"embeddings lack the heads {missing} this store holds ({list(self.heads)})"
            raise EmbeddingMismatchError(msg)

        def bad(i: int, head: str, problem: str) -> EmbeddingMismatchError:
            return EmbeddingMismatchError(
                f"embeddings of document {i} (id {ids[i]!r}), {head} head: {problem}; "
                "nothing was staged"
            )

        if "dense" in self.heads and embeddings.dense_vecs is not None:
            if embeddings.dim != self.dim:
                msg = f"dense vectors have {embeddings.dim} dimensions, the store {self.dim}"
                raise EmbeddingMismatchError(msg)
            rows = ~_finite32(embeddings.dense_vecs).all(axis=1)
            if rows.any():
                raise bad(int(np.flatnonzero(rows)[0]), "dense", "NaN or infinity (as float32)")
        if "colbert" in self.heads and embeddings.colbert_vecs is not None:
            for i, m in enumerate(embeddings.colbert_vecs):
                if not isinstance(m, np.ndarray) or m.ndim != 2 or m.shape[1] != self.colbert_dim:
                    shape = getattr(m, "shape", None)
                    raise bad(i, "colbert", f"shape {shape}, expected [t, {self.colbert_dim}]")
                if not _finite32(m).all():
                    raise bad(i, "colbert", "NaN or infinity (as float32)")
        if "sparse" in self.heads and embeddings.lexical_weights is not None:
            for i, d in enumerate(embeddings.lexical_weights):
                if not isinstance(d, Mapping):
                    raise bad(i, "sparse", f"a {type(d).__name__}, expected a dict")
                for token, weight in d.items():
                    problem = _token_problem(token, self._vocab_size) or _weight_problem(weight)
                    if problem:
                        raise bad(i, "sparse", problem)
        return embeddings

    def delete(self, ids: str | Sequence[str]) -> None:
        """Stage deletions (sent at commit).

        Raises:
            UnknownIdError: Some ids are not in the store (nothing is staged then).
        """
        self._check_open(write=True)
        wanted = list(dict.fromkeys(_id_list(ids)))
        live = self._live(wanted)
        missing = [i for i in wanted if i not in live]
        if missing:
            msg = f"{len(missing)} id(s) not in the store: {missing[:10]}"
            raise UnknownIdError(msg)
        for i in wanted:
            self._staged.pop(i, None)
            self._staged[i] = None

    def rollback(self) -> None:
        """Drop every change staged since the last commit."""
        self._check_open()
        self._staged = {}

    def commit(self) -> int:
        """Send the staged changes (upserts, then deletes) and flush; returns this handle's count.

        Raises:
            CommitError: The server failed; the staged changes are kept, some may already be
                written: call ``commit()`` again (writes are idempotent) or ``rollback()``.
        """
        self._check_open(write=True)
        if not self._staged:
            return self._generation
        staged = self._staged
        puts = [(i, p) for i, p in staged.items() if p is not None]
        dels = [i for i, p in staged.items() if p is None]
        try:
            self._send(puts, dels)
        except RemoteStoreError as exc:
            msg = (
                f"commit to Milvus collection {self.name!r} failed: {exc}. The {len(staged)} "
                "staged change(s) are kept and some may already be written; call commit() "
                "again (every write is an idempotent upsert or delete by id) or rollback()."
            )
            raise CommitError(msg) from exc
        self._staged = {}
        self._rows = {}
        self._has_field = {}
        self._generation += 1
        return self._generation

    def _send(self, puts: list[tuple[str, _Put]], dels: list[str]) -> None:
        colbert = "colbert" in self.heads
        for start in range(0, len(puts), 256):
            batch = puts[start : start + 256]
            if colbert:
                self._send_colbert(batch)
            rows = [self._row(i, p) for i, p in batch]
            self._call("upsert", lambda r=rows: self._client.upsert(self.name, r))  # type: ignore[misc]
        for start in range(0, len(dels), _FETCH):
            chunk = dels[start : start + _FETCH]
            self._call("delete", lambda c=chunk: self._client.delete(self.name, filter=ids_expr(c)))  # type: ignore[misc]
            if colbert:
                self._call(
                    "delete",
                    lambda c=chunk: self._client.delete(self.side, filter=ids_expr(c, "doc")),  # type: ignore[misc]
                )
        self._call("flush", lambda: self._client.flush(self.name))
        if colbert:
            self._call("flush", lambda: self._client.flush(self.side))

    def _send_colbert(self, batch: list[tuple[str, _Put]]) -> None:
        """Chunk rows first (upserted by ``"<chunk>:<id>"``), then chunks past the new count go.

        Writing the same matrix again rewrites the same rows (idempotent); a shorter one
        leaves no stale chunk behind (reads stop at the main row's ``ntok`` anyway).
        """
        layout = self._require_layout()
        rows: list[dict[str, Any]] = []
        by_count: dict[int, list[str]] = {}
        for doc_id, put in batch:
            matrix = (
                put.colbert if put.colbert is not None else np.zeros((0, layout.dim), np.float32)
            )
            chunks = layout.pack(matrix)
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
                self._call("upsert", lambda r=part: self._client.upsert(self.side, r))  # type: ignore[misc]
                part, size = [], 0
        if part:
            self._call("upsert", lambda r=part: self._client.upsert(self.side, r))  # type: ignore[misc]
        for count, doc_ids in by_count.items():
            expr = f"chunk >= {count} and {ids_expr(doc_ids, 'doc')}"
            self._call("delete", lambda e=expr: self._client.delete(self.side, filter=e))  # type: ignore[misc]

    def _row(self, doc_id: str, put: _Put) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": doc_id,
            "text": put.text,
            "meta": put.meta,
            "mtypes": type_tags(put.meta),
            "hash": content_hash(put.text, put.meta_json),
            "ntok": 0 if put.colbert is None else len(put.colbert),
        }
        if "dense" in self.heads:
            row["dense"] = np.asarray(put.dense, dtype=np.float32).tolist()
        if "sparse" in self.heads:
            weights = {int(t): float(w) for t, w in (put.sparse or {}).items() if float(w) > 0}
            row["sparse"] = weights or {_EMPTY_TOKEN: _EMPTY_WEIGHT}
        return row


def _lexical_of(row: Mapping[str, Any] | None) -> dict[int, float]:
    if row is None:
        return {}
    sparse = row.get("sparse") or {}
    return {int(t): float(w) for t, w in sparse.items() if int(t) != _EMPTY_TOKEN}


def _lit(field: str) -> str:
    return literal(field)


def _check_field(field: object) -> None:
    if not isinstance(field, str) or not field:
        msg = f"field must be a non-empty string, got {field!r}"
        raise TypeError(msg)


def _server_message(exc: BaseException) -> str:
    """The server's message, without pymilvus's wrapping (never the token: pymilvus omits it)."""
    message = getattr(exc, "message", None)
    code = getattr(exc, "code", None)
    text = str(message) if message else str(exc) or type(exc).__name__
    return f"{text} (code {code})" if code is not None else text


def _normalise(
    texts_or_documents: Any,
    ids: Sequence[str] | None,
    metadata: Any,
) -> tuple[list[str], list[str | None], list[Mapping[str, Any]]]:
    """Texts, ids and metadata of a write, validated as `Collection.add` validates them."""
    if isinstance(texts_or_documents, (str, Document)):
        items: list[Any] = [texts_or_documents]
    elif isinstance(texts_or_documents, Iterable) and not isinstance(
        texts_or_documents, (bytes, Mapping)
    ):
        items = list(texts_or_documents)
    else:
        msg = (
            "texts_or_documents must be a string, a Document, or a list of them, "
            f"got {type(texts_or_documents).__name__}"
        )
        raise TypeError(msg)
    n = len(items)
    if ids is not None and (isinstance(ids, str) or len(ids) != n):
        got = 1 if isinstance(ids, str) else len(ids)
        msg = f"ids must be a list with one id per document ({n}), got {got}"
        raise ValueError(msg)
    if metadata is None:
        metas: list[Any] = [None] * n
    elif isinstance(metadata, Mapping):
        metas = [metadata] * n
    else:
        metas = list(metadata)
        if len(metas) != n:
            msg = f"metadata must have one entry per document ({n}), got {len(metas)}"
            raise ValueError(msg)
    for i, entry in enumerate(metas):
        if entry is not None and not isinstance(entry, Mapping):
            msg = f"metadata[{i}] must be a dict (or None), got {type(entry).__name__}"
            raise TypeError(msg)
    texts: list[str] = []
    out_ids: list[str | None] = []
    out_meta: list[Mapping[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            text, doc_id, meta = item.text, item.id, dict(item.metadata)
            if ids is not None and ids[i] is not None:
                doc_id = ids[i]
            if metas[i] is not None:
                meta = {**meta, **dict(metas[i])}
        elif isinstance(item, str):
            text = item
            doc_id = ids[i] if ids is not None else None
            meta = dict(metas[i] or {})
        else:
            msg = (
                f"texts_or_documents[{i}] must be a string or a Document, got {type(item).__name__}"
            )
            raise TypeError(msg)
        if not isinstance(text, str) or not text.strip():
            msg = f"document {i} has empty text; empty documents cannot be indexed"
            raise InvalidDocumentError(msg)
        if not _utf8(text):
            msg = f"document {i} has text that is not valid Unicode (a lone surrogate)"
            raise InvalidDocumentError(msg)
        if doc_id is not None and (not isinstance(doc_id, str) or not doc_id):
            msg = f"ids[{i}] must be a non-empty string, got {doc_id!r}"
            raise TypeError(msg)
        if doc_id is not None and not _utf8(doc_id):
            msg = f"ids[{i}] = {doc_id!r} is not valid Unicode (a lone surrogate)"
            raise InvalidDocumentError(msg)
        texts.append(text)
        out_ids.append(doc_id)
        out_meta.append(meta)
    return texts, out_ids, out_meta
