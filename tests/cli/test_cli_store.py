"""The commands on a store URI (``--store milvus://HOST:PORT/NAME``) against a milvus-lite server.

The same corpus indexed into a folder and into Milvus answers dense searches identically (both
score every candidate exactly from the stored vectors); info, resume and the usage errors work
on a URI as on a folder.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m3rag.cli import app

pytestmark = pytest.mark.model

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "paris.md").write_text("# Paris\n\nParis is the capital of France. " * 8)
    (folder / "berlin.txt").write_text("Berlin is the capital of Germany and a large city. " * 8)
    (folder / "rome.txt").write_text("Rome is the capital of Italy, on the Tiber. " * 8)
    return folder


@pytest.fixture
def store(milvus_lite_uri: str) -> str:
    """A fresh ``milvus://`` spec on the session's milvus-lite server."""
    host = milvus_lite_uri.removeprefix("http://")
    return f"milvus://{host}/cli_{uuid.uuid4().hex[:10]}"


def _index(corpus: Path, model: Path, *where: str):  # type: ignore[no-untyped-def]
    args = ["index", str(corpus), *where, "--model", str(model), "--chunk-tokens", "64"]
    return runner.invoke(app, [*args, "--lang", "en"])


def _dense_hits(model: Path, *where: str) -> list[tuple[str, float]]:
    result = runner.invoke(
        app,
        ["search", "capital of Italy", *where, "--model", str(model), "--mode", "dense", "--json"],
    )
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return [(h["id"], h["score"]) for h in hits]


def test_index_search_info_resume_on_a_store_uri(
    corpus: Path, tmp_path: Path, tiny_m3_path: Path, store: str
) -> None:
    first = _index(corpus, tiny_m3_path, "--store", store)
    assert first.exit_code == 0, first.output
    assert "indexed 3 documents" in flat(first.stdout) and store in first.stdout
    folder = tmp_path / "idx"
    assert _index(corpus, tiny_m3_path, "--index", str(folder)).exit_code == 0
    on_milvus = _dense_hits(tiny_m3_path, "--store", store)
    on_disk = _dense_hits(tiny_m3_path, "--index", str(folder))
    assert [i for i, _ in on_milvus] == [i for i, _ in on_disk] and on_milvus
    assert [s for _, s in on_milvus] == pytest.approx([s for _, s in on_disk], abs=1e-5)

    hybrid = runner.invoke(app, ["search", "capital of Italy", "--store", store, "-k", "2"])
    assert hybrid.exit_code == 0, hybrid.output  # the model comes from the store's record
    assert "Rome" in hybrid.stdout

    info = runner.invoke(app, ["info", "--store", store])
    assert info.exit_code == 0, info.output
    text = flat(info.stdout)
    assert str(tiny_m3_path) in text and "on the server" in text and "dense" in text

    again = _index(corpus, tiny_m3_path, "--store", store)
    assert again.exit_code == 0, again.output
    assert "indexed 0 documents" in flat(again.stdout)
    assert "skipped 3 already indexed" in flat(again.stdout)


def test_store_uri_usage_errors(
    corpus: Path, tmp_path: Path, tiny_m3_path: Path, store: str
) -> None:
    cases = [
        (["index", str(corpus), "--store", "milvus://user:pw@127.0.0.1:1/x"], "M3RAG_MILVUS_TOKEN"),
        (["index", str(corpus), "--store", "milvus://127.0.0.1:1/"], "collection name"),
        (["index", str(corpus), "--store", store, "--index", str(tmp_path)], "not both"),
        (["index", str(corpus), "--store", store, "--lang", "auto"], "not available on Milvus"),
        (["search", "q", "--store", "milvus://127.0.0.1:1/a/b"], "one collection name"),
        (["search", "q"], "--index"),
        (["info"], "--index"),
    ]
    for args, message in cases:
        result = runner.invoke(
            app, [*args, "--model", str(tiny_m3_path)] if args[0] != "info" else args
        )
        assert result.exit_code == 2, (args, result.output)
        assert message in flat(result.output), (args, result.output)
    missing = runner.invoke(app, ["search", "q", "--store", store, "--mode", "bm25"])
    assert missing.exit_code == 2, missing.output
    assert "no Milvus collection" in flat(missing.output)


@pytest.mark.parametrize("mode", ["dense", "lexical"])
def test_eval_into_a_store_matches_the_folder(
    tmp_path: Path,
    tiny_m3_path: Path,
    minilm_path: Path,
    store: str,
    tiny_beir: Path,
    mode: str,
) -> None:
    # dense with a real model: the tiny random checkpoint's CLS vectors are nearly parallel (its
    # dense scores differ in the sixth decimal), so float32's last bits, which numpy's product
    # on Milvus's rows and torch's on the folder's do not share, reorder its near-ties
    model = minilm_path if mode == "dense" else tiny_m3_path
    reports = {}
    for name, where in (
        ("milvus", ["--store", store]),
        ("folder", ["--index", str(tmp_path / "i")]),
    ):
        out = tmp_path / f"{name}.json"
        args = ["eval", str(tiny_beir), "--model", str(model), "--modes", mode, "--k", "3"]
        result = runner.invoke(app, [*args, *where, "--lang", "en", "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(out.read_text())
    assert reports["milvus"]["documents"] == 5
    assert reports["milvus"]["metrics"][mode] == pytest.approx(
        reports["folder"]["metrics"][mode], abs=1e-6
    )


def test_a_store_uri_without_the_milvus_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus now fails
    result = runner.invoke(
        app, ["search", "q", "--store", "milvus://127.0.0.1:1/x", "--mode", "bm25"]
    )
    assert result.exit_code == 2, result.output
    assert "m3rag[milvus]" in flat(result.output)
