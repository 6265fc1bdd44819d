"""``m3rag serve``: embeddings, reranking and hybrid search over HTTP.

The app needs the ``serve`` extra (FastAPI, uvicorn, orjson, prometheus-client), imported only
when an app is made: ``import m3rag.serve`` stays cheap and works without it. The remote client
(``m3rag.serve.client``) needs nothing beyond the standard library.

Example:
    ```python
    from m3rag.serve import ServeConfig, create_app
    app = create_app(M3Encoder("BAAI/bge-m3"), config=ServeConfig(max_wait_ms=5))
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from m3rag._optional import require
from m3rag.serve.batching import DynamicBatcher, QueueFullError
from m3rag.serve.config import ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["DynamicBatcher", "QueueFullError", "ServeConfig", "create_app", "run"]

_DEPENDENCIES = ("fastapi", "uvicorn", "orjson", "prometheus_client")


def _require_extra() -> None:
    for module in _DEPENDENCIES:
        require(module, extra="serve", purpose="m3rag serve")


def create_app(
    encoder: Any,
    *,
    reranker: Any | None = None,
    collection: Any | None = None,
    config: ServeConfig | None = None,
    encoder_replicas: Sequence[Any] = (),
    reranker_replicas: Sequence[Any] = (),
) -> FastAPI:
    """The ASGI app serving the routes of `m3rag serve` (see the "Serve over HTTP" page).

    Encoding goes through a ``DynamicBatcher``; reranking, search
    and writes run on one more worker thread; the app's lifespan stops both.

    Args:
        encoder: An [`M3Encoder`][m3rag.M3Encoder].
        reranker: A [`Reranker`][m3rag.Reranker] for ``/rerank`` and reranked searches.
        collection: A [`Collection`][m3rag.Collection] for ``/search`` and ``/documents``.
        config: Limits, batching and security (default ``ServeConfig()``).
        encoder_replicas: More copies of ``encoder`` (such as
            [`ProcessEncoder`][m3rag.serve.process.ProcessEncoder]s of the same checkpoint),
            each running shared batches on a worker thread of its own.
        reranker_replicas: The same for ``reranker``.

    Returns:
        A FastAPI app; run it with uvicorn (or ``m3rag.serve.run``).

    Raises:
        MissingDependencyError: The ``serve`` extra is not installed.
    """
    _require_extra()
    from m3rag.serve.app import create_app as make

    return make(
        encoder,
        reranker=reranker,
        collection=collection,
        config=config,
        encoder_replicas=encoder_replicas,
        reranker_replicas=reranker_replicas,
    )


def run(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve ``app`` with uvicorn until interrupted.

    Args:
        app: The ASGI app (``create_app``'s).
        host: The address to bind (loopback by default).
        port: The port to bind.
        log_level: uvicorn's log level.
        access_log: Log one line per request.

    Raises:
        MissingDependencyError: The ``serve`` extra is not installed.
    """
    _require_extra()
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
