"""[`MilvusStore`][m3rag.MilvusStore]: the store's lifecycle, reads, exact scores and writes.

The collections it works on are made and checked in `schema`, the ColBERT side collection is
`colbert`, writes are prepared and sent by `writes`; input checks are `Collection`'s
(`m3rag.index.validation`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from m3rag._inputs import check_positive_int
from m3rag._optional import require
from m3rag.analysis import family_of
from m3rag.errors import (
    CollectionClosedError,
    CollectionExistsError,
    CollectionNotFoundError,
    CommitError,
    DuplicateIdError,
    ReadOnlyError,
    RemoteStoreError,
    UnknownIdError,
)
from m3rag.index.collection import _check_encoder, content_hash
from m3rag.index.filters import Filter, dumps_metadata
from m3rag.index.milvus._limits import EMPTY_TOKEN, FETCH, MAX_LIMIT, PAGE
from m3rag.index.milvus._server import Caller
from m3rag.index.milvus.colbert import ColbertLayout, ColbertSide
from m3rag.index.milvus.schema import DENSE_INDEXES, build_config, create_main, read_config
from m3rag.index.milvus.writes import Put, prepare, send
from m3rag.index.milvus_expr import compile_filter, ids_expr, literal
from m3rag.index.uri import redact_uri
from m3rag.index.validation import (
    MAX_TOKEN_ID,
    check_embeddings,
    check_k,
    check_keys,
    check_text_query,
    colbert_query,
    dense_query,
    id_list,
    lexical_query,
    utf8,
)
from m3rag.results import Hits
from m3rag.scoring import colbert_scores, lexical_scores
from m3rag.types import HEADS, Document, Head, M3Output

if TYPE_CHECKING:
    from m3rag.encoder import Encoder

__all__ = ["MilvusStore"]

logger = logging.getLogger(__name__)


class MilvusStore:
    """A hybrid store in a Milvus collection, with the API of [`Collection`][m3rag.Collection].

    Args:
        uri: The server, e.g. ``"http://127.0.0.1:19530"`` (a ``milvus-lite server`` too); not
            an IPv6 address (pymilvus misreads one). Kept as `uri` with any credentials
            replaced by ``***``, which is all that messages and the repr show.
        collection_name: The Milvus collection (with the ColBERT head, a side collection
            ``<name>_colbert`` goes with it). A create that fails drops what it made.
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
        CollectionExistsError: ``create`` would make a ColBERT side collection whose name
            another collection holds.
        ValueError: A URI pymilvus cannot use (an IPv6 address, a port not in 1..65535).
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

    concurrent_reads = True
    """Searches may run on several threads at once: each is a round trip to the server, so
    `HybridRetriever` sends a query's recall searches together rather than one after another."""

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
        check_positive_int(recall_factor, "recall_factor")
        if not isinstance(uri, str):
            msg = f"uri must be a string such as 'http://127.0.0.1:19530', got {type(uri).__name__}"
            raise TypeError(msg)
        secret = token if token is not None else os.environ.get("M3RAG_MILVUS_TOKEN")
        _check_server_uri(uri)
        self._pm = pymilvus
        self.uri = redact_uri(uri)
        """The server's URI as given, credentials and query values replaced by ``***``."""
        self.name = collection_name
        self.side = f"{collection_name}_colbert"
        self.encoder = encoder
        self.read_only = read_only
        self.recall_factor = recall_factor
        self._timeout = timeout
        self._closed = True
        self._made: list[str] = []  # collections this constructor created, undone if it fails
        kwargs: dict[str, Any] = {"uri": uri}
        if secret:
            kwargs["token"] = secret
        if db_name:
            kwargs["db_name"] = db_name
        if timeout is not None:
            kwargs["timeout"] = timeout
        # gRPC keepalive pings only during calls: an idle channel that pings is sent GOAWAY
        # ("too_many_pings") by servers with gRPC's default ping policy (milvus-lite), and the
        # dead channel then fails the next call
        kwargs["grpc_options"] = {"grpc.keepalive_permit_without_calls": False}
        if _major(getattr(pymilvus, "__version__", "0")) >= 3:
            # a channel of its own: closing this store never closes another one's connection
            kwargs["dedicated"] = True
        self._call = Caller(collection_name, _secrets(uri, secret))
        self._client = self._call("connect", lambda: pymilvus.MilvusClient(**kwargs))
        self._closed = False
        try:
            exists = self._call("has_collection", lambda: self._client.has_collection(self.name))
            if not exists:
                if not create:
                    msg = (
                        f"no Milvus collection {collection_name!r} at {self.uri}; pass "
                        "create=True to create it"
                    )
                    raise CollectionNotFoundError(msg)
                if read_only:
                    msg = "create=True with read_only=True: a read-only store cannot create"
                    raise ValueError(msg)
                config = build_config(
                    encoder=encoder,
                    heads=heads,
                    dim=dim,
                    colbert_dim=colbert_dim,
                    vocab_size=vocab_size,
                    lang=lang,
                    analyzer=analyzer,
                    dense_index=dense_index,
                )
                side = self._side(config)
                self._create(config, side, dense_index_params)
            else:
                config = read_config(self._client, self.name, self._call)
                side = self._side(config)
            self._config = config
            self.heads: tuple[Head, ...] = tuple(config["heads"])
            self.dim: int | None = config.get("dim")
            self.colbert_dim: int | None = config.get("colbert_dim")
            self.lang: str = config["lang"]
            self.dense_index: str = config.get("dense_index", "FLAT")
            self._colbert = side
            vocab = config.get("vocab_size")
            self._vocab_size = int(vocab) if isinstance(vocab, int) and vocab > 0 else MAX_TOKEN_ID
            if encoder is not None:
                _check_encoder(config, encoder)
            self._dense_search = dict(dense_search_params or {})
            self._call("load", lambda: self._client.load_collection(self.name))
            if side is not None:
                side.load()
        except BaseException:
            self._undo_create()
            self.close()
            raise
        self._made = []
        self._staged: dict[str, Put | None] = {}
        self._keys: dict[str, int] = {}
        self._id_of: list[str] = []
        self._key_lock = threading.Lock()  # searches may run on several threads at once
        self._rows: dict[str, dict[str, Any]] = {}
        self._has_field: dict[str, bool] = {}  # has_metadata answers until commit/refresh
        self._generation = 0

    def _side(self, config: Mapping[str, Any]) -> ColbertSide | None:
        """The ColBERT side collection ``config`` describes (``None`` without the head)."""
        if "colbert" not in config.get("heads", ()):
            return None
        layout = ColbertLayout.from_config(
            config.get("colbert_layout"), config.get("colbert_dim"), self.name
        )
        return ColbertSide(self._client, self.side, layout, self._call)

    def _create(
        self,
        config: Mapping[str, Any],
        side: ColbertSide | None,
        dense_index_params: Mapping[str, Any] | None,
    ) -> None:
        """Create the side collection (when the heads need one), then the main collection.

        The side comes first, so a main collection (what makes the store exist) never lacks
        its side. Each collection made is recorded in ``_made``: when anything later in the
        constructor fails, `_undo_create` drops them, and a failed create changes nothing.

        Raises:
            CollectionExistsError: ``<name>_colbert`` exists and is not a leftover side
                collection of this name.
        """
        if side is not None and self._exists(side.name):
            owner = side.owner()
            if owner != self.name:
                what = "the ColBERT side of another store" if owner else "not an m3rag one"
                msg = (
                    f"cannot create the Milvus collection {self.name!r}: its ColBERT side "
                    f"collection {side.name!r} already exists and is {what}; choose another "
                    "collection_name"
                )
                raise CollectionExistsError(msg)
            # the side of an earlier store of this name whose main collection is gone (a drop
            # cut short): nothing refers to it any more
            logger.info("dropping the leftover side collection %r", side.name)
            self._call("drop_collection", lambda: self._client.drop_collection(side.name))
        if side is not None:
            self._made.append(side.name)
            side.create(self._pm, owner=self.name)
        self._made.append(self.name)
        create_main(self._pm, self._client, self.name, config, self._call, dense_index_params)

    def _undo_create(self) -> None:
        """Drop the collections a failed constructor made (best effort: it is failing anyway)."""
        for name in reversed(self._made):
            try:
                if self._exists(name):
                    self._call("drop_collection", lambda n=name: self._client.drop_collection(n))  # type: ignore[misc]
            except Exception:
                logger.warning("could not drop %r after a failed create", name, exc_info=True)
        self._made = []

    def _exists(self, name: str) -> bool:
        return bool(self._call("has_collection", lambda: self._client.has_collection(name)))

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
        """Delete the collection (and its ColBERT side collection) on the server, and close.

        Only what this store owns is dropped: the side collection ``<name>_colbert`` only when
        the store has the ColBERT head and that collection is its side (marked so at creation,
        or, made by an m3rag before the mark, of the side's schema). A collection of that name
        that belongs to no one, or to someone else, is left alone.
        """
        self._check_open(write=True)
        side = self._colbert
        side_exists = side is not None and self._exists(side.name)
        owned = side is not None and side_exists and side.owner() == self.name
        if self._exists(self.name):
            self._call("drop_collection", lambda: self._client.drop_collection(self.name))
        if side is not None and owned:
            self._call("drop_collection", lambda: self._client.drop_collection(side.name))
        elif side is not None and side_exists:
            logger.warning(
                "left the collection %r in place: it is not the ColBERT side collection of %r",
                side.name,
                self.name,
            )
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
            with self._key_lock:
                key = self._keys.get(doc_id)
                if key is None:
                    key = len(self._id_of)
                    self._id_of.append(doc_id)
                    self._keys[doc_id] = key
        return key

    def _ids_for(self, keys: npt.ArrayLike) -> list[str]:
        arr = check_keys(keys, len(self._id_of))
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
        """Rows of ``ids`` present on the server (cached until the next search or commit).

        The answer is built from what this call found, so a search on another thread that
        resets the cache meanwhile costs a refetch at most, never a row.
        """
        cache = self._rows
        wanted = dict.fromkeys(ids)
        found = {i: cache[i] for i in wanted if i in cache}
        missing = [i for i in wanted if i not in found]
        fields = self._output_fields()
        for start in range(0, len(missing), FETCH):
            chunk = missing[start : start + FETCH]
            expr = ids_expr(chunk)
            rows = self._call(
                "query",
                lambda e=expr, c=chunk: self._client.query(  # type: ignore[misc]
                    self.name, filter=e, output_fields=fields, limit=len(c)
                ),
            )
            for row in rows:
                found[str(row["id"])] = cache[str(row["id"])] = dict(row)
        return {i: found[i] for i in ids if i in found}

    def _rows_for_keys(self, keys: npt.ArrayLike) -> tuple[list[str], list[dict[str, Any] | None]]:
        ids = self._ids_for(keys)
        rows = self._fetch(ids)
        return ids, [rows.get(i) for i in ids]

    def _colbert_matrices(self, ids: list[str], ntok: list[int]) -> list[npt.NDArray[np.float32]]:
        if self._colbert is None:  # pragma: no cover - the callers check the heads
            msg = f"the Milvus collection {self.name!r} holds no ColBERT vectors"
            raise ValueError(msg)
        return self._colbert.fetch(ids, ntok)

    # -- validation -----------------------------------------------------------------------------

    def _require(self, head: Head) -> None:
        self._check_open()
        if head not in self.heads:
            msg = f"this store holds {list(self.heads)}, not {head}"
            raise ValueError(msg)

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

    def _recall(
        self,
        field: str,
        data: Any,
        limit: int,
        expr: str,
        params: Callable[[int], dict[str, Any]],
        score: Callable[[list[str], list[float]], npt.NDArray[np.float32]],
        k: int,
    ) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Candidates of a search and their scores, widened until the ``k``-th place is settled.

        The server recalls ``limit`` candidates (``params(limit)``: its search parameters) and
        ``score`` scores them (from the ids and the server's distances). When the window is
        full and its last candidate ties with the ``k``-th best, documents the server left out
        may tie too, and which of them it returned is its own choice: the window grows (4x, up
        to `MAX_LIMIT`) until the tie ends inside it, so the ties are then broken by id among
        every tied document, the same whatever ``k``.
        """
        while True:
            found = self._search(field, data, limit, expr, params(limit))
            ids = [i for i, _ in found]
            scores = score(ids, [d for _, d in found])
            if len(ids) < limit or limit >= MAX_LIMIT or not _tied_at_edge(scores, k):
                return ids, scores
            limit = min(MAX_LIMIT, 4 * limit)

    def _top(self, ids: list[str], scores: npt.NDArray[np.float32], k: int) -> Hits:
        """The best ``k``: by score, ties by id (code point order)."""
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
        k = check_k(k)
        q = dense_query(query, self.dim)
        expr = compile_filter(filter)
        self._rows = {}
        approximate = self.dense_index != "FLAT"
        # one past k: whether the k-th place ties with a document left out shows
        limit = min(MAX_LIMIT, k * self.recall_factor if approximate else k + 1)
        if approximate and exact is True:
            limit = MAX_LIMIT

        def params(window: int) -> dict[str, Any]:
            chosen: dict[str, Any] = {"metric_type": "IP"}
            if self._dense_search:
                chosen["params"] = dict(self._dense_search)
            elif self.dense_index == "HNSW":
                chosen["params"] = {"ef": max(64, window)}
            return chosen

        ids, scores = self._recall(
            "dense", q.tolist(), limit, expr, params, lambda i, _: self._dense_exact(q, i), k
        )
        return self._top(ids, scores, k)

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
        k = check_k(k)
        weights = {t: w for t, w in lexical_query(query, self._vocab_size).items() if w > 0}
        expr = compile_filter(filter)
        self._rows = {}
        if not weights:
            return self._hits([], np.zeros(0, np.float32))
        ids, scores = self._recall(
            "sparse",
            weights,
            min(MAX_LIMIT, 2 * k + 16),
            expr,
            lambda _: {"metric_type": "IP"},
            lambda i, _: self._lexical_exact(weights, i),
            k,
        )
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
        k = check_k(k)
        check_text_query(query)
        expr = compile_filter(filter)
        self._rows = {}
        if not query.strip() or not self._bm25_applies(lang):
            return self._hits([], np.zeros(0, np.float32))
        ids, scores = self._recall(
            "bm25",
            query,
            min(MAX_LIMIT, k + 1),
            expr,
            lambda _: {"metric_type": "BM25"},
            lambda _, d: np.abs(np.array(d, dtype=np.float32)),
            k,
        )
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
        k = check_k(k)
        check_text_query(query)
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
            q = dense_query(query_embeddings.dense_vecs[0], self.dim)
            requests.append(
                pm.AnnSearchRequest([q.tolist()], "dense", {"metric_type": "IP"}, limit, expr=expr)
            )
            paths.append("dense")
        if "sparse" in self.heads and query_embeddings.lexical_weights is not None:
            lex = {
                t: w
                for t, w in lexical_query(
                    query_embeddings.lexical_weights[0], self._vocab_size
                ).items()
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
        """Inner products of ``q`` with the stored vectors of ``ids`` (0 for a missing one).

        Each row is summed on its own, in float64 (exact products of float32 values), then
        rounded to float32: a matrix product's blocking depends on where a row sits in the
        fetched matrix, which gave identical vectors scores one ulp apart.
        """
        rows = self._fetch(ids)
        out = np.zeros(len(ids), dtype=np.float32)
        present = [j for j, i in enumerate(ids) if i in rows]
        q64 = q.astype(np.float64)
        for start in range(0, len(present), FETCH):
            part = present[start : start + FETCH]
            mat = np.array([rows[ids[j]]["dense"] for j in part], dtype=np.float64)
            out[part] = (mat * q64).sum(axis=1).astype(np.float32)
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
        q = dense_query(query, self.dim)
        return self._dense_exact(q, self._ids_for(keys))

    def lexical_scores(
        self, query: Mapping[int, float], keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Exact lexical matching scores of ``keys``."""
        self._require("sparse")
        return self._lexical_exact(lexical_query(query, self._vocab_size), self._ids_for(keys))

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
        q = colbert_query(query, self.colbert_dim)
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
        check_text_query(query)
        ids = self._ids_for(keys)
        out = np.zeros(len(ids), dtype=np.float32)
        if not ids or not query.strip() or not self._bm25_applies(lang):
            return out
        where: dict[str, float] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), FETCH):
            chunk = unique[start : start + FETCH]
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
        storable = [i for i in dict.fromkeys(ids) if utf8(i)]
        for start in range(0, len(storable), FETCH):
            chunk = storable[start : start + FETCH]
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
        wanted = id_list(ids)
        staged = {i: p for i in wanted if (p := self._staged.get(i)) is not None}
        server = [i for i in dict.fromkeys(wanted) if i not in self._staged]
        self._rows = {}
        rows = self._fetch([i for i in server if utf8(i)])
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
        """Every row matching ``expr``, in pages of `PAGE` ordered by id (each row once).

        Each page asks for ids after the last one seen, written with m3rag's escaping
        (``id > "..."``); pymilvus's ``query_iterator`` writes that condition with the raw id,
        so an id holding a quote or a backslash broke the next page or, like ``x" or id != "``,
        made it match everything again, forever. ``iterator`` asks the server for the
        smallest ids first, as pymilvus's iterator does; the pages after the first read the
        snapshot the first one saw where the server reports it.
        """
        wanted = fields if "id" in fields else [*fields, "id"]
        options: dict[str, Any] = {"iterator": "True", "reduce_stop_for_best": "True"}
        last: str | None = None
        while True:
            after = None if last is None else f"id > {literal(last)}"
            where = " and ".join(f"({c})" for c in (after, expr) if c)
            rows = self._call(
                "query",
                lambda w=where, o=dict(options): self._client.query(  # type: ignore[misc]
                    self.name, filter=w, output_fields=wanted, limit=PAGE, **o
                ),
            )
            if not rows:
                return
            if "guarantee_timestamp" not in options:
                extra = getattr(rows, "extra", None) or {}
                session = extra.get("iterator_session_ts", 0)
                if isinstance(session, int) and session > 0:
                    options["guarantee_timestamp"] = session
            page = sorted(rows, key=lambda r: str(r["id"]))  # code point order: UTF-8's
            yield from page
            last = str(page[-1]["id"])

    def ids(self) -> list[str]:
        """Every committed id, in code point order (read in pages of 1,000)."""
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
        if not utf8(field):
            return set()
        expr = f"exists meta[{literal(field)}]"
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
        if not utf8(field):
            return False
        if field not in self._has_field:
            rows = self._call(
                "query",
                lambda: self._client.query(
                    self.name,
                    filter=f"exists meta[{literal(field)}]",
                    output_fields=["id"],
                    limit=1,
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
        for start in range(0, len(unique), FETCH):
            chunk = unique[start : start + FETCH]
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
        texts, final, meta_json = prepare(texts_or_documents, ids, metadata)
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
            self._staged[doc_id] = Put(
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
        return check_embeddings(
            embeddings,
            ids,
            heads=self.heads,
            dim=self.dim,
            colbert_dim=self.colbert_dim,
            vocab_size=self._vocab_size,
        )

    def delete(self, ids: str | Sequence[str]) -> None:
        """Stage deletions (sent at commit).

        Raises:
            UnknownIdError: Some ids are not in the store (nothing is staged then).
        """
        self._check_open(write=True)
        wanted = list(dict.fromkeys(id_list(ids)))
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

    def _send(self, puts: list[tuple[str, Put]], dels: list[str]) -> None:
        send(self._client, self._call, self.name, self._colbert, self.heads, puts, dels)


def _lexical_of(row: Mapping[str, Any] | None) -> dict[int, float]:
    """The lexical weights of a fetched row (the empty-vector stand-in removed)."""
    if row is None:
        return {}
    sparse = row.get("sparse") or {}
    return {int(t): float(w) for t, w in sparse.items() if int(t) != EMPTY_TOKEN}


def _check_field(field: object) -> None:
    """Refuse a metadata field name that is not a non-empty string."""
    if not isinstance(field, str) or not field:
        msg = f"field must be a non-empty string, got {field!r}"
        raise TypeError(msg)


def _tied_at_edge(scores: npt.NDArray[np.float32], k: int) -> bool:
    """Whether the last candidate (the server's order) ties with the ``k``-th best score.

    A tie within a few float32 ulps counts: the server's order comes from its own arithmetic.
    """
    if len(scores) == 0:
        return False
    kth = float(np.sort(scores)[::-1][min(k, len(scores)) - 1])
    last = float(scores[-1])
    return last >= kth - 4 * float(np.finfo(np.float32).eps) * max(abs(kth), 1e-30)


def _check_server_uri(uri: str) -> None:
    """Refuse a server URI pymilvus would misread (an IPv6 address, a bad port) up front.

    Raises:
        ValueError: The message shows the URI without its credentials.
    """
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError:  # its message may quote the URI's text: a password
        msg = (
            f"uri {redact_uri(uri)!r} is not a valid URI (an unclosed '[', or a port that is "
            "not a number in 1..65535?); use http://HOST:PORT"
        )
        raise ValueError(msg) from None
    if host and ":" in host:
        msg = (
            f"uri {redact_uri(uri)!r} names an IPv6 address, which pymilvus cannot connect to "
            "(it reads the address's colons as a port); use a host name that resolves to it"
        )
        raise ValueError(msg)
    if port == 0:
        msg = f"the port of uri {redact_uri(uri)!r} must be in 1..65535"
        raise ValueError(msg)


def _secrets(uri: str, token: str | None) -> list[str]:
    """What no message may show: the token, and the credentials of ``uri``."""
    found = [token or ""]
    if token and ":" in token:
        found.append(token.split(":", 1)[1])
    userinfo = (uri.partition("://")[2] or uri).rpartition("@")[0]
    if userinfo:
        found += [userinfo, userinfo.partition(":")[2]]
    return [s for s in found if s]


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0
