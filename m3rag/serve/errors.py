"""Error bodies in the shapes of the APIs the server imitates.

* OpenAI (``/v1/...``): ``{"error": {"message", "type", "param", "code"}}``;
* text-embeddings-inference (``/embed``, ``/embed_sparse``, ``/rerank``) and m3rag's own routes:
  ``{"error": "...", "error_type": "Validation" | "Overloaded" | ...}``.

OpenAI answers 400 for every invalid request, so a 422 (a check of the server's own, after the
schema's) goes to ``/v1/*`` clients as 400.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

__all__ = ["ApiError", "error_body", "error_response"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout",
}
_TEI_TYPES = {
    400: "Validation",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "Validation",
    408: "Timeout",
    413: "Validation",
    422: "Validation",
    424: "Backend",
    429: "Overloaded",
    500: "Backend",
    503: "Unhealthy",
    504: "Timeout",
}


class ApiError(Exception):
    """An HTTP error with a clear message; the handler shapes it for the route's API."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error body a client of ``path``'s API expects."""
    if path.startswith("/v1/"):
        return {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "server_error"),
                "param": param,
                "code": None,
            }
        }
    return {"error": message, "error_type": _TEI_TYPES.get(status, "Backend")}


def error_response(path: str, err: ApiError) -> JSONResponse:
    """``err`` as the response a client of ``path``'s API expects: its body, status, headers."""
    status = 400 if err.status == 422 and path.startswith("/v1/") else err.status
    return JSONResponse(
        error_body(path, status, err.message, err.param),
        status_code=status,
        headers=err.headers,
    )
