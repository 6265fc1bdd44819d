"""The ``m3rag`` command line: index folders, search them, describe an index.

Exit codes: 0 success; 1 nothing to do or nothing indexed; 2 bad usage or no index at the path;
3 the model cannot be loaded; 4 the index is locked by another writer or damaged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from m3rag.errors import (
    CollectionLockedError,
    CollectionNotFoundError,
    EncoderMismatchError,
    IndexFormatError,
    ModelLoadError,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="m3rag",
    help="Hybrid retrieval with BGE-M3: index documents, search them with every path.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

EXIT_NOTHING, EXIT_USAGE, EXIT_MODEL, EXIT_LOCKED = 1, 2, 3, 4

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hub id (e.g. BAAI/bge-m3) or local folder of the encoder. Default for index: "
        "BAAI/bge-m3; for search: the model the index was built with.",
    ),
]
IndexOption = Annotated[Path, typer.Option("--index", help="The index folder.")]


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _no_index(index: Path) -> typer.Exit:
    return _fail(
        f"no index at {index}; build one with: m3rag index PATH... --index {index}", EXIT_USAGE
    )


def _load_encoder(model: str, device: str | None, dtype: str | None) -> Any:
    from m3rag.encoder import M3Encoder

    try:
        with console.status(f"loading {model} ..."):
            return M3Encoder(model, device=device, dtype=dtype)
    except ModelLoadError as exc:
        raise _fail(
            f"{exc}\nTo work offline, download the model once (huggingface-cli download {model}) "
            "or pass --model /path/to/a/local/checkpoint.",
            EXIT_MODEL,
        ) from exc


def _open(index: Path, encoder: Any, *, read_only: bool) -> Any:
    from m3rag.index import Collection

    try:
        return Collection.open(index, encoder=encoder, read_only=read_only)
    except CollectionNotFoundError as exc:
        raise _no_index(index) from exc
    except CollectionLockedError as exc:
        raise _fail(str(exc), EXIT_LOCKED) from exc
    except (IndexFormatError, EncoderMismatchError) as exc:
        raise _fail(str(exc), EXIT_LOCKED) from exc


@app.command()
def index(
    paths: Annotated[
        list[Path], typer.Argument(help="Files and folders (.txt .md .html .pdf .jsonl).")
    ],
    index: IndexOption,
    model: ModelOption = None,
    chunk_tokens: Annotated[
        int, typer.Option(help="Chunk size in tokens (specials included).")
    ] = 512,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive chunks.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Chunks encoded per call.")] = 64,
    commit_every: Annotated[
        int, typer.Option(help="Documents per commit (an interrupted run keeps them).")
    ] = 32,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, float16 or bfloat16 (default: auto).")
    ] = None,
) -> None:
    """Index documents: chunk them, encode every chunk with all three heads, commit in batches.

    Re-running skips documents already indexed (same text and metadata); a document whose
    content changed replaces its old chunks. Unreadable files are reported and skipped.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from m3rag.chunking import Chunker
    from m3rag.index import Collection
    from m3rag.ingest import discover, document_sha256, read_documents
    from m3rag.types import Document

    files, problems = discover(paths)
    for found in problems:
        errors.print(f"[yellow]skipped[/] {escape(str(found))}")
    if not files:
        raise _fail(
            "no .txt, .md, .html, .pdf or .jsonl files found in the given paths", EXIT_NOTHING
        )
    if index.exists() and (index / "manifest.json").exists():
        stored = _stored_model(index)
        model_name = model or stored or "BAAI/bge-m3"
        encoder = _load_encoder(model_name, device, dtype)
        col = _open(index, encoder, read_only=False)
    else:
        encoder = _load_encoder(model or "BAAI/bge-m3", device, dtype)
        try:
            col = Collection.create(index, encoder=encoder)
        except FileExistsError as exc:
            raise _fail(str(exc), EXIT_USAGE) from exc
    try:
        chunker = Chunker(
            encoder.tokenizer, max_tokens=min(chunk_tokens, encoder.max_length), overlap=overlap
        )
    except ValueError as exc:
        col.close()
        raise _fail(str(exc), EXIT_USAGE) from exc
    indexed_shas = {str(v) for v in col.metadata_values("doc_sha256")}
    known_parents = {str(v) for v in col.metadata_values("parent_id")}
    stats = {"documents": 0, "chunks": 0, "skipped": 0, "replaced": 0, "unreadable": len(problems)}
    buffer: list[Document] = []
    docs_since_commit = 0

    def flush() -> None:
        if buffer:
            col.add(buffer)
            buffer.clear()

    with Progress(
        TextColumn("[bold]indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("index", total=len(files))
        current_file = None
        for doc, problem in read_documents(files):
            if problem is not None:
                stats["unreadable"] += 1
                progress.console.print(f"[yellow]skipped[/] {escape(str(problem))}")
                if problem.line is None:
                    progress.advance(task)
                continue
            assert doc is not None  # noqa: S101 - read_documents yields one or the other
            source = doc.metadata.get("source")
            if source != current_file:
                if current_file is not None:
                    progress.advance(task)
                current_file = source
            sha = document_sha256(doc)
            if sha in indexed_shas:
                stats["skipped"] += 1
                continue
            parent = str(doc.id)
            if parent in known_parents:  # content changed: replace the old chunks
                flush()
                col.delete(col.ids_matching({"parent_id": parent}))
                stats["replaced"] += 1
            chunks = chunker.split(doc.text, parent_id=parent)
            meta = dict(doc.metadata)
            buffer.extend(
                Document(
                    c.text,
                    c.id,
                    {
                        **meta,
                        "parent_id": parent,
                        "chunk": c.index,
                        "start": c.start,
                        "end": c.end,
                        "doc_sha256": sha,
                    },
                )
                for c in chunks
            )
            indexed_shas.add(sha)
            known_parents.add(parent)
            stats["documents"] += 1
            stats["chunks"] += len(chunks)
            docs_since_commit += 1
            if len(buffer) >= batch_size:
                flush()
            if docs_since_commit >= commit_every:
                flush()
                col.commit()
                docs_since_commit = 0
        if current_file is not None:
            progress.advance(task)
        flush()
        col.commit()
    col.close()
    console.print(
        f"indexed {stats['documents']} documents ({stats['chunks']} chunks), "
        f"skipped {stats['skipped']} already indexed, replaced {stats['replaced']}, "
        f"{stats['unreadable']} unreadable -> {index}"
    )
    if stats["documents"] == 0 and stats["skipped"] == 0:
        raise typer.Exit(EXIT_NOTHING)


class _RateColumn(ProgressColumn):
    """Files per second."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:.1f} files/s", style="progress.data.speed")


def _stored_model(index: Path) -> str | None:
    try:
        manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    encoder = manifest.get("encoder") or {}
    model = encoder.get("model")
    return str(model) if model else None


MODES = ("hybrid", "dense", "lexical", "bm25")
ROLLUP_MAX: Final[Literal["max"]] = "max"


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords.")],
    index: IndexOption,
    k: Annotated[int, typer.Option("--k", help="How many results.")] = 10,
    mode: Annotated[str, typer.Option(help="hybrid, dense, lexical or bm25.")] = "hybrid",
    rerank: Annotated[
        bool, typer.Option("--rerank/--no-rerank", help="Rerank with a cross-encoder.")
    ] = False,
    reranker: Annotated[
        str, typer.Option(help="Reranker hub id or folder.")
    ] = "BAAI/bge-reranker-v2-m3",
    model: ModelOption = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="JSON lines instead of a table.")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda ... (default: auto).")] = None,
) -> None:
    """Search an index: every path recalls, every candidate is scored on every path, fused."""
    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}", EXIT_USAGE)
    if k <= 0:
        raise _fail(f"--k must be positive, got {k}", EXIT_USAGE)
    if not query.strip():
        raise _fail("the query is empty", EXIT_USAGE)
    if not (index / "manifest.json").exists():
        raise _no_index(index)
    model_name = model or _stored_model(index) or "BAAI/bge-m3"
    encoder = _load_encoder(model_name, device, None)
    col = _open(index, encoder, read_only=True)
    try:
        retriever = _retriever(col, encoder, mode, rerank, reranker, device)
        results = retriever.retrieve(query, k=k)
    finally:
        col.close()
    if json_lines:
        for rank, hit in enumerate(results, 1):
            record = {
                "rank": rank,
                "id": hit.id,
                "score": hit.score,
                "chunk_id": hit.chunk_id,
                "rerank_score": hit.rerank_score,
                "paths": {p: {"raw": s.raw, "rank": s.rank} for p, s in hit.paths.items()},
                "text": hit.text,
                "metadata": dict(hit.metadata),
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    _print_results(query, results)


def _retriever(
    col: Any,
    encoder: Any,
    mode: str,
    rerank: bool,
    reranker: str,
    device: str | None,
    *,
    rollup: bool = True,
) -> Any:
    from m3rag.eval import mode_config
    from m3rag.fusion import FusionConfig
    from m3rag.retriever import HybridRetriever, available_paths

    # the same recall paths and weights as `m3rag eval` uses for each mode
    try:
        recall, weights = mode_config(mode, available_paths(col, encoder))
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    fusion = FusionConfig(weights=weights, normalization="zscore" if mode == "hybrid" else "none")
    rr = None
    if rerank:
        from m3rag.rerank import Reranker

        try:
            with console.status(f"loading {reranker} ..."):
                rr = Reranker(reranker, device=device)
        except ModelLoadError as exc:
            raise _fail(f"{exc}\nOr search with --no-rerank.", EXIT_MODEL) from exc
    # indexes built by `m3rag index` hold chunks: rank their parent documents
    chunked = rollup and bool(col.metadata_values("parent_id"))
    return HybridRetriever(
        col,
        encoder=encoder,
        reranker=rr,
        fusion=fusion,
        recall=recall,
        rollup=ROLLUP_MAX if chunked else None,
    )


def _highlight(text: str, query: str, width: int = 240) -> str:
    words = sorted(
        {w for w in re.findall(r"\w+", query.lower()) if len(w) > 1 or not w.isascii()},
        key=len,
        reverse=True,
    )
    snippet = " ".join(text.split())
    if len(snippet) > width:
        lower = snippet.lower()
        hits = [lower.find(w) for w in words if lower.find(w) >= 0]
        start = max(0, min(hits) - width // 4) if hits else 0
        snippet = ("…" if start else "") + snippet[start : start + width] + "…"
    out = escape(snippet)
    for w in words:
        out = re.sub(
            re.escape(escape(w)),
            lambda m: f"[bold yellow]{m.group(0)}[/]",
            out,
            flags=re.IGNORECASE,
        )
    return out


def _print_results(query: str, results: Any) -> None:
    table = Table(title=f"{escape(query)} ({results.candidates} candidates)", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("document")
    table.add_column("score", justify="right")
    for p in results.paths:
        table.add_column(p, justify="right")
    table.add_column("evidence")
    for rank, hit in enumerate(results, 1):
        cells = [str(rank), escape(hit.id), f"{hit.score:.4f}"]
        for p in results.paths:
            s = hit.paths.get(p)
            cells.append("-" if s is None else f"{s.raw:.3f}\n#{s.rank}")
        cells.append(_highlight(hit.text, query))
        table.add_row(*cells)
    console.print(table)


@app.command()
def info(index: IndexOption) -> None:
    """Describe an index: documents, chunks, model fingerprint, sizes, format version."""
    if not (index / "manifest.json").exists():
        raise _no_index(index)
    col = _open(index, None, read_only=True)
    try:
        manifest = col.manifest
        chunks = col.count()
        parents = col.metadata_values("parent_id")
        size = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
        table = Table(show_header=False)
        rows = [
            ("documents", str(len(parents) if parents else chunks)),
            ("chunks", str(chunks)),
            ("model", str((manifest.get("encoder") or {}).get("model"))),
            ("heads", ", ".join(manifest["heads"])),
            ("dense dim", str(manifest.get("dim"))),
            ("colbert dim", f"{manifest.get('colbert_dim')} ({manifest.get('colbert_dtype')})"),
            (
                "tokenizer sha256",
                str((manifest.get("encoder") or {}).get("tokenizer_sha256"))[:16] + "…",
            ),
            ("generation", str(manifest["generation"])),
            ("format version", str(manifest["format_version"])),
            ("size on disk", f"{size / 1e6:.1f} MB"),
        ]
        for name, value in rows:
            table.add_row(name, escape(value))
        console.print(table)
    finally:
        col.close()


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    index: IndexOption,
    k: Annotated[int, typer.Option("--k", help="Evidence passages to cite.")] = 5,
    rerank: Annotated[
        bool, typer.Option("--rerank/--no-rerank", help="Rerank with a cross-encoder.")
    ] = True,
    reranker: Annotated[
        str, typer.Option(help="Reranker hub id or folder.")
    ] = "BAAI/bge-reranker-v2-m3",
    model: ModelOption = None,
    llm: Annotated[
        str | None,
        typer.Option(
            help="Base URL of an OpenAI-compatible API (e.g. http://localhost:8000/v1) that "
            "writes an answer with citations; the key is read from OPENAI_API_KEY.",
        ),
    ] = None,
    llm_model: Annotated[
        str, typer.Option(help="Model name sent to the --llm endpoint.")
    ] = "gpt-4o-mini",
    device: Annotated[str | None, typer.Option(help="cpu, cuda ... (default: auto).")] = None,
) -> None:
    """Answer a question from the index: the cited evidence, grouped by document.

    Without --llm this is the retrieval half of a QA bot: hybrid retrieval over chunks, reranked,
    printed as numbered passages grouped by their document. With --llm, an OpenAI-compatible chat
    endpoint writes a grounded answer citing those numbers.
    """
    if not question.strip():
        raise _fail("the question is empty", EXIT_USAGE)
    if k <= 0:
        raise _fail(f"--k must be positive, got {k}", EXIT_USAGE)
    if not (index / "manifest.json").exists():
        raise _no_index(index)
    encoder = _load_encoder(model or _stored_model(index) or "BAAI/bge-m3", device, None)
    col = _open(index, encoder, read_only=True)
    try:
        retriever = _retriever(col, encoder, "hybrid", rerank, reranker, device, rollup=False)
        results = retriever.retrieve(question, k=k)
    finally:
        col.close()
    if not len(results):
        console.print("no evidence found")
        raise typer.Exit(EXIT_NOTHING)
    groups: dict[str, list[tuple[int, Any]]] = {}
    for n, hit in enumerate(results, 1):
        groups.setdefault(hit.parent_id or hit.id, []).append((n, hit))
    for doc, cited in groups.items():
        source = cited[0][1].metadata.get("title") or cited[0][1].metadata.get("source") or doc
        console.print(f"[bold]{escape(str(doc))}[/]  [dim]{escape(str(source))}[/]")
        for n, hit in cited:
            console.print(f"  [cyan][{n}][/] {_highlight(hit.text, question, width=400)}")
    if llm:
        answer = _llm_answer(llm, llm_model, question, list(results))
        console.print("\n[bold]answer[/]")
        console.print(escape(answer))


def _llm_answer(base_url: str, model: str, question: str, hits: list[Any]) -> str:
    """Ask an OpenAI-compatible chat endpoint for an answer that cites the numbered passages."""
    import os
    import urllib.error
    import urllib.request

    evidence = "\n\n".join(f"[{n}] {h.text}" for n, h in enumerate(hits, 1))
    payload = {
        "model": model,
        "temperature": 0,
        "messages": [
            {
                "role": "system",
                "content": "Answer only from the numbered passages. Cite them like [1]. "
                "If they do not contain the answer, say so.",
            },
            {"role": "user", "content": f"Passages:\n{evidence}\n\nQuestion: {question}"},
        ],
    }
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"  # never printed or logged
    url = base_url.rstrip("/") + "/chat/completions"
    if not url.startswith(("http://", "https://")):
        raise _fail(f"--llm must be an http(s) URL, got {base_url!r}", EXIT_USAGE)
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            body = json.loads(response.read().decode("utf-8"))
        return str(body["choices"][0]["message"]["content"]).strip()
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise _fail(f"the LLM endpoint {url} failed: {exc}", EXIT_MODEL) from exc


@app.command("eval")
def eval_(
    dataset: Annotated[
        Path, typer.Argument(help="A BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.")
    ],
    modes: Annotated[
        str,
        typer.Option(help="Comma-separated: dense, lexical, bm25, colbert, hybrid, hybrid+rerank."),
    ] = "dense,lexical,bm25,colbert,hybrid",
    k: Annotated[str, typer.Option("--k", help="Comma-separated metric cut-offs.")] = "10,100",
    model: ModelOption = None,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="Keep the index here (reused on the next run); default: a temporary folder.",
        ),
    ] = None,
    reranker: Annotated[
        str, typer.Option(help="Reranker for hybrid+rerank.")
    ] = "BAAI/bge-reranker-v2-m3",
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    tune: Annotated[
        bool, typer.Option("--tune", help="Grid-search hybrid fusion weights on a dev split first.")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda ... (default: auto).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, float16 or bfloat16 (default: auto).")
    ] = None,
) -> None:
    """Evaluate retrieval modes on a BEIR dataset: nDCG@k, Recall@k, MRR@k (pytrec_eval).

    With --tune, fusion weights are searched on qrels/dev.tsv when the dataset has one, else on
    the first half of the test queries, and the report is computed on the other half.
    """
    import tempfile

    from m3rag.eval import MODES, evaluate, index_corpus, load_beir, tune_weights
    from m3rag.index import Collection

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in mode_list if m not in MODES]
    if unknown or not mode_list:
        raise _fail(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}", EXIT_USAGE)
    try:
        k_values = sorted({int(x) for x in k.split(",") if x.strip()})
    except ValueError as exc:
        raise _fail(f"--k must be comma-separated integers, got {k!r}", EXIT_USAGE) from exc
    if not k_values or min(k_values) <= 0:
        raise _fail(f"--k must be positive integers, got {k!r}", EXIT_USAGE)
    try:
        data = load_beir(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    needs_model = any(m != "bm25" for m in mode_list) or tune
    encoder = _load_encoder(model or "BAAI/bge-m3", device, dtype) if needs_model else None
    tmp = None
    folder = index
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="m3rag-eval-")
        folder = Path(tmp.name) / "index"
    try:
        if (folder / "manifest.json").exists():
            col = _open(folder, encoder, read_only=False)
        else:
            col = Collection.create(
                folder, encoder=encoder, heads=None if encoder is not None else ()
            )
        with console.status(f"indexing {len(data.corpus)} documents of {data.name} ..."):
            added = index_corpus(data, col)
        n_docs, n_queries = len(data.corpus), len(data.queries)
        console.print(
            f"{data.name}: {n_docs} documents ({added} newly indexed), {n_queries} queries"
        )
        queries = data.queries
        tuned = None
        rr = None
        if "hybrid+rerank" in mode_list:
            from m3rag.rerank import Reranker

            try:
                rr = Reranker(reranker, device=device)
            except ModelLoadError as exc:
                raise _fail(str(exc), EXIT_MODEL) from exc
        if tune:
            dev_file = dataset / "qrels" / "dev.tsv"
            if dev_file.exists():
                dev = load_beir(dataset, split="dev").queries
            else:
                ids = list(queries)
                dev = {q: queries[q] for q in ids[: len(ids) // 2]}
                queries = {q: queries[q] for q in ids[len(ids) // 2 :]}
                console.print(
                    f"no qrels/dev.tsv: tuning on {len(dev)} test queries, "
                    f"reporting on the other {len(queries)}"
                )
            with console.status("tuning fusion weights ..."):
                tuned, score = tune_weights(data, col, encoder=encoder, dev_queries=dev)
            console.print(f"best weights on dev: {tuned} (nDCG@10 {score:.4f})")
        report = evaluate(
            data,
            col,
            encoder=encoder,
            modes=mode_list,
            k_values=k_values,
            reranker=rr,
            weights=tuned,
            queries=queries,
        )
        col.close()
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    finally:
        if tmp is not None:
            tmp.cleanup()
    if tuned is not None:
        report = type(report)(
            report.dataset, report.queries, report.documents, report.metrics, tuned
        )
    table = Table(title=f"{data.name}: {report.queries} queries, {report.documents} documents")
    table.add_column("mode")
    names = list(next(iter(report.metrics.values())).keys())
    for name in names:
        table.add_column(name, justify="right")
    for mode_name, values in report.metrics.items():
        table.add_row(mode_name, *(f"{values[n]:.4f}" for n in names))
    console.print(table)
    if out is not None:
        out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(f"report written to {out}")


def main() -> None:
    """Entry point of the ``m3rag`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
