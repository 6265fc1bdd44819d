"""``m3rag index``: files and folders into an index, with progress that tells the truth."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from m3rag.cli._app import (
    DEFAULT_MODEL,
    EXIT_NOTHING,
    EXIT_USAGE,
    RAY_ADDRESS,
    DeviceOption,
    DtypeOption,
    IndexLangOption,
    StoreOption,
    StoreURI,
    app,
    check_device,
    check_dtype,
    check_index_lang,
    check_index_path,
    check_lang,
    err,
    fail,
    handled,
    load_encoder,
    note,
    open_collection,
    out,
    peek_manifest,
    resolve_target,
    stored_model,
)
from m3rag.ingest import SUFFIXES

# the file types ingest reads, from its own table so the messages cannot drift from it
_KINDS_HELP = " ".join(SUFFIXES)
_KINDS_TEXT = ", ".join(SUFFIXES[:-1]) + f" or {SUFFIXES[-1]}"

MIN_CHUNK_TOKENS = 8
# BGE-M3 (XLM-RoBERTa) and BERT-style models add two special tokens to a text
SPECIALS = 2


@app.command()
@handled
def index(
    paths: Annotated[list[Path], typer.Argument(help=f"Files and folders ({_KINDS_HELP}).")],
    index: Annotated[
        Path | None, typer.Option("--index", help="The index folder (or give --store).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help=f"Hub id or local folder of the encoder (default: {DEFAULT_MODEL}, or the "
            "model an existing index was built with).",
        ),
    ] = None,
    chunk_tokens: Annotated[
        int, typer.Option(help="Chunk size in tokens (specials included).")
    ] = 512,
    overlap: Annotated[
        int | None,
        typer.Option(help="Tokens shared by consecutive chunks (default: chunk size / 8)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Chunks encoded per call.")] = 64,
    commit_every: Annotated[
        int, typer.Option(help="Documents per commit (an interrupted run keeps them).")
    ] = 32,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    lang: IndexLangOption = None,
    store: StoreOption = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Read, chunk and encode on a Ray cluster (pip install 'm3rag[ray]'): alone, a "
            "local cluster; or auto, ray://HOST:PORT, HOST:PORT.",
        ),
    ] = None,
) -> None:
    """Index documents: chunk them, encode every chunk with all three heads, commit in batches.

    Re-running skips documents already indexed (same text and metadata); a document whose
    content changed replaces its old chunks. Unreadable files and bad records are reported and
    skipped. With --ray, the same runs on a Ray cluster: encoder actors on its GPUs (or CPUs),
    the writes from this process.
    """
    from m3rag.ingest import IndexProgress, Problem, default_overlap, discover, index_files

    target = resolve_target(index, store)
    assert target is not None  # noqa: S101 - required=True
    # every option is checked before the model loads
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise fail(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}", 2)
    most = (chunk_tokens - SPECIALS) // 2
    if overlap is not None and not 0 <= overlap < most:
        msg = f"--overlap must be in [0, {most}) for --chunk-tokens {chunk_tokens}, got {overlap}"
        raise fail(msg, EXIT_USAGE)
    for name, value in (("--batch-size", batch_size), ("--commit-every", commit_every)):
        if value <= 0:
            raise fail(f"{name} must be positive, got {value}", EXIT_USAGE)
    check_device(device)
    check_dtype(dtype)
    if ray is not None:
        _check_ray(ray)
    check_index_path(target, must_exist=False)
    check_lang(lang)
    if isinstance(target, StoreURI) and lang == "auto":
        msg = "--lang auto (per-document detection) is not available on Milvus; give a language"
        raise fail(msg, EXIT_USAGE)
    check_index_lang(target, lang)
    files, problems = discover(paths)
    for problem in problems:
        _print_problem(problem)
    if not files:
        msg = f"no {_KINDS_TEXT} files found in the given paths"
        raise fail(msg, EXIT_NOTHING)

    kept = peek_manifest(target)
    name = model or (stored_model(target) if kept is not None else None) or DEFAULT_MODEL
    # with --ray this process only records the model in the index: the actors encode
    encoder = load_encoder(name, "cpu" if ray is not None else device, dtype)
    if chunk_tokens > encoder.max_length:
        note(f"--chunk-tokens {chunk_tokens} is capped at the model's {encoder.max_length}")
        chunk_tokens = encoder.max_length
    if kept is None and isinstance(target, StoreURI) and lang is None:
        note(f"BM25 on {target} analyses documents as English; give --lang for another language")
    default_lang = "en" if isinstance(target, StoreURI) else "auto"
    col = open_collection(target, encoder, read_only=False, create=True, lang=lang or default_lang)
    try:
        with Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("documents"),
            TaskProgressColumn(),
            TextColumn("{task.fields[chunks]} chunks"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err(),
            transient=False,
        ) as progress:
            task = progress.add_task("index", total=None, chunks=0, rate="")

            def on_progress(p: IndexProgress) -> None:
                elapsed = progress.tasks[task].elapsed or 0.0
                rate = f"{p.done / elapsed:.1f} docs/s" if elapsed > 0 else ""
                progress.update(task, completed=p.done, total=p.total, chunks=p.chunks, rate=rate)

            def on_problem(p: Problem) -> None:
                progress.console.print(Text("skipped ", style="yellow") + Text(str(p)))

            run = functools.partial(
                index_files if ray is None else _ray_index(ray, encoder, device, dtype),
                col,
                paths,
                chunk_tokens=chunk_tokens,
                overlap=default_overlap(chunk_tokens) if overlap is None else overlap,
                batch_size=batch_size,
                commit_every=commit_every,
                on_progress=on_progress,
                # the paths' own problems were printed above, before the model loaded
                on_problem=lambda p: None if p in problems else on_problem(p),
            )
            report = run()
    finally:
        col.close()
    out().print(Text(f"{report} -> {target}"))
    if report.documents == 0 and report.skipped == 0:
        raise typer.Exit(EXIT_NOTHING)


def _check_ray(address: str) -> None:
    if not RAY_ADDRESS.match(address):
        msg = (
            f"--ray takes local, auto, ray://HOST:PORT or HOST:PORT, got {address!r}; write "
            "--ray alone for a local cluster (after the paths, or before another option)"
        )
        raise fail(msg, EXIT_USAGE)
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise fail('--ray needs Ray: pip install "m3rag[ray]"', EXIT_USAGE) from None


def _ray_index(address: str, encoder: Any, device: str | None, dtype: str | None) -> Any:
    """`index_with_ray` on the cluster at ``address``, with the CLI's model, device and dtype."""
    from m3rag.distributed import index_with_ray

    return functools.partial(
        index_with_ray,
        model_name_or_path=encoder.model_name_or_path,
        address=address,
        device=device,
        dtype=dtype,
    )


def _print_problem(problem: object) -> None:
    err().print(Text("skipped ", style="yellow") + Text(str(problem)))
