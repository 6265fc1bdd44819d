"""The server's settings: one frozen object that validates itself."""

from __future__ import annotations

from dataclasses import dataclass

from m3rag._inputs import check_api_key, check_positive_int
from m3rag.serve.batching import WaitPolicy, check_max_wait_ms, check_wait_policy

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """How `m3rag serve` batches, limits and protects.

    Args:
        model_name: The name reported in responses (``"model"`` of the OpenAI shape).
        max_batch_tokens: Estimated tokens the batcher packs into one shared batch.
        max_wait_ms: How long the first request of a batch may wait for others.
        wait_policy: ``"adaptive"`` (the default) waits ``max_wait_ms`` only under load, so a
            lone request on an idle server goes to the model at once; ``"always"`` holds the
            first request of every batch (see [`m3rag.serve.batching`][]).
        max_queued_texts: Texts allowed to wait for the model; beyond it requests get 429
            with ``Retry-After``.
        max_client_batch_size: Texts (or rerank passages) allowed in one request.
        max_request_bytes: Largest request body accepted (counted as it arrives, whether or not
            it declares a ``Content-Length``); larger get 413.
        max_colbert_tokens: Most tokens (after truncation) one request may ask ColBERT vectors
            for (``/embed_all`` with ``colbert``, ``/documents``); more get 413. Each token is a
            vector of ``colbert_dim`` floats (1024 for BGE-M3: 4 KiB as float32, about 20 KB as
            JSON), so the default of 32768 bounds one answer to 128 MiB of float32.
        request_timeout_s: Seconds a request may wait for the model (or a search for the index)
            before a 503, and its body may take to arrive before a 408. Writes are not cut: a
            write's answer is its outcome (``docs/serve.md``).
        max_k: The largest ``k`` a search may ask for.
        max_recall_k: The largest ``recall_k`` (candidates per path) a search may ask for.
        api_key: When set, every route but ``/``, ``/health`` and ``/ready`` needs
            ``Authorization: Bearer <key>`` (compared in constant time, never logged). Printable
            ASCII without spaces, as HTTP headers carry it.
        allow_writes: Serve ``/documents`` writes (off unless asked).
        cors_origins: Origins allowed by CORS; empty (the default) adds no CORS headers.
    """

    model_name: str = "bge-m3"
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    wait_policy: WaitPolicy = "adaptive"
    max_queued_texts: int = 4096
    max_client_batch_size: int = 256
    max_request_bytes: int = 8 * 1024 * 1024
    max_colbert_tokens: int = 32768
    request_timeout_s: float = 60.0
    max_k: int = 1000
    max_recall_k: int = 10_000
    api_key: str | None = None
    allow_writes: bool = False
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "max_batch_tokens",
            "max_queued_texts",
            "max_client_batch_size",
            "max_request_bytes",
            "max_colbert_tokens",
            "max_k",
            "max_recall_k",
        ):
            check_positive_int(getattr(self, name), name)
        timeout = self.request_timeout_s
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not timeout > 0  # NaN fails too
        ):
            msg = f"request_timeout_s must be a positive number, got {timeout!r}"
            raise ValueError(msg)
        check_max_wait_ms(self.max_wait_ms)
        check_wait_policy(self.wait_policy)
        if self.api_key is not None:
            check_api_key(self.api_key)

    def __repr__(self) -> str:
        # the key never appears in logs or tracebacks
        key = None if self.api_key is None else "'***'"
        return (
            f"ServeConfig(model_name={self.model_name!r}, max_batch_tokens="
            f"{self.max_batch_tokens}, max_wait_ms={self.max_wait_ms}, "
            f"wait_policy={self.wait_policy!r}, max_queued_texts={self.max_queued_texts}, "
            f"api_key={key}, allow_writes={self.allow_writes}, "
            f"cors_origins={list(self.cors_origins)})"
        )
