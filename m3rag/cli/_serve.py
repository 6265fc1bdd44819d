"""``m3rag serve``: embeddings, reranking and hybrid search over HTTP."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

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
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log one line per request (uvicorn's access log).",
        ),
    ] = True,
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
    batch_overhead: Annotated[
        str,
        typer.Option(
            help=(
                "The fixed cost of one forward pass, in token slots, by which a gathered "
                "batch is cut into passes: auto (measured on the model at start on a CPU, "
                "none on a GPU), none (fill each pass to --max-batch-tokens) or a number."
            )
        ),
    ] = "auto",
    max_queued_texts: Annotated[
        int, typer.Option(help="Texts allowed to wait; more get 429 + Retry-After.")
    ] = 4096,
    max_client_batch_size: Annotated[int, typer.Option(help="Texts per request.")] = 256,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 * 2**20,
    max_colbert_tokens: Annotated[
        int,
        typer.Option(
            help=(
                "Most tokens one request may get ColBERT vectors for (/embed_all, /documents):"
                " each is colbert_dim floats."
            )
        ),
    ] = 32768,
    timeout: Annotated[
        float,
        typer.Option(
            help=(
                "Seconds a request may wait for a model or the index (then 503), or its body "
                "take to arrive (then 408). A write that reached the index is awaited to its end."
            )
        ),
    ] = 60.0,
    device: DeviceOption = None,
    model_process: Annotated[
        bool,
        typer.Option(
            "--model-process/--in-process",
            help=(
                "Run each model in a child process, so the event loop never shares a GIL with "
                "it (meant for GPUs); --in-process (default) keeps it on threads of the "
                "server's process (see --model-threads)."
            ),
        ),
    ] = False,
    model_workers: Annotated[
        int,
        typer.Option(
            help=(
                "Copies of each model, each in a child process with its own share of the CPU "
                "cores, running shared batches side by side (N copies of the weights in "
                "memory). More than 1 implies --model-process."
            )
        ),
    ] = 1,
    model_threads: Annotated[
        str,
        typer.Option(
            help=(
                "Worker threads running shared batches side by side on one in-process copy "
                "of each model, each with its own share of the CPU cores: auto (2 on a CPU "
                "with 2 cores or more, else 1) or 1..64."
            )
        ),
    ] = "auto",
) -> None:
    """Serve embeddings (OpenAI and text-embeddings-inference shapes), reranking and search."""
    from m3rag._torchutil import prefer_passive_openmp
    from m3rag.serve import ServeConfig, _require_extra, create_app, run

    _require_extra()
    check_device(device)
    _check_host(host, public=public)
    if not 0 < port < 65536:
        raise fail(f"--port must be in 1..65535, got {port}", EXIT_USAGE)
    overhead = _parse_batch_overhead(batch_overhead)
    if not 1 <= model_workers <= 64:
        raise fail(f"--model-workers must be in 1..64, got {model_workers}", EXIT_USAGE)
    threads = _parse_model_threads(model_threads)
    if threads is not None and threads > 1 and (model_process or model_workers > 1):
        msg = (
            "--model-threads runs the models in the server's process: it cannot be combined "
            "with --model-process or --model-workers"
        )
        raise fail(msg, EXIT_USAGE)
    model_process = model_process or model_workers > 1
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
        max_colbert_tokens=max_colbert_tokens,
        request_timeout_s=timeout,
        api_key=api_key,
        allow_writes=allow_writes,
        cors_origins=tuple(cors_origin or ()),
    )
    # the event loop shares the cores with torch: OpenMP's threads must sleep, not spin, between
    # ops (set before torch loads; a policy the user chose stands)
    prefer_passive_openmp()
    # one budget for both cuts: what the batcher gathers and what one forward pass holds
    models: list[Any] = []
    try:
        if model_process:
            encoders = load_model_processes(
                "encoder", name, device, max_batch_tokens, model_workers, overhead, models
            )
        else:
            encoders = in_process_models(
                load_encoder(name, device, None), max_batch_tokens, overhead, threads
            )
        encoder = encoders[0]
        rerankers: list[Any] = []
        if reranker and model_process:
            rerankers = load_model_processes(
                "reranker", reranker, device, max_batch_tokens, model_workers, overhead, models
            )
        elif reranker:
            rerankers = in_process_models(
                load_reranker(reranker, device), max_batch_tokens, overhead, threads
            )
        rr = rerankers[0] if rerankers else None
        col = open_collection(target, encoder, read_only=not allow_writes) if target else None
    except BaseException:
        _close_models(models)
        raise
    try:
        if len(encoders) > 1:
            share = encoder.torch_threads
            torch_threads = f"{share} torch thread{'s' if share != 1 else ''}"
            note(
                f"{len(encoders)} model workers, each in its own process with {torch_threads}"
                if model_process
                else f"{len(encoders)} model threads sharing one copy of each model, each with "
                f"{torch_threads}"
            )
        if encoder.batch_overhead is not None:
            costs = f"{encoder.batch_overhead} token slots"
            if rr is not None and rr.batch_overhead is not None:
                costs += f" for the encoder, {rr.batch_overhead} for the reranker"
            measured = " (measured on each model)" if rr is not None else " (measured on the model)"
            note(
                f"cutting forward passes by cost: a pass's fixed cost is {costs}"
                + (measured if overhead == "auto" else "")
            )
        note(
            f"serving {name} on http://{host}:{port}"
            + (f" with the index {target}" if target else "")
            + (" (writes on)" if allow_writes else "")
            + (" (API key required)" if api_key else "")
        )
        served = create_app(
            encoder,
            reranker=rr,
            collection=col,
            config=config,
            encoder_replicas=encoders[1:],
            reranker_replicas=rerankers[1:],
        )
        run(served, host=host, port=port, access_log=access_log)
    finally:
        if col is not None:
            col.close()
        _close_models(models)


def _parse_batch_overhead(text: str) -> int | Literal["auto"] | None:
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    if text.isdigit() and text.isascii():
        return int(text)
    msg = f"--batch-overhead must be auto, none or a non-negative integer, got {text!r}"
    raise fail(msg, EXIT_USAGE)


def _parse_model_threads(text: str) -> int | None:
    """``--model-threads``: ``None`` for auto, else a count in 1..64."""
    if text == "auto":
        return None
    if text.isdigit() and text.isascii() and 1 <= int(text) <= 64:
        return int(text)
    msg = f"--model-threads must be auto or in 1..64, got {text!r}"
    raise fail(msg, EXIT_USAGE)


def serving_batches(
    model: Any, max_batch_tokens: int, batch_overhead: int | Literal["auto"] | None = "auto"
) -> Any:
    """``model`` (an encoder or a reranker) cutting its passes as the server's batches need.

    Returns the model it was given. One token budget for both cuts (what the batcher gathers,
    what one pass holds), and by default the device's cut by cost for small batches of mixed
    lengths (see [`M3Encoder`][m3rag.M3Encoder]'s ``batch_overhead``).
    """
    model.max_batch_tokens = max_batch_tokens
    model.batch_overhead = batch_overhead
    model.batch_overhead  # noqa: B018 - "auto" measures now, before the first request
    return model


def in_process_models(
    model: Any,
    max_batch_tokens: int,
    batch_overhead: int | Literal["auto"] | None,
    threads: int | None,
) -> list[Any]:
    """``model`` set up for the server's batches, as ``threads`` replicas sharing its weights.

    ``threads=None`` is auto (`m3rag.serve.threads.auto_model_threads`). The replicas
    (`m3rag.serve.threads`) split the CPU cores. The pass overhead (``"auto"``) is measured
    on the share of cores one replica runs with, before the copies are made, so they take the
    figure with them.
    """
    from m3rag._torchutil import available_cores
    from m3rag.serve.threads import auto_model_threads, thread_replicas

    if threads is None:
        threads = auto_model_threads(model.device.type)
    if threads == 1:
        return [serving_batches(model, max_batch_tokens, batch_overhead)]
    import torch

    cores = available_cores()
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, cores // threads))
    try:
        serving_batches(model, max_batch_tokens, batch_overhead)
    finally:
        torch.set_num_threads(before)
    return thread_replicas(model, threads, cores=cores)


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


def load_model_processes(
    kind: str,
    model: str,
    device: str | None,
    max_batch_tokens: int,
    workers: int,
    batch_overhead: int | Literal["auto"] | None,
    started: list[Any],
) -> list[Any]:
    """``workers`` copies of a model, each in a child process of its own.

    Each copy is appended to ``started`` as soon as it runs, so the caller can close them all if
    a later one fails. Several copies split the CPU cores between them for torch's CPU ops (at
    least one thread each; on a GPU they share the device). The first copy measures ``"auto"``'s
    pass overhead alone (the others are not started yet, so nothing competes with the
    measurement) and the rest reuse its figure.
    """
    from m3rag._torchutil import available_cores

    threads = max(1, available_cores() // workers) if workers > 1 else None
    out: list[Any] = []
    for i in range(workers):
        options: dict[str, Any] = {"batch_overhead": batch_overhead}
        if threads is not None:
            options["torch_threads"] = threads
        one = load_model_process(kind, model, device, max_batch_tokens, **options)
        started.append(one)
        out.append(one)
        if i == 0:
            batch_overhead = one.batch_overhead  # measured (or given) once, for every copy
    return out


def _close_models(models: list[Any]) -> None:
    for m in models:
        close = getattr(m, "close", None)  # a model process; an in-process model has none
        if close is not None:
            close()
