"""The m3rag command line with the tiny checkpoints: index, search, info, errors, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m3rag.cli import app

pytestmark = pytest.mark.model

runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "paris.md").write_text(
        "# Paris\n\nParis is the capital and most populous city of France. " * 20
    )
    (folder / "sub" / "beijing.txt").write_text(
        "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 20
    )
    (folder / "page.html").write_text(
        "<html><head><title>Tokyo</title><script>var x = 1;</script></head>"
        "<body><p>Tokyo is the capital of Japan.</p><p>東京は日本の首都です。</p></body></html>"
    )
    (folder / "records.jsonl").write_text(
        json.dumps(
            {
                "id": "cairo",
                "text": "Cairo is the capital of Egypt. القاهرة هي عاصمة مصر.",
                "metadata": {"lang": "ar"},
            }
        )
        + "\n{not json\n"
    )
    (folder / "broken.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    (folder / "ignored.csv").write_text("a,b\n")
    return folder


def _index(corpus: Path, index: Path, model: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app,
        [
            "index",
            str(corpus),
            "--index",
            str(index),
            "--model",
            str(model),
            "--chunk-tokens",
            "64",
            "--overlap",
            "8",
            *extra,
        ],
    )


def test_index_search_info(corpus: Path, tmp_path: Path, tiny_m3_path: Path) -> None:
    index = tmp_path / "idx"
    result = _index(corpus, index, tiny_m3_path)
    assert result.exit_code == 0, result.output
    assert "indexed 4 documents" in flat(result.output)
    assert "broken.txt" in flat(result.output) and "unreadable" in flat(result.output)
    assert "records.jsonl:2" in flat(
        result.output
    )  # the bad line is reported, the good one indexed

    out = runner.invoke(
        app, ["search", "capital of France", "--index", str(index), "--k", "3", "--json"]
    )
    assert out.exit_code == 0, out.output
    hits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(hits) == 3
    assert {"dense", "lexical", "colbert", "bm25"} <= set(hits[0]["paths"])
    assert len({h["id"] for h in hits}) == 3  # chunks rolled up to documents
    assert all(h["chunk_id"].startswith(h["id"] + "#") for h in hits)

    for mode in ("dense", "lexical", "bm25", "hybrid"):
        table = runner.invoke(
            app, ["search", "北京 首都", "--index", str(index), "--mode", mode, "--k", "2"]
        )
        assert table.exit_code == 0, table.output
        assert "document" in table.output
    bm25 = runner.invoke(
        app, ["search", "北京 首都", "--index", str(index), "--mode", "bm25", "--k", "1", "--json"]
    )
    assert json.loads(bm25.stdout.splitlines()[0])["id"] == "sub/beijing.txt"

    info = runner.invoke(app, ["info", "--index", str(index)])
    assert info.exit_code == 0, info.output
    assert "documents" in info.output and "4" in info.output and "format version" in info.output

    again = _index(corpus, index, tiny_m3_path)  # resumable: nothing new
    assert again.exit_code == 0
    assert "indexed 0 documents" in flat(again.output)
    assert "skipped 4 already indexed" in flat(again.output)

    (corpus / "paris.md").write_text("Paris changed its text entirely.")
    changed = _index(corpus, index, tiny_m3_path)
    assert "indexed 1 documents" in flat(changed.output) and "replaced 1" in flat(changed.output)
    out = runner.invoke(
        app,
        ["search", "Paris changed", "--index", str(index), "--mode", "bm25", "--k", "1", "--json"],
    )
    assert "changed its text" in json.loads(out.stdout.splitlines()[0])["text"]


def test_errors_have_messages_and_exit_codes(
    corpus: Path, tmp_path: Path, tiny_m3_path: Path
) -> None:
    missing = runner.invoke(app, ["search", "q", "--index", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "no index at" in flat(missing.output)
    assert runner.invoke(app, ["info", "--index", str(tmp_path / "nope")]).exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(
        app, ["index", str(empty), "--index", str(tmp_path / "i2"), "--model", str(tiny_m3_path)]
    )
    assert none.exit_code == 1
    assert "no .txt" in flat(none.output)
    bad_model = runner.invoke(
        app,
        [
            "index",
            str(corpus),
            "--index",
            str(tmp_path / "i3"),
            "--model",
            str(tmp_path / "no" / "such" / "model"),
        ],
    )
    assert bad_model.exit_code == 3
    assert "local" in flat(bad_model.output)
    index = tmp_path / "idx"
    assert _index(corpus, index, tiny_m3_path).exit_code == 0
    assert (
        runner.invoke(app, ["search", "q", "--index", str(index), "--mode", "splade"]).exit_code
        == 2
    )
    assert runner.invoke(app, ["search", "q", "--index", str(index), "--k", "0"]).exit_code == 2
    assert runner.invoke(app, ["search", "   ", "--index", str(index)]).exit_code == 2
    help_text = runner.invoke(app, ["index", "--help"])
    assert help_text.exit_code == 0 and "--chunk-tokens" in help_text.output


def test_interrupted_index_resumes(tmp_path: Path, tiny_m3_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        (folder / f"doc{i:03d}.txt").write_text(
            f"Document number {i}. " + "Some filler text about cities. " * 30
        )
    index = tmp_path / "idx"
    cmd = [
        sys.executable,
        "-m",
        "m3rag",
        "index",
        str(folder),
        "--index",
        str(index),
        "--model",
        str(tiny_m3_path),
        "--chunk-tokens",
        "64",
        "--overlap",
        "8",
        "--commit-every",
        "8",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some commits landed
        manifest = index / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["generation"] >= 2:
            break
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    info = runner.invoke(app, ["info", "--index", str(index)])
    assert info.exit_code == 0
    resumed = runner.invoke(app, [*cmd[3:]])
    assert resumed.exit_code == 0, resumed.output
    text = flat(resumed.output)
    skipped = int(text.split("skipped ")[1].split(" ")[0])
    indexed = int(text.split("indexed ")[1].split(" ")[0])
    assert skipped >= 16 and skipped + indexed == 400
    from m3rag import Collection

    col = Collection.open(index, read_only=True)
    assert len(col.metadata_values("parent_id")) == 400
    col.close()


def test_the_bundled_sample_indexes_and_searches(tmp_path: Path, tiny_m3_path: Path) -> None:
    sample = Path(__file__).resolve().parents[2] / "examples" / "data"
    index = tmp_path / "demo"
    result = _index(sample, index, tiny_m3_path, "--chunk-tokens", "128")
    assert result.exit_code == 0, result.output
    assert "indexed 3 documents" in flat(result.output)
    chunks = int(flat(result.output).split("documents (")[1].split(" ")[0])
    assert chunks > 6  # long enough to be chunked
    out = runner.invoke(app, ["search", "What is hybrid search?", "--index", str(index), "--json"])
    hits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {h["id"] for h in hits} == {"hybrid-search.md", "混合检索.md", "recherche-hybride.md"}


def test_eval_modes_report_and_tune(
    tmp_path: Path, tiny_m3_path: Path, tiny_reranker_path: Path, tiny_beir: Path
) -> None:
    data = tiny_beir
    bm25 = runner.invoke(
        app, ["eval", str(data), "--modes", "bm25", "--k", "1,3", "--out", str(tmp_path / "r.json")]
    )
    assert bm25.exit_code == 0, bm25.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["queries"] == 4 and report["documents"] == 5
    assert set(report["metrics"]["bm25"]) == {
        "ndcg@1",
        "recall@1",
        "mrr@1",
        "ndcg@3",
        "recall@3",
        "mrr@3",
    }
    assert report["metrics"]["bm25"]["ndcg@3"] > 0.5
    full = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--model",
            str(tiny_m3_path),
            "--modes",
            "dense,lexical,bm25,colbert,hybrid,hybrid+rerank",
            "--reranker",
            str(tiny_reranker_path),
            "--k",
            "3",
            "--index",
            str(tmp_path / "idx"),
            "--out",
            str(tmp_path / "f.json"),
        ],
    )
    assert full.exit_code == 0, full.output
    metrics = json.loads((tmp_path / "f.json").read_text())["metrics"]
    assert set(metrics) == {"dense", "lexical", "bm25", "colbert", "hybrid", "hybrid+rerank"}
    assert all(0.0 <= m["ndcg@3"] <= 1.0 for m in metrics.values())
    again = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--model",
            str(tiny_m3_path),
            "--modes",
            "hybrid",
            "--index",
            str(tmp_path / "idx"),
        ],
    )
    assert "0 newly indexed" in flat(again.output)  # the kept index is reused
    tuned = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--model",
            str(tiny_m3_path),
            "--modes",
            "hybrid",
            "--tune",
            "--out",
            str(tmp_path / "t.json"),
        ],
    )
    assert tuned.exit_code == 0, tuned.output
    assert "best weights on dev" in flat(tuned.output)
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["queries"] == 2 and t["tuned_weights"]


def test_eval_errors(tmp_path: Path, minilm_path: Path, tiny_beir: Path) -> None:
    assert runner.invoke(app, ["eval", str(tmp_path / "missing"), "--modes", "bm25"]).exit_code == 2
    data = tiny_beir
    assert runner.invoke(app, ["eval", str(data), "--modes", "splade"]).exit_code == 2
    assert runner.invoke(app, ["eval", str(data), "--modes", "bm25", "--k", "ten"]).exit_code == 2
    lexical = runner.invoke(
        app, ["eval", str(data), "--modes", "lexical", "--model", str(minilm_path)]
    )
    assert lexical.exit_code == 2
    assert "lexical" in flat(lexical.output)


def test_ask_prints_cited_evidence_and_calls_an_llm(
    corpus: Path,
    tmp_path: Path,
    tiny_m3_path: Path,
    tiny_reranker_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import http.server
    import threading

    index = tmp_path / "idx"
    assert _index(corpus, index, tiny_m3_path).exit_code == 0
    plain = runner.invoke(
        app,
        [
            "ask",
            "What is the capital of France?",
            "--index",
            str(index),
            "--reranker",
            str(tiny_reranker_path),
            "--k",
            "4",
        ],
    )
    assert plain.exit_code == 0, plain.output
    assert "[1]" in plain.output and "[4]" in plain.output
    no_rerank = runner.invoke(
        app, ["ask", "capital", "--index", str(index), "--no-rerank", "--k", "2"]
    )
    assert no_rerank.exit_code == 0 and "[2]" in no_rerank.output

    seen: dict[str, object] = {}

    class Fake(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = body
            reply = json.dumps(
                {
                    "choices": [
                        {"message": {"role": "assistant", "content": "Paris is the capital [1]."}}
                    ]
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        url = f"http://127.0.0.1:{server.server_port}/v1"
        out = runner.invoke(
            app,
            [
                "ask",
                "What is the capital of France?",
                "--index",
                str(index),
                "--no-rerank",
                "--k",
                "3",
                "--llm",
                url,
                "--llm-model",
                "fake-1",
            ],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert out.exit_code == 0, out.output
    assert "Paris is the capital [1]." in flat(out.output)
    assert "sk-test-secret" not in out.output  # the key is sent, never printed
    assert seen["path"] == "/v1/chat/completions"
    assert seen["auth"] == "Bearer sk-test-secret"
    body = seen["body"]
    assert isinstance(body, dict) and body["model"] == "fake-1"
    assert (
        "[1]" in body["messages"][1]["content"]
        and "What is the capital of France?" in body["messages"][1]["content"]
    )
    dead = runner.invoke(
        app,
        ["ask", "capital", "--index", str(index), "--no-rerank", "--llm", "http://127.0.0.1:9/v1"],
    )
    assert dead.exit_code == 3


def _pdf(path: Path, text: str) -> None:
    """A minimal one-page PDF with a text line, correct cross-reference table included."""
    content = f"BT /F1 14 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    path.write_bytes(bytes(out))


def test_pdf_files_are_indexed(tmp_path: Path, tiny_m3_path: Path) -> None:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    _pdf(folder / "report.pdf", "The annual report mentions Lisbon as the venue.")
    (folder / "damaged.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    index = tmp_path / "idx"
    result = _index(folder, index, tiny_m3_path)
    assert result.exit_code == 0, result.output
    assert "indexed 1 documents" in flat(result.output)
    assert "damaged.pdf" in flat(result.output)
    out = runner.invoke(
        app, ["search", "Lisbon venue", "--index", str(index), "--mode", "bm25", "--json"]
    )
    hit = json.loads(out.stdout.splitlines()[0])
    assert hit["id"] == "report.pdf" and "Lisbon" in hit["text"]


def test_lang_in_index_search_info_and_eval(
    corpus: Path, tmp_path: Path, tiny_m3_path: Path, tiny_beir: Path
) -> None:
    index = tmp_path / "idx"
    assert _index(corpus, index, tiny_m3_path, "--lang", "english").exit_code == 2
    assert not (index / "manifest.json").exists()  # refused before anything was built
    result = _index(corpus, index, tiny_m3_path, "--lang", "en")
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", "--index", str(index)])
    assert info.exit_code == 0, info.output
    # every document without 'lang' metadata is English; the Cairo record says Arabic
    assert "lang en" in flat(info.output) and "english Snowball stemmer" in flat(info.output)
    assert "ar: " in info.output
    refused = _index(corpus, index, tiny_m3_path, "--lang", "zh")
    assert refused.exit_code == 2 and "analyses documents with lang 'en'" in flat(refused.output)
    cairo = ["search", "القاهرة", "--index", str(index), "--mode", "bm25", "--k", "1", "--json"]
    hits = runner.invoke(app, cairo).stdout.splitlines()
    assert json.loads(hits[0])["id"] == "cairo"
    hits = runner.invoke(app, [*cairo, "--lang", "ar"]).stdout.splitlines()
    assert json.loads(hits[0])["id"] == "cairo"
    # restricted to the English analysis, only documents analysed as English can match
    assert runner.invoke(app, [*cairo, "--lang", "en"]).stdout.strip() == ""
    assert runner.invoke(app, [*cairo, "--lang", "xx1"]).exit_code == 2

    data = tiny_beir
    for lang in ("auto", "en"):
        out = runner.invoke(app, ["eval", str(data), "--modes", "bm25", "--lang", lang])
        assert out.exit_code == 0, out.output
    assert runner.invoke(app, ["eval", str(data), "--modes", "bm25", "--lang", "??"]).exit_code == 2
