"""Clients of an `m3rag serve` server that stand in for the in-process objects.

[`RemoteEncoder`][], [`RemoteReranker`][] and [`RemoteRetriever`][] answer the methods the
LangChain and LlamaIndex adapters call on [`M3Encoder`][m3rag.M3Encoder],
[`Reranker`][m3rag.Reranker] and [`HybridRetriever`][m3rag.HybridRetriever], with the same
value objects, so an adapter given ``base_url=`` works exactly as with local models. Standard
library only (``urllib``): no extra to install on the client side.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from m3rag._inputs import check_api_key, check_rerank_inputs, validate_texts
from m3rag.errors import M3RagError
from m3rag.rerank.cross_encoder import RankedPassage, RerankResult
from m3rag.results import SearchResults
from m3rag.serve.wire import output_from_json, results_from_json
from m3rag.types import M3Output

__all__ = ["RemoteEncoder", "RemoteError", "RemoteReranker", "RemoteRetriever"]


class RemoteError(M3RagError, OSError):
    """The server answered with an error, or could not be reached.

    Attributes:
        status: The HTTP status (``None`` when the server was not reached).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise RemoteError(_message(exc), exc.code) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # refused, reset, timed out, or an answer that is not HTTP
            msg = f"cannot reach the m3rag server at {self.base_url}: {exc or type(exc).__name__}"
            raise RemoteError(msg) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:  # a proxy's HTML page, a truncated body
            msg = (
                f"the server at {self.base_url} answered {path} with something other than JSON "
                f"({len(raw)} bytes): is it an m3rag server?"
            )
            raise RemoteError(msg) from exc


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        error = body.get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        text = None
    return f"the m3rag server answered {exc.code}: {text or exc.reason}"


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
            self._info = self.get("/info")
        return self._info

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads the served model produces."""
        return tuple(self.info()["heads"])

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
        body = {"inputs": items, "kind": kind, "colbert_format": "base64", **flags}
        return output_from_json(self.post("/embed_all", body)["data"])


class RemoteReranker(_Client):
    """[`Reranker.rerank`][m3rag.Reranker.rerank] over HTTP (the server's ``/rerank``)."""

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
        rows = self.post(
            "/rerank",
            {"query": query, "texts": docs, "raw_scores": not normalize, "truncate": True},
        )
        ranked = tuple(
            RankedPassage(
                int(r["index"]), float(r["score"]), docs[int(r["index"])], truncated=False
            )
            for r in rows
        )
        if top_n is not None:
            ranked = ranked[:top_n]
        return RerankResult(query, ranked)

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
        return results_from_json(self.post("/search", body))

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
