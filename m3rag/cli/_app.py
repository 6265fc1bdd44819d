"""The typer app, its global options, exit codes, error mapping and model loading."""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from m3rag.errors import (
    CollectionError,
    CollectionNotFoundError,
    DistributedError,
    EncoderMismatchError,
    InputTooLongError,
    MissingDependencyError,
    ModelError,
    UnsupportedOutputError,
)

app = typer.Typer(
    name="m3rag",
    help="Hybrid retrieval with BGE-M3: index documents, search them with every path.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_MODEL, EXIT_INDEX, EXIT_INTERNAL = 0, 1, 2, 3, 4, 70
EXIT_INTERRUPTED = 130
DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_MODEL = "BAAI/bge-m3"
DEFAULT_RERANKER = "BAAI/bge-reranker-v2-m3"
# The pair length search and ask rerank at: a full 512-token chunk of `m3rag index` and a query
# fit whole (the Reranker's own default, FlagReranker's 512, cuts the chunk's last tokens);
# models that take fewer positions (bge-reranker-base and -large: 512) get their limit
CLI_RERANK_MAX_LENGTH = 1024


# Options several commands share, defined once
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")]
DtypeOption = Annotated[
    str | None, typer.Option(help="float32, float16 or bfloat16 (default: auto).")
]
IndexLangOption = Annotated[
    str | None,
    typer.Option(
        "--lang",
        help="BM25 analysis language of documents without a 'lang' metadata field: an "
        "ISO 639-1 code (en, zh, th ...) or auto (default: detect each document's).",
    ),
]


class _State:
    verbose = False
    debug = False


state = _State()


def _stdout_console() -> Console:
    # Piped output is not a terminal: rich would wrap it at 80 columns. Give it room instead,
    # so a table row or a hit stays on its lines whatever reads it.
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=400, highlight=False, soft_wrap=True)


def out() -> Console:
    """Results go to stdout (made per call: tests and pipes swap sys.stdout)."""
    return _stdout_console()


def err() -> Console:
    """Progress, status and errors go to stderr."""
    if sys.stderr.isatty():
        return Console(stderr=True, highlight=False)
    return Console(stderr=True, width=200, highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line error (as text, never markup) and return the exit to raise."""
    line = Text("error: ", style="bold red")
    line.append(message)
    err().print(line)
    return typer.Exit(code)


def note(message: str) -> None:
    """A status line on stderr."""
    err().print(Text(message, style="dim"))


F = TypeVar("F", bound=Callable[..., Any])


def handled(func: F) -> F:
    """Map every error a command can meet to its documented exit code and a one-line message.

    ``--debug`` shows the traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise fail("interrupted; what was committed is kept", EXIT_INTERRUPTED) from None
        except Exception as exc:
            if state.debug:
                traceback.print_exc()
            raise fail(_describe(exc), exit_code(exc)) from exc

    return wrapper  # type: ignore[return-value]


def exit_code(exc: BaseException) -> int:
    """The documented exit code of an error (see ``docs/cli.md``)."""
    if isinstance(exc, (CollectionNotFoundError, MissingDependencyError)):
        return EXIT_USAGE  # the message says what to build or install
    if isinstance(exc, (UnsupportedOutputError, InputTooLongError)):
        return EXIT_USAGE
    if isinstance(exc, EncoderMismatchError):
        return EXIT_INDEX
    if isinstance(exc, (ModelError, DistributedError)):
        return EXIT_MODEL
    if isinstance(exc, CollectionError):
        return EXIT_INDEX
    if isinstance(exc, (ValueError, TypeError)):
        return EXIT_USAGE
    if isinstance(exc, OSError):
        return EXIT_INDEX
    return EXIT_INTERNAL


def _describe(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    if exit_code(exc) == EXIT_INTERNAL:
        return (
            f"unexpected {type(exc).__name__}: {message} (a bug in m3rag: please report it "
            "with the output of the same command run with --debug)"
        )
    if isinstance(exc, OSError) and not isinstance(exc, (ModelError, CollectionError)):
        return f"{message} ({type(exc).__name__})"
    return message


def version_callback(value: bool) -> None:
    if value:
        from m3rag import __version__

        typer.echo(f"m3rag {__version__}")
        raise typer.Exit


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show what third-party libraries log while loading."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Hybrid retrieval with BGE-M3: index documents, search them with every path."""
    state.verbose = verbose or debug
    state.debug = debug
    logging.getLogger("m3rag").setLevel(logging.INFO if state.verbose else logging.WARNING)


def check_device(device: str | None) -> None:
    """Refuse a malformed device before any model loads."""
    if device is not None and not DEVICE.match(device):
        msg = f"--device must be cpu, cuda, cuda:N, mps or xpu, got {device!r}"
        raise fail(msg, EXIT_USAGE)


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        msg = f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}"
        raise fail(msg, EXIT_USAGE)


def check_lang(lang: str | None, *, auto: bool = True) -> None:
    """``--lang`` must be a language code (or ``auto`` where detection is allowed)."""
    from m3rag.analysis import AUTO, family_of
    from m3rag.errors import UnknownLanguageError

    if lang is None or (auto and lang == AUTO):
        return
    if not auto and lang.strip().lower() == AUTO:
        msg = (
            f"--lang {lang} is not available here: a query is analysed as one language; give "
            "an ISO 639-1 code such as 'en', or leave --lang out to use every analysis the "
            "index holds"
        )
        raise fail(msg, EXIT_USAGE)
    try:
        family_of(lang)
    except UnknownLanguageError as exc:
        if auto:
            raise fail(f"--lang: {exc}", EXIT_USAGE) from exc
        # the library's message offers 'auto', which this option refuses
        msg = (
            f"--lang: {lang!r} is not a language code; use an ISO 639-1 code such as 'en', "
            "'zh', 'th' or 'pt-BR'"
        )
        raise fail(msg, EXIT_USAGE) from exc


@dataclass(frozen=True)
class StoreURI:
    """A ``--store`` URI naming a store on a server (``milvus://HOST:PORT/NAME``)."""

    spec: str

    def __str__(self) -> str:
        return self.spec


Target = Path | StoreURI
"""Where a command reads or writes: an index folder, or a store URI."""

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URI",
        help="A store instead of --index: milvus://HOST:PORT/NAME (pip install "
        "'m3rag[milvus]'; a token comes from M3RAG_MILVUS_TOKEN), or an index folder.",
    ),
]


def resolve_target(
    index: Path | None, store: str | None, *, required: bool = True
) -> Target | None:
    """``--index DIR`` or ``--store URI`` (one of them; a URI is checked, not yet opened)."""
    if index is not None and store is not None:
        raise fail("give either --index DIR or --store URI, not both", EXIT_USAGE)
    if store is None:
        if index is None and required:
            raise fail("give --index DIR (or --store URI)", EXIT_USAGE)
        return index
    if "://" not in store or store.startswith("file://"):
        return Path(store.removeprefix("file://"))
    from m3rag.index.uri import parse_milvus_uri

    try:
        parse_milvus_uri(store)
    except ValueError as exc:
        raise fail(f"--store: {exc}", EXIT_USAGE) from exc
    return StoreURI(store)


def peek_manifest(index: Target) -> dict[str, Any] | None:
    """An index's manifest as JSON, for the checks made before a model loads.

    ``None`` when there is none or it cannot be read: opening the collection, which follows,
    reports that damage with its own error and exit code. A store URI is asked for its
    recorded configuration (one call to the server, no model).
    """
    if isinstance(index, StoreURI):
        from m3rag.errors import M3RagError

        try:
            store = open_collection(index, None, read_only=True)
        except (M3RagError, ValueError, TypeError):
            return None
        try:
            return dict(store.manifest)
        finally:
            store.close()
    import json

    try:
        manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def built_lang(manifest: dict[str, Any]) -> str:
    """The ``lang`` an index analyses documents with, from its manifest."""
    analysis = manifest.get("analysis")
    if isinstance(analysis, dict):
        return str(analysis.get("lang"))
    if "lang" in manifest:  # a store on a server records it at the top
        return str(manifest["lang"])
    return "the legacy analyzer"


def check_index_lang(index: Target, lang: str | None) -> None:
    """An existing index keeps the ``lang`` it was built with: a different ``--lang`` is refused."""
    manifest = peek_manifest(index) if lang is not None else None
    if manifest is None:
        return
    built = built_lang(manifest)
    if built != lang:
        msg = (
            f"--lang {lang}: the index at {index} analyses documents with lang {built!r}; drop "
            "--lang, give each document a 'lang' metadata field, or index into a new folder"
        )
        raise fail(msg, EXIT_USAGE)


def check_index_path(index: Target, *, must_exist: bool) -> None:
    """``--index`` must be a folder (or, when it may be created, not exist yet).

    A store URI (its form checked by `resolve_target`) is asked of its server, before any model
    loads: a server that cannot be reached or refuses ends the command (exit 4), and so does
    a collection that does not exist when ``must_exist`` (exit 2; ``index`` creates it).
    """
    if isinstance(index, StoreURI):
        _check_store(index, must_exist=must_exist)
        return
    if index.exists() and not index.is_dir():
        msg = f"--index {index} is a file; give a folder for the index"
        raise fail(msg, EXIT_USAGE)
    if must_exist and not (index / "manifest.json").exists():
        msg = f"no index at {index}; build one with: m3rag index PATH... --index {index}"
        raise fail(msg, EXIT_USAGE)


def _check_store(store: StoreURI, *, must_exist: bool) -> None:
    """Open the store once without a model: what the server says comes before any loading."""
    try:
        col = open_collection(store, None, read_only=True)
    except CollectionNotFoundError:
        if must_exist:
            raise
        return
    col.close()


def _missing_store(store: StoreURI) -> str:
    """What to do about a ``--store`` collection that does not exist, on the command line."""
    from m3rag.index.uri import parse_milvus_uri

    server, name, _ = parse_milvus_uri(store.spec)
    return (
        f"no Milvus collection {name!r} at {server}; create it with: m3rag index PATH... "
        f"--store {store.spec}"
    )


_PYMILVUS_LEVELS: dict[str, int] = {}  # the levels pymilvus gave its loggers, for --debug


def quiet_pymilvus() -> None:
    """Silence pymilvus's loggers, unless --debug (which gets pymilvus's own levels back).

    pymilvus logs each failed call at ERROR with a traceback (and warns on paged reads from
    milvus-lite), before m3rag reports the same failure in its one line. Its import configures
    its loggers (level and handler of ``pymilvus``, ``pymilvus.milvus_client`` ...), so this
    runs after that import, before each store is opened.
    """
    try:
        # importing pymilvus configures its loggers: ours must come after
        import pymilvus  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return  # opening the store says which extra to install
    names = ["pymilvus"] + [
        name
        for name, logger in list(logging.root.manager.loggerDict.items())
        if name.startswith("pymilvus.")
        and isinstance(logger, logging.Logger)
        and logger.level != logging.NOTSET
    ]
    for name in names:
        logger = logging.getLogger(name)
        saved = _PYMILVUS_LEVELS.setdefault(name, logger.level)
        logger.setLevel(saved if state.debug else logging.CRITICAL)


def quiet_third_party() -> None:
    """Silence transformers' and the hub's loading bars and reports, unless --verbose."""
    if state.verbose:
        return
    import transformers
    from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    disable_progress_bars()
    logging.getLogger("transformers").setLevel(logging.ERROR)


@contextmanager
def loading(what: str) -> Iterator[None]:
    """A spinner on stderr while a model loads; load errors become exit code 3 with a hint."""
    quiet_third_party()
    try:
        with err().status(f"loading {what} ..."):
            yield
    except ModelError as exc:
        if isinstance(exc, (UnsupportedOutputError, InputTooLongError)):
            raise
        hint = (
            f"To work offline, download the model once (hf download {what}) or pass "
            "--model /path/to/a/local/checkpoint."
        )
        if state.debug:
            traceback.print_exc()
        raise fail(f"{exc}\n{hint}", EXIT_MODEL) from exc


def load_encoder(model: str, device: str | None, dtype: str | None) -> Any:
    from m3rag.encoder import M3Encoder

    with loading(model):
        return M3Encoder(model, device=device, dtype=dtype)


def load_reranker(model: str, device: str | None, max_length: int | None = None) -> Any:
    """The reranker; ``max_length`` ``None`` keeps the Reranker's default (512)."""
    from m3rag.rerank import Reranker

    with loading(model):
        if max_length is None:
            return Reranker(model, device=device)
        return Reranker(model, device=device, max_length=max_length)


def load_chunk_reranker(model: str, device: str | None, max_length: int | None) -> Any:
    """The reranker of search and ask, reading pairs of ``max_length`` tokens.

    By default `CLI_RERANK_MAX_LENGTH`, or the model's limit where it takes fewer.
    """
    from m3rag._hub import resolve_model_dir
    from m3rag._modelfiles import read_model_config

    if max_length is None:
        with loading(model):
            limit = read_model_config(resolve_model_dir(model)).usable_positions
        max_length = min(CLI_RERANK_MAX_LENGTH, limit)
    return load_reranker(model, device, max_length)


def stored_model(index: Target) -> str | None:
    """The model an index was built with, from its manifest (``None`` if unknown)."""
    manifest = peek_manifest(index)
    encoder = manifest.get("encoder") if manifest is not None else None
    model = encoder.get("model") if isinstance(encoder, dict) else None
    return str(model) if model else None


def open_collection(
    index: Target, encoder: Any, *, read_only: bool, create: bool = False, **options: Any
) -> Any:
    """The store at ``index``: a `Collection` folder, or a store URI through `open_store`."""
    if isinstance(index, StoreURI):
        from m3rag.index.uri import open_store

        quiet_pymilvus()
        try:
            return open_store(
                index.spec, encoder=encoder, read_only=read_only, create=create, **options
            )
        except CollectionNotFoundError as exc:
            # the library's message says create=True; here the way is a command
            raise CollectionNotFoundError(_missing_store(index)) from exc
    from m3rag.index import Collection

    if create and not (index / "manifest.json").exists():
        return Collection.create(index, encoder=encoder, **options)
    return Collection.open(index, encoder=encoder, read_only=read_only)


# An option whose value may be left out, and what it means then (typer has no such option)
# A Ray address: a local cluster, the running one, or a Ray Client or GCS address.
RAY_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.\-]+:\d+|\[[0-9a-fA-F:]+\]:\d+)$")
OPTIONAL_VALUES = {"--ray": ("local", RAY_ADDRESS)}


def optional_values(argv: list[str]) -> list[str]:
    """``--ray`` alone (last, before another option, or before a path) becomes ``--ray local``.

    A value counts as the option's only when it looks like one (``auto``, ``ray://...``,
    ``HOST:PORT``); anything else is left to be the next argument.
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in OPTIONAL_VALUES:
            default, looks_like = OPTIONAL_VALUES[arg]
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or not looks_like.match(following):
                out.append(default)
    return out


def main() -> None:
    """Entry point of the ``m3rag`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app(args=optional_values(sys.argv[1:]))
