"""``m3rag serve``: embeddings, reranking and hybrid search over HTTP."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from m3rag.cli._app import (
    DEFAULT_MODEL,
    EXIT_USAGE,
    DeviceOption,
    StoreOption,
    app,
    check_device,
    check_index_path,
    fail,
    handled,
    load_encoder,
    load_reranker,
    loading,
    note,
    open_collection,
    resolve_target,
    stored_model,
)

if TYPE_CHECKING:
    from m3rag.serve.batching import WaitPolicy


def _check_host(host: str, *, public: bool) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise fail(f"--host must be an IP address or localhost, got {host!r}", EXIT_USAGE) from None
    if not loopback and not public:
        msg = (
            f"--host {host} would expose the server beyond this machine; add --public to mean "
            "it (and --api-key, or M3RAG_API_KEY, to require a key)"
        )
        raise fail(msg, EXIT_USAGE)


@app.command()
@handled
def serve(
    index: Annotated[
        Path | None, typer.Option("--index", help="An index folder to serve /search from.")
    ] = None,
    store: StoreOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Encoder hub id or folder (default: the index's model)."),
    ] = None,
    reranker: Annotated[
        str | None,
        typer.Option("--reranker", help="Reranker hub id or folder (serves /rerank)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    public: Annotated[
        bool, typer.Option("--public", help="Allow a --host other than loopback.")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="M3RAG_API_KEY",
            help="Require `Authorization: Bearer KEY` (or set M3RAG_API_KEY). Never logged.",
            show_default=False,
        ),
    ] = None,
    allow_writes: Annotated[
        bool, typer.Option("--allow-writes", help="Serve /documents writes to the index.")
    ] = False,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="Allow this origin by CORS (repeatable; off by default)."
        ),
    ] = None,
    max_batch_tokens: Annotated[
        int,
        typer.Option(
            help="Tokens per shared batch and per forward pass (lower it on CPUs: less padding)."
        ),
    ] = 16384,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a batch may wait for more requests.")
    ] = 5.0,
    wait_policy: Annotated[
        str,
        typer.Option(
            help=(
                "adaptive: wait --max-wait-ms only under load (a lone request goes at once); "
                "always: every batch waits."
            )
        ),
    ] = "adaptive",
    max_queued_texts: Annotated[
        int, typer.Option(help="Texts allowed to wait; more get 429 + Retry-After.")
    ] = 4096,
    max_client_batch_size: Annotated[int, typer.Option(help="Texts per request.")] = 256,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 * 2**20,
    timeout: Annotated[float, typer.Option(help="Seconds a request may wait.")] = 60.0,
    device: DeviceOption = None,
    model_process: Annotated[
        bool,
        typer.Option(
            "--model-process/--in-process",
            help=(
                "Run each model in a child process, so the event loop never shares a GIL with "
                "it (meant for GPUs); --in-process (default) keeps it on a thread of the "
                "server's process."
            ),
        ),
    ] = False,
) -> None:
    """Serve embeddings (OpenAI and text-embeddings-inference shapes), reranking and search."""
    from m3rag._torchutil import prefer_passive_openmp
    from m3rag.serve import ServeConfig, _require_extra, create_app, run

    _require_extra()
    check_device(device)
    _check_host(host, public=public)
    if not 0 < port < 65536:
        raise fail(f"--port must be in 1..65535, got {port}", EXIT_USAGE)
    target = resolve_target(index, store, required=False)
    if allow_writes and target is None:
        raise fail("--allow-writes needs --index DIR or --store URI", EXIT_USAGE)
    if target is not None:
        check_index_path(target, must_exist=True)
    name = model or (stored_model(target) if target is not None else None) or DEFAULT_MODEL
    config = ServeConfig(
        model_name=name,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        wait_policy=cast("WaitPolicy", wait_policy),  # ServeConfig checks it
        max_queued_texts=max_queued_texts,
        max_client_batch_size=max_client_batch_size,
        max_request_bytes=max_request_bytes,
        request_timeout_s=timeout,
        api_key=api_key,
        allow_writes=allow_writes,
        cors_origins=tuple(cors_origin or ()),
    )
    # the event loop shares the cores with torch: OpenMP's threads must sleep, not spin, between
    # ops (set before torch loads; a policy the user chose stands)
    prefer_passive_openmp()
    # one budget for both cuts: what the batcher gathers and what one forward pass holds
    if model_process:
        encoder = load_model_process("encoder", name, device, max_batch_tokens, max_padding=None)
    else:
        encoder = serving_batches(load_encoder(name, device, None), max_batch_tokens)
    models = [encoder]
    try:
        rr = None
        if reranker and model_process:
            rr = load_model_process("reranker", reranker, device, max_batch_tokens)
        elif reranker:
            rr = load_reranker(reranker, device)
        models.append(rr)
        col = open_collection(target, encoder, read_only=not allow_writes) if target else None
    except BaseException:
        _close_models(models)
        raise
    try:
        note(
            f"serving {name} on http://{host}:{port}"
            + (f" with the index {target}" if target else "")
            + (" (writes on)" if allow_writes else "")
            + (" (API key required)" if api_key else "")
        )
        run(create_app(encoder, reranker=rr, collection=col, config=config), host=host, port=port)
    finally:
        if col is not None:
            col.close()
        _close_models(models)


def serving_batches(encoder: Any, max_batch_tokens: int) -> Any:
    """``encoder`` cutting its forward passes as the server's batches need; returned.

    One token budget for both cuts (what the batcher gathers, what one pass holds), and the
    device's padding bound for small batches of mixed lengths (0.1 on a CPU).
    """
    encoder.max_batch_tokens = max_batch_tokens
    encoder.max_padding = None
    return encoder


def load_model_process(
    kind: str, model: str, device: str | None, max_batch_tokens: int, **options: Any
) -> Any:
    """An encoder or reranker loaded in a child process (`m3rag.serve.process`)."""
    from m3rag.serve.process import ProcessEncoder, ProcessReranker

    cls = ProcessEncoder if kind == "encoder" else ProcessReranker
    with loading(model):
        return cls(
            model_name_or_path=model, device=device, max_batch_tokens=max_batch_tokens, **options
        )


def _close_models(models: list[Any]) -> None:
    for m in models:
        close = getattr(m, "close", None)  # a model process; an in-process model has none
        if close is not None:
            close()
