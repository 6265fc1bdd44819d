"""Clients of an `m3rag serve` server that stand in for the in-process objects.

[`RemoteEncoder`][], [`RemoteReranker`][] and [`RemoteRetriever`][] answer the methods the
LangChain and LlamaIndex adapters call on [`M3Encoder`][m3rag.M3Encoder],
[`Reranker`][m3rag.Reranker] and [`HybridRetriever`][m3rag.HybridRetriever], with the same
value objects, so an adapter given ``base_url=`` works exactly as with local models. Standard
library only (``urllib``): no extra to install on the client side.

Every answer's shape is checked before it becomes a value object (the fields, their types,
one result per text or passage sent, finite numbers): anything else raises `RemoteError`, as
does a redirect, which is never followed (urllib would send the API key wherever it points).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from m3rag._inputs import check_api_key, check_rerank_inputs, validate_texts
from m3rag.errors import M3RagError
from m3rag.rerank.cross_encoder import RankedPassage, RerankResult, RerankScores, rank_passages
from m3rag.results import SearchResults
from m3rag.serve.wire import output_from_json, results_from_json
from m3rag.types import M3Output

__all__ = ["RemoteEncoder", "RemoteError", "RemoteReranker", "RemoteRetriever"]

T = TypeVar("T")


class RemoteError(M3RagError, OSError):
    """The server answered with an error, or could not be reached.

    Attributes:
        status: The HTTP status (``None`` when the server was not reached).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: a 3xx answer becomes an ``HTTPError``.

    urllib's default handler resends the ``Authorization`` header wherever a redirect points
    (and turns a POST into a GET).
    """

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Client:
    """POSTs JSON to ``base_url``; the key comes from ``api_key`` or ``M3RAG_API_KEY``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            msg = (
                f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000', got {base_url!r}"
            )
            raise ValueError(msg)
        self.base_url = base_url.rstrip("/")
        if api_key is not None:
            check_api_key(api_key)
        elif os.environ.get("M3RAG_API_KEY"):
            api_key = check_api_key(os.environ["M3RAG_API_KEY"], "M3RAG_API_KEY")
        self._api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        data = json.dumps(body).encode("utf-8")
        return self._send(path, data, {"Content-Type": "application/json"})

    def get(self, path: str) -> Any:
        return self._send(path, None, {})

    def _send(self, path: str, data: bytes | None, headers: dict[str, str]) -> Any:
        """The server's JSON answer to a POST (``data``) or a GET; any failure a RemoteError."""
        headers = {**headers, "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.base_url + path,
            data=data,
            headers=headers,
            method="GET" if data is None else "POST",
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:  # its connection: closed once its body is read
                text = _message(exc)
            if 300 <= exc.code < 400:
                msg = (
                    f"the server at {self.base_url} answered {path} with a redirect ({exc.code}) "
                    f"to {exc.headers.get('Location')!r}, which is not followed (it would carry "
                    "the API key elsewhere): give base_url the address the server is at"
                )
                raise RemoteError(msg, exc.code) from exc
            raise RemoteError(text, exc.code) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # refused, reset, timed out, or an answer that is not HTTP
            msg = f"cannot reach the m3rag server at {self.base_url}: {exc or type(exc).__name__}"
            raise RemoteError(msg) from exc
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # a proxy's HTML page, a truncated body
            what = "JSON nested too deep" if isinstance(exc, RecursionError) else "not JSON"
            msg = (
                f"the server at {self.base_url} answered {path} with something other than JSON "
                f"({len(raw)} bytes, {what}): is it an m3rag server?"
            )
            raise RemoteError(msg) from exc

    def _in_parts(self, items: list[str], limit: int, send: Callable[[list[str]], T]) -> list[T]:
        """``send`` on consecutive parts of ``items`` that the server takes, in order.

        Parts hold at most ``limit`` items; one the server still refuses as too large (413: too
        many bytes, or ColBERT vectors for too many tokens) is halved and sent again, down to a
        single item, whose 413 is the answer.
        """
        out: list[T] = []
        parts = [items[i : i + limit] for i in range(0, len(items), limit)]
        while parts:
            part = parts.pop(0)
            try:
                out.append(send(part))
            except RemoteError as exc:
                if exc.status != 413 or len(part) == 1:
                    raise
                half = len(part) // 2
                parts[:0] = [part[:half], part[half:]]
        return out

    def _read(self, path: str, parse: Callable[[], T]) -> T:
        """``parse()`` of an answer to ``path``; a ``RemoteError`` saying why if it is malformed.

        ``parse`` raises ``ValueError`` with the reason (or a ``TypeError``, ``KeyError``... from
        reading a field that is not there or not of its type).
        """
        try:
            return parse()
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            if isinstance(exc, KeyError):
                why = f"no field {exc}"
            elif isinstance(exc, ValueError):
                why = str(exc)
            else:
                why = f"{type(exc).__name__}: {exc}"
            msg = (
                f"the server at {self.base_url} answered {path} with a malformed answer ({why}): "
                "is it an m3rag server of this version?"
            )
            raise RemoteError(msg) from exc


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        error = body.get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError, RecursionError):
        text = None
    return f"the m3rag server answered {exc.code}: {text or exc.reason}"


def _expect(condition: object, why: str) -> None:
    """``ValueError(why)`` unless ``condition`` holds: a malformed answer, and why."""
    if not condition:
        raise ValueError(why)


def _finite(value: object) -> bool:
    """A JSON number that is finite (not a bool, not NaN or an infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _output(answer: Any, n: int, heads: Mapping[str, bool], info: Mapping[str, Any]) -> M3Output:
    """The `M3Output` of an ``/embed_all`` answer for ``n`` texts.

    Every head asked for (``heads``) is there, of the sizes the server's ``info`` gives.
    """
    _expect(isinstance(answer, dict), f"expected an object, got {type(answer).__name__}")
    data = answer["data"]
    _expect(isinstance(data, list), f"`data` must be a list, got {type(data).__name__}")
    _expect(len(data) == n, f"{len(data)} items for {n} texts")
    _expect(all(isinstance(it, dict) for it in data), "`data` must hold objects")
    keys = {"dense": "dense", "sparse": "lexical_weights", "colbert": "colbert"}
    for head, key in keys.items():
        _expect(not heads[head] or all(key in it for it in data), f"items lack `{key}`")
    out = output_from_json(data)
    if out.dense_vecs is not None:
        vecs = out.dense_vecs
        _expect(vecs.ndim == 2, "dense vectors of different lengths")
        dim = info.get("dim")
        _expect(dim is None or vecs.shape[1] == dim, f"dense vectors of {vecs.shape[1]} numbers")
        _expect(bool(np.isfinite(vecs).all()), "a dense vector holds NaN or infinity")
    for weights in out.lexical_weights or ():
        _expect(all(map(math.isfinite, weights.values())), "a lexical weight is not finite")
    colbert_dim = info.get("colbert_dim")
    for mat in out.colbert_vecs or ():
        _expect(mat.ndim == 2, "a ColBERT matrix is not 2-D")
        _expect(
            not isinstance(colbert_dim, int) or mat.shape[1] == colbert_dim,
            f"ColBERT vectors of {mat.shape[1]} numbers",
        )
        _expect(bool(np.isfinite(mat).all()), "a ColBERT matrix holds NaN or infinity")
    return out


def _limit(info: Any, name: str) -> int:
    """A per-request limit from ``/info``'s ``limits``; 256, the default, from older servers."""
    _expect(isinstance(info, dict), f"expected an object, got {type(info).__name__}")
    limits = info.get("limits") or {}
    _expect(isinstance(limits, dict), "`limits` must be an object")
    value = limits.get(name, 256)
    _expect(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"`limits.{name}` must be a positive integer, got {value!r}",
    )
    return int(value)


def _ranked(rows: Any, docs: Sequence[str]) -> tuple[RankedPassage, ...]:
    """The passages of a ``/rerank`` answer: one row per passage sent, each index once."""
    _expect(isinstance(rows, list), f"expected a list, got {type(rows).__name__}")
    _expect(len(rows) == len(docs), f"{len(rows)} results for {len(docs)} passages")
    ranked = []
    for row in rows:
        _expect(isinstance(row, dict), "results must be objects")
        index, score = row["index"], row["score"]
        _expect(
            isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(docs),
            f"index {index!r} is not one of the {len(docs)} passages",
        )
        _expect(_finite(score), f"score {score!r} is not a finite number")
        ranked.append(RankedPassage(index, float(score), docs[index], truncated=False))
    _expect(len({r.index for r in ranked}) == len(docs), "a passage is ranked twice")
    return tuple(ranked)


def _results(answer: Any, k: int) -> SearchResults:
    """The `SearchResults` of a ``/search`` answer for ``k`` hits at most."""
    _expect(isinstance(answer, dict), f"expected an object, got {type(answer).__name__}")
    hits = answer["hits"]
    _expect(isinstance(hits, list), f"`hits` must be a list, got {type(hits).__name__}")
    _expect(len(hits) <= k, f"{len(hits)} hits for k={k}")
    _expect(all(isinstance(h, dict) for h in hits), "hits must be objects")
    results = results_from_json(answer)
    for hit in results:
        _expect(isinstance(hit.id, str) and isinstance(hit.text, str), "a hit's id or text")
        scores = [hit.score, hit.fused_score, *(s.raw for s in hit.paths.values())]
        _expect(all(map(math.isfinite, scores)), f"hit {hit.id!r} has a score that is not finite")
    return results


class RemoteEncoder(_Client):
    """[`M3Encoder`][m3rag.M3Encoder]'s ``encode_queries`` / ``encode_corpus`` over HTTP.

    Args:
        base_url: The server, e.g. ``"http://127.0.0.1:8000"``.
        api_key: The server's key (default: the ``M3RAG_API_KEY`` environment variable).
        timeout: Seconds per request.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout)
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """What the server serves (``GET /info``), fetched once."""
        if self._info is None:
            answer = self.get("/info")

            def parse() -> dict[str, Any]:
                _expect(isinstance(answer, dict), "expected an object")
                heads, dim = answer["heads"], answer["dim"]
                _expect(
                    isinstance(heads, list) and all(isinstance(h, str) for h in heads),
                    "`heads` must be a list of names",
                )
                _expect(dim is None or (isinstance(dim, int) and dim > 0), "`dim` must be > 0")
                return dict(answer)

            self._info = self._read("/info", parse)
        return self._info

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads the served model produces."""
        return tuple(self.info()["heads"])

    @property
    def max_batch(self) -> int:
        """Texts per request: the server's ``max_client_batch_size`` (``/info``'s limits)."""
        info = self.info()
        return self._read("/info", lambda: _limit(info, "max_client_batch_size"))

    def encode_queries(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode queries on the server (``kind="query"``)."""
        return self._encode(texts, "query", dense=dense, sparse=sparse, colbert=colbert)

    def encode_corpus(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode passages on the server (``kind="passage"``)."""
        return self._encode(texts, "passage", dense=dense, sparse=sparse, colbert=colbert)

    def _encode(
        self,
        texts: str | Sequence[str],
        kind: str,
        *,
        dense: bool | None,
        sparse: bool | None,
        colbert: bool | None,
    ) -> M3Output:
        items = validate_texts(texts)
        heads = self.heads
        flags = {
            "dense": ("dense" in heads) if dense is None else dense,
            "sparse": ("sparse" in heads) if sparse is None else sparse,
            "colbert": ("colbert" in heads) if colbert is None else colbert,
        }
        if not items:
            return output_from_json([], dim=self.info()["dim"] if flags["dense"] else None)
        info = self.info()

        def send(part: list[str]) -> M3Output:
            body = {"inputs": part, "kind": kind, "colbert_format": "base64", **flags}
            answer = self.post("/embed_all", body)
            return self._read("/embed_all", lambda: _output(answer, len(part), flags, info))

        parts = self._in_parts(items, self.max_batch, send)
        return parts[0] if len(parts) == 1 else M3Output.concat(parts)


class RemoteReranker(_Client):
    """[`Reranker.rerank`][m3rag.Reranker.rerank] over HTTP (the server's ``/rerank``).

    More passages than the server takes in one request are scored in several; the raw scores
    are ranked (and normalised) here, as the local method ranks them.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout)
        self._max_batch: int | None = None

    @property
    def max_batch(self) -> int:
        """Passages per request: the server's ``max_client_batch_size`` (``/info``'s limits)."""
        if self._max_batch is None:
            answer = self.get("/info")
            self._max_batch = self._read("/info", lambda: _limit(answer, "max_client_batch_size"))
        return self._max_batch

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> RerankResult:
        """Rank ``passages`` for ``query`` on the server, best first (see the local method)."""
        docs = check_rerank_inputs(query, passages, top_n)
        if not docs:
            return RerankResult(query, ())

        def send(part: list[str]) -> tuple[RankedPassage, ...]:
            body = {"query": query, "texts": part, "raw_scores": True, "truncate": True}
            rows = self.post("/rerank", body)
            return self._read("/rerank", lambda: _ranked(rows, part))

        scores = np.empty(len(docs), dtype=np.float32)
        start = 0
        for ranked in self._in_parts(docs, self.max_batch, send):
            for r in ranked:
                scores[start + r.index] = r.score
            start += len(ranked)
        # ranked by the logits, ties in input order, as Reranker.rerank ranks them
        result = RerankScores(scores, np.zeros(len(docs), dtype=np.bool_))
        return rank_passages(query, docs, result, top_n=top_n, normalize=normalize)

    async def arerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> RerankResult:
        """[`rerank`][] in a worker thread."""
        return await asyncio.to_thread(
            self.rerank, query, passages, top_n=top_n, normalize=normalize
        )


class RemoteRetriever(_Client):
    """[`HybridRetriever.retrieve`][m3rag.HybridRetriever.retrieve] over HTTP (``/search``).

    Args:
        base_url: The server.
        api_key: The server's key (default: ``M3RAG_API_KEY``).
        timeout: Seconds per request.
        rerank: Rerank on the server (``None``: when it has a reranker).
        fusion: ``FusionConfig`` fields for the server's fusion (default: its default).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        rerank: bool | None = None,
        fusion: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout)
        self.rerank = rerank
        self.fusion = dict(fusion) if fusion is not None else None

    def retrieve(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> SearchResults:
        """The top ``k`` hits for ``query`` from the server's index."""
        body: dict[str, Any] = {"query": query, "k": k, "highlight": False}
        if filter is not None:
            body["filter"] = dict(filter)
        if min_score is not None:
            body["min_score"] = min_score
        if self.rerank is not None:
            body["rerank"] = self.rerank
        if self.fusion is not None:
            body["fusion"] = self.fusion
        answer = self.post("/search", body)
        return self._read("/search", lambda: _results(answer, k))

    async def aretrieve(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> SearchResults:
        """[`retrieve`][] in a worker thread."""
        return await asyncio.to_thread(
            self.retrieve, query, k=k, filter=filter, min_score=min_score
        )
