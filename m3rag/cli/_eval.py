"""``m3rag eval``: retrieval quality of each mode on a BEIR folder, with progress per stage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from m3rag.cli._app import (
    DEFAULT_MODEL,
    DEFAULT_RERANKER,
    EXIT_USAGE,
    DeviceOption,
    DtypeOption,
    IndexLangOption,
    StoreOption,
    StoreURI,
    Target,
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
    load_reranker,
    note,
    open_collection,
    out,
    peek_manifest,
    resolve_target,
)


class _StageProgress:
    """One progress bar per stage (indexing, encoding queries, searching per mode), on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@app.command("eval")
@handled
def eval_(
    dataset: Annotated[
        Path, typer.Argument(help="A BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.")
    ],
    modes: Annotated[
        str,
        typer.Option(help="Comma-separated: dense, lexical, bm25, colbert, hybrid, hybrid+rerank."),
    ] = "dense,lexical,bm25,colbert,hybrid",
    k: Annotated[
        str, typer.Option("--k", "-k", help="Comma-separated metric cut-offs.")
    ] = "10,100",
    model: Annotated[
        str | None,
        typer.Option("--model", help=f"Hub id or local folder (default: {DEFAULT_MODEL})."),
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="Keep the index here (reused on the next run); default: a temporary folder.",
        ),
    ] = None,
    reranker: Annotated[str, typer.Option(help="Reranker for hybrid+rerank.")] = DEFAULT_RERANKER,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON report here.")
    ] = None,
    tune: Annotated[
        bool, typer.Option("--tune", help="Grid-search hybrid fusion weights on a dev split first.")
    ] = False,
    target_precision: Annotated[
        float | None,
        typer.Option(
            help="Find, on a dev split, the min_score cutoff whose hits reach this precision "
            "(0-1), per mode, and report what it keeps on the test queries."
        ),
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    lang: IndexLangOption = None,
    store: StoreOption = None,
) -> None:
    """Evaluate retrieval modes on a BEIR dataset: nDCG@k, Recall@k, MRR@k (pytrec_eval).

    With --tune, fusion weights are searched on qrels/dev.tsv when the dataset has one, else on
    the first half of the test queries, and the report is computed on the other half. The
    modes are checked against the model before anything is indexed; BM25 alone loads no model.
    """
    from m3rag.eval import MODES, check_modes, load_beir
    from m3rag.retriever import paths_of_heads

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in mode_list if m not in MODES]
    if unknown or not mode_list:
        raise fail(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}", EXIT_USAGE)
    try:
        k_values = sorted({int(x) for x in k.split(",") if x.strip()})
    except ValueError as exc:
        raise fail(f"--k must be comma-separated integers, got {k!r}", EXIT_USAGE) from exc
    if not k_values or min(k_values) <= 0:
        raise fail(f"--k must be positive integers, got {k!r}", EXIT_USAGE)
    if target_precision is not None and not 0 < target_precision <= 1:
        raise fail(f"--target-precision must be in (0, 1], got {target_precision}", EXIT_USAGE)
    check_device(device)
    check_dtype(dtype)
    check_lang(lang)
    target = resolve_target(index, store, required=False)
    if isinstance(target, StoreURI) and lang == "auto":
        msg = "--lang auto (per-document detection) is not available on Milvus; give a language"
        raise fail(msg, EXIT_USAGE)
    if target is not None:
        check_index_path(target, must_exist=False)
        check_index_lang(target, lang)
    if out_file is not None and out_file.is_dir():
        raise fail(f"--out {out_file} is a folder; give a file name", EXIT_USAGE)
    try:
        data = load_beir(dataset)
        # the dev split is checked before anything is indexed
        queries, dev = (
            _dev_split(data, dataset)
            if tune or target_precision is not None
            else (data.queries, {})
        )
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    if data.empty:
        shown = ", ".join(data.empty[:3]) + (", ..." if len(data.empty) > 3 else "")
        docs = "document" if len(data.empty) == 1 else "documents"
        note(f"skipped {len(data.empty)} corpus {docs} with neither title nor text ({shown})")
    needs_model = any(m != "bm25" for m in mode_list) or tune
    encoder = load_encoder(model or DEFAULT_MODEL, device, dtype) if needs_model else None
    # the modes must fit the model (and a kept index) before anything is indexed
    heads = set(encoder.heads) if encoder is not None else set()
    kept = peek_manifest(target) if target is not None else None
    if kept is not None:
        heads &= set(kept.get("heads", ()))
    available = paths_of_heads(heads)
    check_modes(mode_list, available, reranker="hybrid+rerank" in mode_list)
    rr = load_reranker(reranker, device) if "hybrid+rerank" in mode_list else None

    tmp = None
    folder = target
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="m3rag-eval-")
        folder = Path(tmp.name) / "index"
    try:
        report, tuned = _run(
            data,
            folder,
            encoder,
            mode_list,
            k_values,
            rr,
            tune,
            queries,
            dev,
            lang or ("en" if isinstance(folder, StoreURI) else "auto"),
            target_precision,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    if tuned is not None:
        report = type(report)(
            report.dataset,
            report.queries,
            report.documents,
            report.metrics,
            tuned,
            report.settings,
        )
    table = Table(
        title=Text(f"{data.name}: {report.queries} queries, {report.documents} documents")
    )
    table.add_column("mode")
    names = list(next(iter(report.metrics.values())).keys())
    for name in names:
        table.add_column(name, justify="right")
    for mode_name, values in report.metrics.items():
        table.add_row(Text(mode_name), *(f"{values[n]:.4f}" for n in names))
    out().print(table)
    for mode_name, found in report.settings.get("thresholds", {}).items():
        if found["threshold"] is None:
            line = f"{mode_name}: no cutoff reaches precision {found['target_precision']} on dev"
        else:
            test = found["test"]
            line = (
                f"{mode_name}: min_score {found['threshold']:.4f} reaches precision "
                f"{found['dev']['precision']:.3f} on dev; on test it keeps {test['hits']} hits, "
                f"precision {test['precision']:.3f}, recall {test['recall']:.3f}"
            )
        out().print(Text(line))
    if out_file is not None:
        out_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        note(f"report written to {out_file}")


def _dev_split(data: Any, dataset: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The evaluated queries and the dev queries of ``--tune`` and ``--target-precision``.

    The dev queries are those of ``qrels/dev.tsv`` (their judgements join ``data.qrels``), else
    the first half of the test queries, and the report is on the other half.

    Raises:
        ValueError: ``qrels/dev.tsv`` is malformed or judges no query, or there is no
            ``qrels/dev.tsv`` and fewer than 2 test queries to split.
    """
    from m3rag.eval import load_beir

    queries: dict[str, str] = data.queries
    if (dataset / "qrels" / "dev.tsv").exists():
        dev_data = load_beir(dataset, split="dev")
        data.qrels.update(dev_data.qrels)
        return queries, dev_data.queries
    if len(queries) < 2:
        msg = (
            f"--tune and --target-precision need a dev split: add {dataset}/qrels/dev.tsv, or "
            f"judge at least 2 test queries (half become the dev split; there is "
            f"{len(queries)})"
        )
        raise ValueError(msg)
    ids = list(queries)
    dev = {q: queries[q] for q in ids[: len(ids) // 2]}
    queries = {q: queries[q] for q in ids[len(ids) // 2 :]}
    note(
        f"no qrels/dev.tsv: {len(dev)} test queries are the dev split, the report is on the "
        f"other {len(queries)}"
    )
    return queries, dev


def _run(
    data: Any,
    folder: Target,
    encoder: Any,
    mode_list: list[str],
    k_values: list[int],
    rr: Any,
    tune: bool,
    queries: dict[str, str],
    dev: dict[str, str],
    lang: str,
    target_precision: float | None = None,
) -> tuple[Any, dict[str, float] | None]:
    from m3rag.eval import evaluate, index_corpus, tune_weights

    col = open_collection(
        folder,
        encoder,
        read_only=False,
        create=True,
        heads=None if encoder is not None else (),
        lang=lang,
    )
    try:
        with Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err(),
        ) as progress:
            stages = _StageProgress(progress)
            added = index_corpus(data, col, on_progress=stages)
            progress.console.print(
                Text(
                    f"{data.name}: {len(data.corpus)} documents ({added} newly indexed), "
                    f"{len(data.queries)} queries"
                )
            )
            tuned = None
            if tune:
                tuning = progress.add_task("tuning fusion weights", total=None)
                tuned, score = tune_weights(data, col, encoder=encoder, dev_queries=dev)
                progress.update(tuning, total=1, completed=1)
                progress.console.print(Text(f"best weights on dev: {tuned} (nDCG@10 {score:.4f})"))
            report = evaluate(
                data,
                col,
                encoder=encoder,
                modes=mode_list,
                k_values=k_values,
                reranker=rr,
                weights=tuned,
                queries=queries,
                on_progress=stages,
                target_precision=target_precision,
                dev_queries=dev,
            )
    finally:
        col.close()
    return report, tuned
