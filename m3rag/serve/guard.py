"""The server's outermost layer, in plain ASGI: API key, body-size limit, per-route metrics.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``): that
one runs every request through a task group and a memory stream, which cost the event loop a
third of its time per request under load (``py-spy --gil``, tiny checkpoint, 32 clients).

The body is read here, before any route sees it, and counted as it arrives: a body over the
limit gets 413 whether or not it says its length (a chunked upload says none), and the app
never runs for it. A body within the limit is handed on whole. A body that has not arrived
whole within ``body_timeout`` seconds gets 408 and the connection is closed: a client that
sends part of its body and stops must not hold a connection (and its buffer) forever.

Anything the app raises before it answers becomes a 500 in the route's error shape, logged
here once (the method, the path and the traceback: never the body or the key), instead of
the framework's plain-text "Internal Server Error".
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m3rag.serve.errors import ApiError, error_response

__all__ = ["Guard", "route_labels"]

logger = logging.getLogger(__name__)

# what ``record`` gets: the route's label, the status, and the seconds (None when refused here)
Record = Callable[[str, int, float | None], None]


class Guard:
    """Checks a request before the app sees it and counts it after.

    Args:
        app: The app to guard.
        key: The API key (its bytes), or None for none. Compared in constant time.
        max_request_bytes: The largest body accepted.
        open_paths: Paths that answer GET and HEAD without a key.
        record: Called once per request with its route label, status and seconds.
        label: The route label of a path refused before routing (a known route's path or
            ``"other"``: arbitrary paths must not grow the metrics' label set).
        body_timeout: Seconds the whole body may take to arrive (``None``: no limit).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        key: bytes | None,
        max_request_bytes: int,
        open_paths: Collection[str],
        record: Record,
        label: Callable[[str], str],
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.key = key
        self.max_request_bytes = max_request_bytes
        self.open_paths = open_paths
        self.record = record
        self.label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request here (401, 408, 413), or pass it on with its body read; count it.

        What the app raises before it answers is answered here: 500, in the route's shape.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        headers = Headers(scope=scope)
        refusal = self._check_key(path, method, headers) or self._check_length(headers)
        body = b""
        if refusal is None:
            read = await self._read_body(receive)
            if read is None:  # the client left mid-body: nobody to answer
                return
            if isinstance(read, ApiError):
                refusal = read
            else:
                body = read
        if refusal is not None:
            await self._refuse(path, refusal, scope, receive, send)
            return

        status = 500  # if the app raises before it answers
        started = False
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
            await send(message)

        try:
            await self.app(scope, replay, send_status)
        except Exception as exc:
            if started:  # half an answer sent: the server closes the connection, and logs it
                raise
            # once, here: the method and path, never the body or the headers (the key)
            logger.error("%s %s failed", method, path, exc_info=exc)
            status = 500
            msg = (
                f"internal error ({type(exc).__name__}) while serving {path}; the server's log "
                "has the details"
            )
            await error_response(path, ApiError(500, msg))(scope, receive, send)
        finally:
            route = scope.get("route")
            self.record(getattr(route, "path", "other"), status, time.perf_counter() - start)

    def _check_key(self, path: str, method: str, headers: Headers) -> ApiError | None:
        if self.key is None or method == "OPTIONS":  # a CORS preflight carries no key
            return None
        if path in self.open_paths and method in ("GET", "HEAD"):
            return None
        # the bytes as sent (ASGI servers decode headers as Latin-1), against the key's bytes
        raw = headers.get("authorization", "").encode("latin-1")
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return None
        return ApiError(
            401,
            "missing or wrong API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _check_length(self, headers: Headers) -> ApiError | None:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            msg = (
                f"the request body is {length} bytes; the limit is {self.max_request_bytes} "
                "(--max-request-bytes): split the request"
            )
            return ApiError(413, msg)
        return None

    async def _read_body(self, receive: Receive) -> bytes | ApiError | None:
        """The whole body; an ``ApiError`` past the limit or deadline; None if the client left."""
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = None if self.body_timeout is None else loop.time() + self.body_timeout
        while True:
            try:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                msg = (
                    f"the request body did not arrive whole within {self.body_timeout:g} s "
                    "(--timeout): send it at once"
                )
                return ApiError(408, msg, headers={"Connection": "close"})
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                msg = (
                    f"the request body is over {self.max_request_bytes} bytes, the limit "
                    "(--max-request-bytes): split the request"
                )
                return ApiError(413, msg)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _refuse(
        self, path: str, err: ApiError, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await error_response(path, err)(scope, receive, send)
        self.record(self.label(path), err.status, None)


def route_labels(routes: Any) -> Callable[[str], str]:
    """``label(path)``: ``path`` if one of ``routes`` has it, else ``"other"``."""

    def label(path: str) -> str:
        return path if path in {getattr(r, "path", None) for r in routes} else "other"

    return label
