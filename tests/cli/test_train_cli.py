"""``m3rag mine`` and ``m3rag finetune`` on a tiny BEIR folder and the tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m3rag.cli import app
from m3rag.testing import multilingual_corpus

pytestmark = pytest.mark.model

runner = CliRunner()


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("beir")
    (root / "qrels").mkdir()
    texts = multilingual_corpus(40, seed=5, max_words=15)
    docs = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(texts[:30])]
    queries = [{"_id": f"q{i}", "text": t} for i, t in enumerate(texts[30:])]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), "utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), "utf-8")
    rows = "".join(f"q{i}\td{3 * i}\t1\n" for i in range(len(queries)))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, "utf-8")
    return root


def test_mine_then_finetune(beir: Path, tiny_m3_path: Path, tmp_path: Path) -> None:
    mined = tmp_path / "mined.jsonl"
    args = ["mine", str(beir), "--index", str(tmp_path / "idx"), "--model", str(tiny_m3_path)]
    result = runner.invoke(app, [*args, "-o", str(mined), "--range", "2-12", "--negatives", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in mined.read_text("utf-8").splitlines()]
    assert len(lines) == 10
    corpus = {
        json.loads(x)["_id"]: json.loads(x)["text"]
        for x in (beir / "corpus.jsonl").read_text("utf-8").splitlines()
    }
    for i, line in enumerate(lines):
        assert len(line["neg"]) == 3
        assert corpus[f"d{3 * i}"] not in line["neg"]  # positives skipped
        assert line["pos"] == [corpus[f"d{3 * i}"]]
    out = tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "finetune",
            str(mined),
            "--model",
            str(tiny_m3_path),
            "--output",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--group-size",
            "2",
            "--passage-max-length",
            "24",
            "--save-steps",
            "1",
            "--head-warmup-steps",
            "1",
            "--lexical-init",
            "uniform",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2
    assert (out / "colbert_linear.pt").is_file()
    assert (out / "checkpoint-2" / "trainer_state.pt").is_file()
    result = runner.invoke(
        app,
        [
            "finetune",
            str(mined),
            "--model",
            str(tiny_m3_path),
            "--output",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--group-size",
            "2",
            "--passage-max-length",
            "24",
            "--resume",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--range", "50-10"], "--range"),
        (["--range", "ten"], "--range"),
        (["--negatives", "0"], "--negatives"),
    ],
)
def test_mine_refuses_bad_options(beir: Path, tmp_path: Path, extra: list[str], message: str):
    result = runner.invoke(
        app, ["mine", str(beir), "--index", str(tmp_path / "i"), "-o", str(tmp_path / "o"), *extra]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_finetune_refuses_bad_data_and_options(tmp_path: Path, tiny_m3_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": []}\n', "utf-8")
    base = ["finetune", "--model", str(tiny_m3_path), "--output", str(tmp_path / "o")]
    result = runner.invoke(app, [*base[:1], str(bad), *base[1:]])
    assert result.exit_code == 2
    assert "bad.jsonl:1" in result.output
    result = runner.invoke(app, [*base[:1], str(bad), *base[1:], "--mode", "hybrid"])
    assert result.exit_code == 2
    assert "mode must be one of" in result.output
    result = runner.invoke(app, [*base[:1], str(bad), *base[1:], "--lexical-init", "zeros"])
    assert result.exit_code == 2
    assert "lexical_init must be one of" in result.output
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "q", "pos": ["p"]}\n', "utf-8")
    result = runner.invoke(app, [*base[:1], str(good), *base[1:], "--resume"])
    assert result.exit_code == 2
    assert "no checkpoint" in result.output
