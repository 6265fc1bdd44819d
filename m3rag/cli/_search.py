"""``m3rag search``, ``ask`` and ``info``: read an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from m3rag.cli._app import (
    CLI_RERANK_MAX_LENGTH,
    DEFAULT_MODEL,
    DEFAULT_RERANKER,
    EXIT_MODEL,
    EXIT_NOTHING,
    EXIT_USAGE,
    DeviceOption,
    StoreOption,
    Target,
    app,
    check_device,
    check_index_path,
    check_lang,
    fail,
    handled,
    load_chunk_reranker,
    load_encoder,
    open_collection,
    out,
    resolve_target,
    stored_model,
)
from m3rag.cli._output import highlight, results_table

MODES = ("hybrid", "dense", "lexical", "bm25")

IndexOption = Annotated[
    Path | None, typer.Option("--index", help="The index folder (or give --store).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", help="Hub id or local folder of the encoder (default: the index's model)."
    ),
]
ModeOption = Annotated[
    str,
    typer.Option(help="hybrid (every path, fused), dense, lexical or bm25 (no model needed)."),
]
RerankerOption = Annotated[str, typer.Option(help="Reranker hub id or folder.")]
RerankMaxLengthOption = Annotated[
    int | None,
    typer.Option(
        help="Tokens of a (query, passage) pair the reranker reads, specials included (default: "
        f"{CLI_RERANK_MAX_LENGTH}, which fits a full 512-token chunk and its query, or the "
        "model's limit where lower).",
        min=6,
    ),
]
LangOption = Annotated[
    str | None,
    typer.Option(
        "--lang",
        help="Analyse the BM25 query as this language only (an ISO 639-1 code); default: "
        "with every analysis the index holds.",
    ),
]
MinScoreOption = Annotated[
    float | None,
    typer.Option(
        help="Drop hits below this relevance: the reranker's probability (0-1) with --rerank, "
        "else the fused score."
    ),
]


def _check_query(text: str, what: str, k: int, mode: str) -> None:
    if mode not in MODES:
        raise fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}", EXIT_USAGE)
    if k <= 0:
        raise fail(f"--k must be positive, got {k}", EXIT_USAGE)
    if not text.strip():
        raise fail(f"the {what} is empty", EXIT_USAGE)


def _open_for(index: Target, mode: str, model: str | None, device: str | None) -> tuple[Any, Any]:
    """The encoder (``None`` for bm25, which needs no model) and the collection, read-only."""
    encoder = None
    if mode != "bm25":
        encoder = load_encoder(model or stored_model(index) or DEFAULT_MODEL, device, None)
    return encoder, open_collection(index, encoder, read_only=True)


def build_retriever(
    col: Any,
    encoder: Any,
    mode: str,
    reranker: Any,
    *,
    rollup: str | None = "auto",
    lang: str | None = None,
) -> Any:
    """The retriever for a mode: ``hybrid`` is the library's defaults, a path mode that path."""
    from m3rag.eval import mode_config
    from m3rag.fusion import FusionConfig
    from m3rag.retriever import HybridRetriever, available_paths

    if mode == "hybrid":
        return HybridRetriever(
            col,
            encoder=encoder,
            reranker=reranker,
            rollup=rollup,  # type: ignore[arg-type]
            lang=lang,
        )
    recall, weights = mode_config(mode, available_paths(col, encoder))
    return HybridRetriever(
        col,
        encoder=encoder,
        reranker=reranker,
        fusion=FusionConfig(weights=weights),
        recall=recall,
        rollup=rollup,  # type: ignore[arg-type]
        lang=lang,
    )


@app.command()
@handled
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords.")],
    index: IndexOption = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many results.")] = 10,
    mode: ModeOption = "hybrid",
    rerank: Annotated[
        bool, typer.Option("--rerank/--no-rerank", help="Rerank with a cross-encoder.")
    ] = False,
    reranker: RerankerOption = DEFAULT_RERANKER,
    rerank_max_length: RerankMaxLengthOption = None,
    model: ModelOption = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="JSON lines instead of a table.")
    ] = False,
    device: DeviceOption = None,
    min_score: MinScoreOption = None,
    lang: LangOption = None,
    store: StoreOption = None,
) -> None:
    """Search an index: every path recalls, every candidate is scored on every path, fused."""
    _check_query(query, "query", k, mode)
    check_lang(lang, auto=False)
    check_device(device)
    target = _target(index, store)
    encoder, col = _open_for(target, mode, model, device)
    try:
        rr = load_chunk_reranker(reranker, device, rerank_max_length) if rerank else None
        results = build_retriever(col, encoder, mode, rr, lang=lang).retrieve(
            query, k=k, min_score=min_score
        )
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
                "citation": hit.citation,
                "start": hit.start,
                "end": hit.end,
                "spans": [list(span) for span in hit.spans],
                "paths": {p: {"raw": s.raw, "rank": s.rank} for p, s in hit.paths.items()},
                "text": hit.text,
                "metadata": dict(hit.metadata),
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    out().print(results_table(query, results))


@app.command()
@handled
def info(index: IndexOption = None, store: StoreOption = None) -> None:
    """Describe an index: documents, chunks, model fingerprint, sizes, format version."""
    target = _target(index, store)
    col = open_collection(target, None, read_only=True)
    try:
        manifest = col.manifest
        encoder = manifest.get("encoder") or {}
        chunks = col.count()
        parents = col.metadata_values("parent_id")
        size = (
            f"{sum(f.stat().st_size for f in target.rglob('*') if f.is_file()) / 1e6:.1f} MB"
            if isinstance(target, Path)
            else f"on the server ({target})"
        )
        table = Table(show_header=False)
        rows = [
            ("documents", str(len(parents) if parents else chunks)),
            ("chunks", str(chunks)),
            ("model", str(encoder.get("model"))),
            ("heads", ", ".join(manifest.get("heads", ()))),
            ("dense dim", str(manifest.get("dim"))),
            ("colbert dim", f"{manifest.get('colbert_dim')} ({manifest.get('colbert_dtype')})"),
            ("tokenizer sha256", str(encoder.get("tokenizer_sha256"))[:16] + "…"),
            ("generation", str(manifest.get("generation", col.generation))),
            ("format version", str(manifest.get("format_version", manifest.get("version")))),
            ("bm25 analysis", _describe_analysis(getattr(col, "analysis", None), manifest)),
            ("size on disk", size),
        ]
        for name, value in rows:
            table.add_row(Text(name), Text(value))
        out().print(table)
    finally:
        col.close()


@app.command()
@handled
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    index: IndexOption = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Evidence passages to cite.")] = 5,
    mode: ModeOption = "hybrid",
    rerank: Annotated[
        bool, typer.Option("--rerank/--no-rerank", help="Rerank with a cross-encoder.")
    ] = True,
    reranker: RerankerOption = DEFAULT_RERANKER,
    rerank_max_length: RerankMaxLengthOption = None,
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
    device: DeviceOption = None,
    min_score: MinScoreOption = None,
    lang: LangOption = None,
    store: StoreOption = None,
) -> None:
    """Answer a question from the index: the cited evidence, grouped by document.

    Without --llm this is the retrieval half of a QA bot: hybrid retrieval over chunks, reranked,
    printed as numbered passages grouped by their document. With --llm, an OpenAI-compatible chat
    endpoint writes a grounded answer citing those numbers.
    """
    _check_query(question, "question", k, mode)
    check_lang(lang, auto=False)
    check_device(device)
    if llm is not None and not llm.startswith(("http://", "https://")):
        raise fail(f"--llm must be an http(s) URL, got {llm!r}", EXIT_USAGE)
    target = _target(index, store)
    encoder, col = _open_for(target, mode, model, device)
    try:
        rr = load_chunk_reranker(reranker, device, rerank_max_length) if rerank else None
        retriever = build_retriever(col, encoder, mode, rr, rollup=None, lang=lang)
        results = retriever.retrieve(question, k=k, min_score=min_score)
    finally:
        col.close()
    console = out()
    if not len(results):
        console.print("no evidence found")
        raise typer.Exit(EXIT_NOTHING)
    groups: dict[str, list[tuple[int, Any]]] = {}
    for n, hit in enumerate(results, 1):
        groups.setdefault(hit.parent_id or hit.id, []).append((n, hit))
    for doc, cited in groups.items():
        meta = cited[0][1].metadata
        source = meta.get("title") or meta.get("source") or doc
        console.print(Text(str(doc), style="bold") + Text("  ") + Text(str(source), style="dim"))
        for n, hit in cited:
            console.print(
                Text(f"  [{n}] ", style="cyan")
                + Text(f"({hit.citation}) ", style="dim")
                + highlight(hit.text, question, 400)
            )
    if llm:
        answer = _llm_answer(llm, llm_model, question, list(results))
        console.print(Text("\nanswer", style="bold"))
        console.print(Text(answer))


def _target(index: Path | None, store: str | None) -> Target:
    """The existing index or store a read command opens."""
    target = resolve_target(index, store)
    assert target is not None  # noqa: S101 - required=True
    check_index_path(target, must_exist=True)
    return target


def _describe_analysis(analysis: dict[str, Any] | None, manifest: dict[str, Any]) -> str:
    """The ``info`` line of the BM25 analysis: default language and each family's pipeline."""
    from m3rag.analysis import detector_name, pipeline

    if analysis is None and "analyzer" in manifest:  # a store on a server: its own analyzer
        params = json.dumps(manifest["analyzer"], ensure_ascii=False)
        return f"the server's, lang {manifest.get('lang')}: {params}"
    if analysis is None:
        return (
            "legacy (made before the analysis record): Han/kana characters, words, English stop "
            "words and stemmer"
        )
    lang = analysis["lang"]
    default = f"detect ({detector_name()})" if lang == "auto" else lang
    lines = [f"version {analysis['version']}, lang {default}"]
    version = analysis["version"]
    lines += [f"{f}: {pipeline(f, version).describe()}" for f in analysis["families"]]
    return "\n".join(lines)


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
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)  # noqa: S310 - scheme checked by ask()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            body = json.loads(response.read().decode("utf-8"))
        return str(body["choices"][0]["message"]["content"]).strip()
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise fail(f"the LLM endpoint {url} failed: {exc}", EXIT_MODEL) from exc
