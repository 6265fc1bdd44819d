"""What a new user meets on the command line: output, progress, options, errors, defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import m3rag
from m3rag.cli import app

pytestmark = pytest.mark.model

runner = CliRunner()
TEXTS = {
    "harbour.txt": "The harbour of Lisbon misses no ship. Ships dock in the harbour at dawn. " * 4,
    "beijing.txt": "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 4,
    "search.md": "# Hybrid search\n\nHybrid search fuses dense, lexical and BM25 scores. " * 4,
}


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_m3_path: Path) -> Path:
    root = tmp_path_factory.mktemp("first-contact")
    docs = root / "docs"
    docs.mkdir()
    for name, text in TEXTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    index = root / "idx"
    args = ["index", str(docs), "--index", str(index), "--model", str(tiny_m3_path)]
    result = runner.invoke(app, [*args, "--chunk-tokens", "32"])
    assert result.exit_code == 0, result.output
    return index


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any encoder fails: what runs under it needs no model."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("an encoder was loaded")

    monkeypatch.setattr("m3rag.encoder.M3Encoder.__init__", refuse)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"m3rag {m3rag.__version__}"


def test_markup_in_a_query_is_text(built: Path) -> None:
    result = runner.invoke(app, ["search", "[bold] harbour [/]", "--index", str(built)])
    assert result.exit_code == 0, result.output
    assert "[bold] harbour [/]" in result.stdout
    assert "Traceback" not in result.output


def test_piped_tables_are_not_wrapped_at_80_columns(built: Path) -> None:
    result = runner.invoke(app, ["search", "harbour", "--index", str(built), "-k", "1"])
    assert result.exit_code == 0, result.output
    # wider than 80 columns, and no cell wrapped: title, 3 header lines, 2 row lines, bottom
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) > 80
    assert len(lines) == 7, result.stdout
    assert "indexing" not in result.stdout and "loading" not in result.stdout


def test_bm25_needs_no_model(built: Path, tmp_path: Path, no_model: None) -> None:
    search = runner.invoke(app, ["search", "harbour", "--index", str(built), "--mode", "bm25"])
    assert search.exit_code == 0, search.output
    assert "harbour.txt" in search.stdout
    ask = runner.invoke(
        app, ["ask", "harbour?", "--index", str(built), "--mode", "bm25", "--no-rerank"]
    )
    assert ask.exit_code == 0, ask.output
    assert "[1]" in ask.stdout
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    corpus = [{"_id": n, "title": "", "text": t} for n, t in TEXTS.items()]
    (data / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "harbour ships"}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tharbour.txt\t1\n")
    report = tmp_path / "report.json"
    ev = runner.invoke(
        app, ["eval", str(data), "--modes", "bm25", "--k", "3", "--out", str(report)]
    )
    assert ev.exit_code == 0, ev.output
    settings = json.loads(report.read_text())["settings"]
    assert settings["model"] is None
    assert settings["modes"]["bm25"]["fusion"]["weights"] == {"bm25": 1.0}
    assert settings["versions"]["m3rag"] == m3rag.__version__
    assert settings["versions"]["tantivy"]
    assert "searching (bm25)" in ev.stderr


def test_k_short_form(built: Path) -> None:
    result = runner.invoke(
        app, ["search", "harbour", "--index", str(built), "-k", "1", "--json", "--mode", "bm25"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1


def test_progress_counts_documents_of_a_jsonl_file(tmp_path: Path, tiny_m3_path: Path) -> None:
    lines = [
        json.dumps({"id": f"r{i}", "text": f"Record {i} is about topic {i % 7}."})
        for i in range(150)
    ]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app,
        [
            "index",
            str(tmp_path / "records.jsonl"),
            "--index",
            str(tmp_path / "idx"),
            "--model",
            str(tiny_m3_path),
            "--chunk-tokens",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "150/150 documents" in flat(result.stderr)
    assert "150 chunks" in flat(result.stderr)
    assert "docs/s" in result.stderr
    assert "indexed 150 documents (150 chunks)" in flat(result.stdout)


def test_the_cli_indexes_through_index_files(
    tmp_path: Path, tiny_m3_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m3rag.ingest

    calls = []
    real = m3rag.ingest.index_files

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(m3rag.ingest, "index_files", spy)
    (tmp_path / "a.txt").write_text("Alpha beta gamma. " * 30)
    args = ["index", str(tmp_path / "a.txt"), "--index", str(tmp_path / "idx")]
    # any valid --chunk-tokens works without --overlap: the default follows it
    result = runner.invoke(app, [*args, "--model", str(tiny_m3_path), "--chunk-tokens", "16"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["chunk_tokens"] == 16 and calls[0]["overlap"] == 2


def test_options_are_checked_before_the_model_loads(tmp_path: Path, no_model: None) -> None:
    (tmp_path / "a.txt").write_text("text")
    base = ["index", str(tmp_path / "a.txt"), "--index", str(tmp_path / "idx")]
    for extra in (
        ["--chunk-tokens", "64", "--overlap", "40"],
        ["--chunk-tokens", "4"],
        ["--batch-size", "0"],
        ["--commit-every", "-1"],
        ["--device", "gpu"],
        ["--dtype", "float8"],
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert result.output.startswith("error:") and "Traceback" not in result.output
    assert not (tmp_path / "idx").exists()


def test_errors_are_one_line_with_their_exit_codes(built: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args in (
        ["search", "q", "--index", str(a_file)],
        ["index", str(a_file), "--index", str(a_file)],
        ["info", "--index", str(a_file)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "is a file" in result.output and "Traceback" not in result.output
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text('{"format_version": 1')
    result = runner.invoke(app, ["info", "--index", str(damaged)])
    assert result.exit_code == 4, result.output
    assert len(result.output.strip().splitlines()) <= 2 and "Traceback" not in result.output
    debug = runner.invoke(app, ["--debug", "info", "--index", str(damaged)])
    assert debug.exit_code == 4 and "Traceback" in debug.output


def test_bad_jsonl_records_are_reported_and_skipped(tmp_path: Path, tiny_m3_path: Path) -> None:
    rows = [
        '{"id": "good-1", "text": "A good record about harbours."}',
        '{"id": "nan", "text": "Metadata with NaN.", "metadata": {"x": NaN}}',
        '{"id": "good-1", "text": "The same id again."}',
        '{"id": "surrogate", "text": "A lone \\ud800 surrogate."}',
        '{"id": "good-2", "text": "Another good record."}',
        '{"id": {"a": 1}, "text": "An id that is an object."}',
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(rows) + "\n")
    result = runner.invoke(
        app,
        [
            "index",
            str(tmp_path / "r.jsonl"),
            "--index",
            str(tmp_path / "idx"),
            "--model",
            str(tiny_m3_path),
            "--chunk-tokens",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "indexed 2 documents" in out and "4 unreadable" in out
    for line in (2, 3, 4, 6):
        assert f"r.jsonl:{line}" in out or "repeats" in out
    assert "repeats" in out and "surrogate" in out and "NaN" in out


def test_cli_and_library_share_defaults(built: Path, tiny_m3_path: Path) -> None:
    from m3rag import Collection, HybridRetriever, M3Encoder
    from m3rag.retriever import default_fusion

    cli = runner.invoke(app, ["search", "harbour ships", "--index", str(built), "--json"])
    assert cli.exit_code == 0, cli.output
    hits = [json.loads(line) for line in cli.stdout.splitlines()]
    with Collection.open(
        built, encoder=M3Encoder(tiny_m3_path, device="cpu"), read_only=True
    ) as col:
        retriever = HybridRetriever(col)
        assert retriever.rollup == "max"  # the collection holds chunks
        assert retriever.fusion == default_fusion(retriever.available_paths)
        lib = retriever.retrieve("harbour ships", k=10)
    assert [h["id"] for h in hits] == lib.ids
    assert [h["score"] for h in hits] == pytest.approx(lib.scores)
    assert len(set(lib.ids)) == len(lib.ids)  # documents, not several chunks of one file


def test_eval_finds_a_min_score_for_a_target_precision(tmp_path: Path, no_model: None) -> None:
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    corpus = [{"_id": n, "title": "", "text": t} for n, t in TEXTS.items()]
    (data / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    queries = {
        "q1": "harbour ships",
        "q2": "Hybrid search scores",
        "q3": "ships dock dawn",
        "q4": "dense lexical fuses",
    }
    (data / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": t}) for q, t in queries.items()) + "\n"
    )
    head = "query-id\tcorpus-id\tscore\n"
    (data / "qrels" / "test.tsv").write_text(head + "q1\tharbour.txt\t1\nq2\tsearch.md\t1\n")
    (data / "qrels" / "dev.tsv").write_text(head + "q3\tharbour.txt\t1\nq4\tsearch.md\t1\n")
    report = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--modes",
            "bm25",
            "--k",
            "3",
            "--target-precision",
            "0.9",
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    found = json.loads(report.read_text())["settings"]["thresholds"]["bm25"]
    assert found["target_precision"] == 0.9 and found["threshold"] is not None
    assert found["dev"]["precision"] >= 0.9
    assert "min_score" in result.stdout
    bad = runner.invoke(app, ["eval", str(data), "--modes", "bm25", "--target-precision", "2"])
    assert bad.exit_code == 2
