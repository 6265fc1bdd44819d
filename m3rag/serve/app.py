"""The ASGI app of ``m3rag serve`` (FastAPI): routes, auth, limits, metrics.

Every model call leaves the event loop: encoding goes through the
[`DynamicBatcher`][m3rag.serve.batching.DynamicBatcher] (one thread owns the encoder, and one
more each of its replicas), reranking through the
[`RerankBatcher`][m3rag.serve.batching.RerankBatcher] (the same for the reranker; ``/rerank``
requests and reranked searches share its batches), and searching and writing run on one more
worker thread (the index's owner). A fast tokenizer must not be used from two threads at once:
each model takes a lock around its tokenizer calls, which its thread replicas
(`m3rag.serve.threads`) share.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from m3rag._inputs import check_text, validate_pairs
from m3rag._version import __version__
from m3rag.errors import M3RagError, ModelProcessError, ReadOnlyError, UnknownIdError
from m3rag.rerank.cross_encoder import rank_passages
from m3rag.serve.batching import BatchedReranker, DynamicBatcher, QueueFullError, RerankBatcher
from m3rag.serve.config import ServeConfig
from m3rag.serve.errors import ApiError, error_response
from m3rag.serve.guard import Guard, route_labels
from m3rag.serve.page import PAGE
from m3rag.serve.schemas import (
    DeleteRequest,
    DocumentsRequest,
    EmbedAllRequest,
    EmbedRequest,
    EmbedSparseRequest,
    OpenAIEmbeddingsRequest,
    RerankRequest,
    SearchRequest,
)
from m3rag.serve.threads import current_torch_threads, pin_torch_threads
from m3rag.serve.wire import output_to_json, results_to_json
from m3rag.types import M3Output

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Probes and the page answer GETs without a key (the page asks for one and sends it with
# searches); ``POST /`` encodes, as text-embeddings-inference's root route does, and needs it.
OPEN_PATHS = frozenset({"/", "/health", "/ready"})

# metadata numbers are stored for filters, which compare 64-bit integers
INT64 = range(-(2**63), 2**63)

# ColBERT answers longer than this many tokens are written to JSON on a worker thread: at
# BGE-M3's size they take the event loop tens of milliseconds and more
LONG_ANSWER_TOKENS = 4096


class _Metrics:
    def __init__(self, batcher: DynamicBatcher, rerank_batcher: RerankBatcher | None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "m3rag_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "m3rag_request_seconds",
            "Request latency by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_texts, self.batch_seconds = self._batches("batch", "Texts", "encoder")
        self._queued("m3rag_queued_texts", "Texts waiting for the encoder.", batcher)
        self.rerank_pairs, self.rerank_seconds = self._batches("rerank_batch", "Pairs", "reranker")
        if rerank_batcher is not None:
            self._queued("m3rag_queued_pairs", "Pairs waiting for the reranker.", rerank_batcher)
        self.rejected = Counter(
            "m3rag_rejected", "Requests refused because the queue was full.", registry=self.registry
        )

    def _batches(self, prefix: str, items: str, model: str) -> tuple[Histogram, Histogram]:
        """Two histograms of a batcher: items per shared batch, and seconds per batch."""
        sizes = Histogram(
            f"m3rag_{prefix}_{items.lower()}",
            f"{items} per shared {model} batch.",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        seconds = Histogram(
            f"m3rag_{prefix}_seconds", f"Seconds per shared {model} batch.", registry=self.registry
        )
        return sizes, seconds

    def _queued(self, name: str, doc: str, batcher: Any) -> None:
        Gauge(name, doc, registry=self.registry).set_function(lambda: batcher.queued_texts)

    def on_batch(self, texts: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_seconds.observe(seconds)

    def on_rerank_batch(self, pairs: int, seconds: float) -> None:
        self.rerank_pairs.observe(pairs)
        self.rerank_seconds.observe(seconds)


def _texts(value: Any, name: str, limit: int) -> list[str]:
    """``value``'s texts, each checked.

    A bad text fails its own request here, before it could join (and fail) a batch shared
    with other requests.
    """
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        msg = f"`{name}` cannot be empty; send at least one text"
        raise ApiError(422, msg, param=name)
    if len(items) > limit:
        msg = (
            f"`{name}` holds {len(items)} texts; this server accepts at most {limit} per request "
            "(--max-client-batch-size): split the request"
        )
        raise ApiError(413, msg, param=name)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            msg = f"`{name}[{i}]` must be a string, got {type(t).__name__}"
            raise ApiError(422, msg, param=name)
        _check_text(t, f"`{name}[{i}]`", name)
    return items


def _check_text(text: str, label: str, param: str) -> None:
    """422 for a text the model cannot take (a lone surrogate), named by ``label``."""
    try:
        check_text(text, label)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, str(exc), param=param) from exc


def _check_metadata_ints(documents: Sequence[Any]) -> None:
    """422 for an integer in any document's metadata that a filter could not compare.

    Filters compare numbers as 64-bit integers or floats; a larger integer would be stored and
    then match nothing, or fail the searches that reach it.
    """
    for i, doc in enumerate(documents):
        stack: list[tuple[Any, str]] = [(doc.metadata, "metadata")]
        while stack:
            value, where = stack.pop()
            if isinstance(value, dict):
                stack.extend((v, f"{where}.{k}") for k, v in value.items())
            elif isinstance(value, list):
                stack.extend((v, f"{where}[{j}]") for j, v in enumerate(value))
            elif isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
                msg = (
                    f"documents[{i}].{where} is an integer of {value.bit_length()} bits, "
                    "outside the signed 64-bit range [-2**63, 2**63 - 1] that filters compare: "
                    "store it as a string or a float"
                )
                raise ApiError(422, msg, param="documents")


@contextmanager
def _undone_on_error(col: Any) -> Iterator[None]:
    """Roll back what the block staged if it raises.

    On the index's thread, before the next write: a refused write's changes must not ride
    along with the next commit.
    """
    try:
        yield
    except BaseException:
        col.rollback()
        raise


def create_app(
    encoder: Any,
    *,
    reranker: Any | None = None,
    collection: Any | None = None,
    config: ServeConfig | None = None,
    encoder_replicas: Sequence[Any] = (),
    reranker_replicas: Sequence[Any] = (),
) -> FastAPI:
    """The ASGI app serving ``encoder`` (and optionally a reranker and a collection).

    Args:
        encoder: An [`M3Encoder`][m3rag.M3Encoder].
        reranker: A [`Reranker`][m3rag.Reranker] for ``/rerank`` and reranked searches.
        collection: A [`Collection`][m3rag.Collection] for ``/search`` and ``/documents``.
        config: Limits, batching and security (default [`ServeConfig()`][m3rag.serve.ServeConfig]).
        encoder_replicas: More copies of ``encoder`` (e.g.
            [`ProcessEncoder`][m3rag.serve.process.ProcessEncoder]s of the same checkpoint), each
            running shared batches on a worker thread of its own (see [`m3rag.serve.batching`][]).
        reranker_replicas: The same for ``reranker``.

    Returns:
        A FastAPI app; run it with uvicorn. Its lifespan starts and stops the batcher.
    """
    cfg = config if config is not None else ServeConfig()
    batcher_box: dict[str, DynamicBatcher] = {}
    # the index's thread: torch's full thread count for its scans, whatever count the model
    # threads last set as the process's default (see m3rag.serve.threads)
    pool = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="m3rag-worker",
        initializer=pin_torch_threads,
        initargs=(current_torch_threads(),),
    )
    key = cfg.api_key.encode("utf-8") if cfg.api_key is not None else None

    batcher = DynamicBatcher(
        encoder,
        max_batch_tokens=cfg.max_batch_tokens,
        max_wait_ms=cfg.max_wait_ms,
        max_queued_texts=cfg.max_queued_texts,
        wait_policy=cfg.wait_policy,
        replicas=encoder_replicas,
    )
    batcher_box["b"] = batcher
    rerank_batcher = (
        RerankBatcher(
            reranker,
            max_batch_tokens=cfg.max_batch_tokens,
            max_wait_ms=cfg.max_wait_ms,
            max_queued_texts=cfg.max_queued_texts,
            wait_policy=cfg.wait_policy,
            replicas=reranker_replicas,
        )
        if reranker is not None
        else None
    )
    # what searches rerank with: the same shared batches as /rerank, on the reranker's thread
    search_reranker = (
        BatchedReranker(rerank_batcher, timeout=cfg.request_timeout_s)
        if rerank_batcher is not None
        else None
    )
    metrics = _Metrics(batcher, rerank_batcher)
    batcher.on_batch = metrics.on_batch
    if rerank_batcher is not None:
        rerank_batcher.on_batch = metrics.on_rerank_batch

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        if rerank_batcher is not None:
            rerank_batcher.close()
        pool.shutdown(wait=True)

    app = FastAPI(
        title="m3rag",
        version=__version__,
        description=(
            "BGE-M3 dense, lexical and ColBERT embeddings, reranking and hybrid search. "
            "`/v1/embeddings` speaks OpenAI's shape; `/embed`, `/embed_sparse` and `/rerank` "
            "speak text-embeddings-inference's."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.rerank_batcher = rerank_batcher
    app.state.config = cfg

    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # loc is ("body", character offset)
                at = e.get("loc", (None, "?"))[-1]
                why = e.get("ctx", {}).get("error", "")
                problems.append(f"the body is not valid JSON (character {at}: {why})")
                continue
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
        status = 400 if request.url.path.startswith("/v1/") else 422
        message = "invalid request: " + "; ".join(problems)
        return error_response(request.url.path, ApiError(status, message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's and FastAPI's own refusals (no such route, wrong method, a body that is
        # not UTF-8 text), in the route's error shape instead of their {"detail": ...}
        if exc.status_code == 404:
            message = f"no route {request.url.path}: the routes are listed at /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and "parsing the body" in str(exc.detail):
            message = (
                "invalid request: the body could not be read as JSON; send UTF-8 JSON with "
                "`Content-Type: application/json`"
            )
        else:
            message = str(exc.detail)
        return error_response(
            request.url.path, ApiError(exc.status_code, message, headers=dict(exc.headers or {}))
        )

    def record(route: str, status: int, seconds: float | None) -> None:
        metrics.requests.labels(route, str(status)).inc()
        if seconds is not None:
            metrics.latency.labels(route).observe(seconds)

    # added last, so outermost: a refused request reaches neither CORS nor the routes
    app.add_middleware(
        Guard,
        key=key,
        max_request_bytes=cfg.max_request_bytes,
        open_paths=OPEN_PATHS,
        record=record,
        label=route_labels(app.routes),
        body_timeout=cfg.request_timeout_s,
    )

    # -- helpers ---------------------------------------------------------------------------

    async def encode(texts: list[str], *, kind: str, **heads: bool) -> M3Output:
        return await batched(
            batcher.encode(
                texts,
                kind=kind,  # type: ignore[arg-type]
                timeout=cfg.request_timeout_s,
                dense=heads.get("dense", False),
                sparse=heads.get("sparse", False),
                colbert=heads.get("colbert", False),
            )
        )

    async def batched(call: Awaitable[T], *, param: str | None = None) -> T:
        """A model call's result, with its refusals, timeouts and bad input as HTTP errors.

        Also for a search, whose reranking (on the index's thread) the reranker's batcher can
        refuse or time out.
        """
        try:
            return await call
        except QueueFullError as exc:
            metrics.rejected.inc()
            raise ApiError(429, str(exc), headers={"Retry-After": "1"}) from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            msg = f"no result within {cfg.request_timeout_s:g} s; the server is overloaded"
            raise ApiError(503, msg, headers={"Retry-After": "5"}) from exc
        except ModelProcessError as exc:  # the model's process died: not the request's fault
            raise ApiError(503, str(exc)) from exc
        except (ValueError, TypeError, KeyError, M3RagError) as exc:
            raise ApiError(422, str(exc), param=param) from exc

    async def in_worker(func: Callable[[], T]) -> T:
        """``func`` (a read) on the index's thread; 503 after ``request_timeout_s``."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(pool, func), timeout=cfg.request_timeout_s
            )
        except asyncio.TimeoutError as exc:
            msg = f"no result within {cfg.request_timeout_s:g} s; the server is overloaded"
            raise ApiError(503, msg, headers={"Retry-After": "5"}) from exc

    async def write_in_worker(func: Callable[[], T]) -> T:
        """``func`` (a write) on the index's thread, awaited to its end however long it takes.

        Not cut by ``request_timeout_s``: the thread cannot be stopped, so a write answered
        503 would still land, and its retry find it there. A write's answer is its outcome.
        """
        return await asyncio.get_running_loop().run_in_executor(pool, func)

    async def check_colbert_size(texts: list[str], *, kind: str, what: str) -> None:
        """413 before encoding when ``texts`` get ColBERT vectors for too many tokens.

        Each token is a vector, and the answer (or the write) holds them all.
        """
        length = encoder.query_max_length if kind == "query" else encoder.passage_max_length
        # an upper bound first, so that most requests are cleared without a tokenizer call: a
        # token covers a byte of its text or more, except where NFKC (which XLM-R's tokenizer
        # applies) expands a character, at most into 18 (U+FDFA, 3 bytes): 6 tokens a byte
        bound = sum(min(6 * len(t.encode("utf-8", "surrogatepass")) + 2, length) for t in texts)
        if bound <= cfg.max_colbert_tokens:
            return
        loop = asyncio.get_running_loop()
        counts = await batched(
            loop.run_in_executor(None, lambda: encoder.count_tokens(texts, max_length=length)),
            param=what,
        )
        total = int(np.sum(counts))
        if total > cfg.max_colbert_tokens:
            msg = (
                f"`{what}` hold {total} tokens after truncation; this server gives ColBERT "
                f"vectors for at most {cfg.max_colbert_tokens} tokens per request "
                "(--max-colbert-tokens): split the request, or ask for colbert: false"
            )
            raise ApiError(413, msg, param=what)

    def check_heads(**wanted: bool) -> None:
        for head, on in wanted.items():
            if on and head not in encoder.heads:
                msg = f"the served model {cfg.model_name!r} has no {head} head"
                raise ApiError(424, msg)

    def refuse_prompt(name: str | None) -> None:
        # text-embeddings-inference applies a prompt named in the model's sentence-transformers
        # config; BGE-M3 has none, so any name would be ignored: refused instead
        if name is not None:
            msg = (
                f"prompt_name={name!r}: the served model {cfg.model_name!r} has no prompts; "
                "leave `prompt_name` out"
            )
            raise ApiError(422, msg, param="prompt_name")

    def refuse_truncated(out: M3Output, *, truncate: bool | None, what: str) -> None:
        if not truncate and bool(out.truncated.any()):
            i = int(np.flatnonzero(out.truncated)[0])
            msg = (
                f"Input validation error: `{what}[{i}]` is longer than the "
                f"{encoder.passage_max_length} tokens the model accepts; send `truncate: true`"
                " or a shorter text"
            )
            raise ApiError(413, msg, param=what)

    # -- probes, page, metrics -------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    @app.head("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    def _dead_models() -> list[str]:
        # a model in a child process (ProcessEncoder, ProcessReranker) can die on its own; one
        # replica down is reported too (the others serve on, but the server needs a restart)
        dead = []
        for name, b in (("encoder", batcher), ("reranker", rerank_batcher)):
            models = b.models if b is not None else ()
            down = sum(not getattr(m, "alive", True) for m in models)
            if down:
                dead.append(name if len(models) == 1 else f"{name} ({down} of {len(models)})")
        return dead

    # HEAD as well: the open paths answer it (load balancers probe with it); out of the schema,
    # which would give the two methods one operation id
    @app.get("/health", summary="The process and its models are up")
    @app.head("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        dead = _dead_models()
        if dead:
            body = {"status": "down", "message": f"model process exited: {', '.join(dead)}"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="The models are loaded and the queue has room")
    @app.head("/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        dead = _dead_models()
        full = batcher.queued_texts >= cfg.max_queued_texts or (
            rerank_batcher is not None and rerank_batcher.queued_texts >= cfg.max_queued_texts
        )
        body = {
            "status": "down" if dead else "overloaded" if full else "ready",
            "model": cfg.model_name,
            "heads": list(encoder.heads),
            "reranker": reranker is not None,
            "index": collection is not None,
            "writes": cfg.allow_writes and collection is not None,
            "queued_texts": batcher.queued_texts,
            "queued_pairs": rerank_batcher.queued_texts if rerank_batcher is not None else 0,
        }
        return JSONResponse(body, status_code=503 if dead or full else 200)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", summary="What the server serves")
    async def info() -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if collection is not None:
            fields = {
                "count": await in_worker(collection.count),
                "paths": list(_paths()),
            }
        return {
            "model": cfg.model_name,
            "heads": list(encoder.heads),
            "dim": encoder.dim,
            "colbert_dim": encoder.colbert_dim,
            "query_max_length": encoder.query_max_length,
            "passage_max_length": encoder.passage_max_length,
            "reranker": reranker is not None,
            "index": fields or None,
            "writes": cfg.allow_writes and collection is not None,
            "version": __version__,
            # what one request may carry: clients cut longer lists to fit
            "limits": {
                "max_client_batch_size": cfg.max_client_batch_size,
                "max_request_bytes": cfg.max_request_bytes,
                "max_colbert_tokens": cfg.max_colbert_tokens,
            },
        }

    # -- OpenAI ----------------------------------------------------------------------------

    @app.post("/v1/embeddings", summary="Dense embeddings in OpenAI's shape")
    async def openai_embeddings(body: OpenAIEmbeddingsRequest) -> dict[str, Any]:
        raw = body.input
        if isinstance(raw, list) and raw and not isinstance(raw[0], str):
            msg = (
                "token-id input is not supported: send text (LangChain's OpenAIEmbeddings: "
                "check_embedding_ctx_length=False)"
            )
            raise ApiError(400, msg, param="input")
        texts = _texts(raw, "input", cfg.max_client_batch_size)
        if body.dimensions is not None and body.dimensions != encoder.dim:
            msg = f"dimensions={body.dimensions} is not supported; this model gives {encoder.dim}"
            raise ApiError(400, msg, param="dimensions")
        out = await encode(texts, kind="passage", dense=True)
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        data = []
        for i, vec in enumerate(out.dense_vecs):
            embedding: Any = (
                base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
                if body.encoding_format == "base64"
                else vec.tolist()
            )
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        tokens = int(out.token_counts.sum())
        return {
            "object": "list",
            "data": data,
            "model": body.model or cfg.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/v1/models", summary="The served model, in OpenAI's shape")
    async def openai_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": cfg.model_name, "object": "model", "owned_by": "m3rag"}],
        }

    # -- text-embeddings-inference ---------------------------------------------------------

    # TEI serves its model's main task at ``POST /`` too; Hugging Face's InferenceClient
    # (``feature_extraction`` with ``base_url=``) posts there.
    @app.post("/", summary="Dense embeddings (text-embeddings-inference's route for its task)")
    @app.post("/embed", summary="Dense embeddings (text-embeddings-inference)")
    async def tei_embed(body: EmbedRequest) -> list[list[float]]:
        texts = _texts(body.inputs, "inputs", cfg.max_client_batch_size)
        if body.normalize is False:
            msg = "normalize=false is not supported: BGE-M3's dense vectors are normalised"
            raise ApiError(422, msg, param="normalize")
        if body.dimensions is not None and body.dimensions != encoder.dim:
            msg = (
                f"dimensions={body.dimensions} is not supported: this model gives {encoder.dim} "
                "and was not trained to be cut shorter (Matryoshka); leave `dimensions` out"
            )
            raise ApiError(422, msg, param="dimensions")
        refuse_prompt(body.prompt_name)
        out = await encode(texts, kind="passage", dense=True)
        refuse_truncated(out, truncate=body.truncate, what="inputs")
        assert out.dense_vecs is not None  # noqa: S101 - dense was requested
        return out.dense_vecs.tolist()  # type: ignore[no-any-return]

    @app.post("/embed_sparse", summary="Lexical weights (text-embeddings-inference)")
    async def tei_embed_sparse(body: EmbedSparseRequest) -> list[list[dict[str, Any]]]:
        texts = _texts(body.inputs, "inputs", cfg.max_client_batch_size)
        check_heads(sparse=True)
        refuse_prompt(body.prompt_name)
        out = await encode(texts, kind="passage", sparse=True)
        refuse_truncated(out, truncate=body.truncate, what="inputs")
        assert out.lexical_weights is not None  # noqa: S101 - sparse was requested
        return [
            [{"index": int(k), "value": float(v)} for k, v in sorted(d.items())]
            for d in out.lexical_weights
        ]

    @app.post("/rerank", summary="Cross-encoder reranking (text-embeddings-inference)")
    async def tei_rerank(body: RerankRequest) -> list[dict[str, Any]]:
        if reranker is None:
            msg = "this server has no reranker; start it with --reranker MODEL"
            raise ApiError(424, msg)
        texts = _texts(body.texts, "texts", cfg.max_client_batch_size)
        if not body.query.strip():
            raise ApiError(422, "`query` cannot be empty", param="query")
        query = body.query
        assert rerank_batcher is not None  # noqa: S101 - made whenever there is a reranker
        try:
            # checked here, not in the shared batch: a bad text must fail its own request only
            validate_pairs([(query, t) for t in texts])
        except (ValueError, TypeError) as exc:
            raise ApiError(422, str(exc)) from exc
        scores = await batched(
            rerank_batcher.score([(query, t) for t in texts], timeout=cfg.request_timeout_s)
        )
        result = rank_passages(query, texts, scores, normalize=not body.raw_scores)
        if not body.truncate and result.truncated_indices:
            i = result.truncated_indices[0]
            msg = (
                f"Input validation error: the pair of `query` and `texts[{i}]` is longer than "
                "the reranker accepts; send `truncate: true` or shorter texts"
            )
            raise ApiError(413, msg, param="texts")
        rows = []
        for r in result:
            row: dict[str, Any] = {"index": r.index, "score": r.score}
            if body.return_text:
                row["text"] = r.passage
            rows.append(row)
        return rows

    # -- m3rag -----------------------------------------------------------------------------

    @app.post(
        "/embed_all",
        summary="Dense, lexical and ColBERT in one pass",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}},
    )
    async def embed_all(body: EmbedAllRequest) -> Response:
        texts = _texts(body.inputs, "inputs", cfg.max_client_batch_size)
        if not (body.dense or body.sparse or body.colbert):
            raise ApiError(422, "ask for at least one of dense, sparse, colbert")
        check_heads(dense=body.dense, sparse=body.sparse, colbert=body.colbert)
        if body.colbert:
            await check_colbert_size(texts, kind=body.kind, what="inputs")
        out = await encode(
            texts, kind=body.kind, dense=body.dense, sparse=body.sparse, colbert=body.colbert
        )

        def render() -> bytes:
            items = output_to_json(out, colbert_format=body.colbert_format, arrays=True)
            # one item at a time: a long answer gives the GIL back to the loop between texts
            parts = [b'{"model":', orjson.dumps(cfg.model_name), b',"data":[']
            for i, item in enumerate(items):
                parts.append(b"," if i else b"")
                parts.append(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY))
            parts.append(b"]}")
            return b"".join(parts)

        if out.colbert_vecs is not None and int(out.token_counts.sum()) > LONG_ANSWER_TOKENS:
            return Response(await asyncio.to_thread(render), media_type="application/json")
        return Response(render(), media_type="application/json")

    def _need_index() -> Any:
        if collection is None:
            msg = "this server has no index; start it with --index DIR"
            raise ApiError(404, msg)
        return collection

    def _paths() -> tuple[str, ...]:
        from m3rag.retriever import available_paths

        return available_paths(_need_index(), encoder)

    @app.post("/search", summary="Hybrid search: recall, fusion, rerank, per-path scores")
    async def search(body: SearchRequest) -> dict[str, Any]:
        col = _need_index()
        from m3rag.fusion import FusionConfig
        from m3rag.retriever import HybridRetriever

        if not body.query.strip():
            raise ApiError(422, "`query` cannot be empty", param="query")
        _check_text(body.query, "`query`", "query")
        if body.k > cfg.max_k:
            raise ApiError(422, f"k={body.k} exceeds the limit of {cfg.max_k}", param="k")
        if body.recall_k is not None and body.recall_k > cfg.max_recall_k:
            msg = (
                f"recall_k={body.recall_k} exceeds the limit of {cfg.max_recall_k} candidates "
                "per path; lower it"
            )
            raise ApiError(422, msg, param="recall_k")
        if body.rerank and reranker is None:
            raise ApiError(424, "rerank=true but this server has no reranker (--reranker)")
        use_reranker = search_reranker if (body.rerank is None or body.rerank) else None
        try:
            fusion = FusionConfig(**body.fusion) if body.fusion is not None else None
            retriever = HybridRetriever(
                col,
                encoder=encoder,
                reranker=use_reranker,
                fusion=fusion,
                recall_k=body.recall_k or min(100, cfg.max_recall_k),
            )
        except (ValueError, TypeError, M3RagError) as exc:
            raise ApiError(422, str(exc), param="fusion") from exc
        heads = dict.fromkeys(encoder.heads, True)
        enc = await encode([body.query], kind="query", **heads)

        def run() -> Any:
            return retriever.retrieve(
                body.query,
                k=body.k,
                filter=body.filter,
                query_embeddings=enc,
                min_score=body.min_score,
            )

        results = await batched(in_worker(run), param="filter")
        # every hit carries the query terms' spans already (HybridRetriever computes them)
        spans = [list(h.spans) for h in results] if body.highlight else None
        return results_to_json(results, spans=spans)

    @app.post("/documents", summary="Add or upsert documents (when writes are enabled)")
    async def documents(body: DocumentsRequest) -> dict[str, Any]:
        col = _writable()
        if not body.documents:
            raise ApiError(422, "`documents` cannot be empty", param="documents")
        if len(body.documents) > cfg.max_client_batch_size:
            msg = (
                f"{len(body.documents)} documents; at most {cfg.max_client_batch_size} per "
                "request: split it"
            )
            raise ApiError(413, msg, param="documents")
        from m3rag.types import Document

        for i, d in enumerate(body.documents):
            _check_text(d.text, f"`documents[{i}].text`", "documents")
        _check_metadata_ints(body.documents)
        try:
            docs = [Document(d.text, d.id, d.metadata) for d in body.documents]
        except (ValueError, TypeError) as exc:
            raise ApiError(422, str(exc), param="documents") from exc
        heads = dict.fromkeys(encoder.heads, True)
        if "colbert" in heads:  # the index stores them: the same bound as an answer
            await check_colbert_size([d.text for d in docs], kind="passage", what="documents")
        out = await encode([d.text for d in docs], kind="passage", **heads)

        def run() -> tuple[list[str], int]:
            write = col.add if body.mode == "add" else col.upsert
            with _undone_on_error(col):
                ids = write(docs, embeddings=out)
                col.commit()
            return list(ids), col.count()

        try:
            ids, count = await write_in_worker(run)
        except ReadOnlyError as exc:
            raise ApiError(403, str(exc)) from exc
        except (ValueError, TypeError, M3RagError) as exc:
            raise ApiError(422, str(exc), param="documents") from exc
        return {"ids": ids, "count": count}

    @app.post("/documents/delete", summary="Delete documents by id (when writes are enabled)")
    async def delete_documents(body: DeleteRequest) -> dict[str, Any]:
        col = _writable()
        if not body.ids:
            raise ApiError(422, "`ids` cannot be empty", param="ids")

        def run() -> int:
            with _undone_on_error(col):
                col.delete(body.ids)
                col.commit()
            return int(col.count())

        try:
            count = await write_in_worker(run)
        except UnknownIdError as exc:
            raise ApiError(404, str(exc).strip("\"'"), param="ids") from exc
        # an id named twice is one document deleted
        return {"deleted": len(set(body.ids)), "count": count}

    def _writable() -> Any:
        col = _need_index()
        if not cfg.allow_writes:
            msg = "writes are disabled on this server; start it with --allow-writes"
            raise ApiError(403, msg)
        return col

    return app
