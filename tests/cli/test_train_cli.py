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
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
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
    assert "holds no run to continue" in result.output


F = [
    "--batch-size",
    "3",
    "--group-size",
    "2",
    "--query-max-length",
    "16",
    "--passage-max-length",
    "24",
    "--device",
    "cpu",
]


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    texts = multilingual_corpus(24, seed=3, max_words=12)
    rows = [
        {"query": texts[4 * i], "pos": [texts[4 * i + 1]], "neg": texts[4 * i + 2 : 4 * i + 4]}
        for i in range(6)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def _finetune(data: Path, output: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["finetune", str(data), "--output", str(output), *args])


def test_finetune_never_writes_into_the_base_model_or_a_foreign_folder(
    train_file: Path, tiny_m3_path: Path, tmp_path: Path
) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_m3_path, base)
    weights = (base / "model.safetensors").read_bytes()
    result = _finetune(train_file, base, "--model", str(base), "--max-steps", "1", *F)
    assert result.exit_code == 2
    assert "is the base model's folder" in result.output
    assert (base / "model.safetensors").read_bytes() == weights
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": 1}')
    (user / "notes.txt").write_text("notes")
    for extra in ([], ["--overwrite"]):
        result = _finetune(
            train_file, user, "--model", str(tiny_m3_path), "--max-steps", "1", *F, *extra
        )
        assert result.exit_code == 2
        assert "holds no m3rag fine-tuning run" in result.output
    assert (user / "config.json").read_text() == '{"mine": 1}'
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "notes.txt"]


def test_finetune_resume_takes_the_runs_model_and_options(
    train_file: Path, tiny_m3_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--model", str(tiny_m3_path), "--save-steps", "2", *F]
    assert _finetune(train_file, out, "--max-steps", "2", *args).exit_code == 0
    again = _finetune(train_file, out, "--max-steps", "2", *args)
    assert again.exit_code == 2
    assert "continue it with --resume, replace it with --overwrite" in again.output
    # no --model (which would default to BAAI/bge-m3) and no options: the run's own
    result = _finetune(train_file, out, "--resume", "--max-steps", "4")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 4
    log = json.loads((out / "trainer_log.json").read_text())
    assert [r["step"] for r in log["history"]] == [1.0, 2.0, 3.0, 4.0]
    result = _finetune(train_file, out, "--resume", "--max-steps", "4")
    assert result.exit_code == 2
    assert "at step 4 and this run plans 4 steps: nothing is left to train" in result.output
    result = _finetune(
        train_file, out, "--resume", "--max-steps", "6", "--batch-size", "2", "--head-lr", "1e-3"
    )
    assert result.exit_code == 2
    assert "--batch-size (the run's: 3, given: 2)" in result.output
    assert "--head-lr (the run's: None, given: 0.001)" in result.output
    other = tmp_path / "other"
    other.mkdir()
    result = _finetune(train_file, out, "--resume", "--max-steps", "6", "--model", str(other))
    assert result.exit_code == 2
    assert "drop --model" in result.output
    # the same options again are no contradiction
    result = _finetune(train_file, out, "--resume", "--max-steps", "5", *args)
    assert result.exit_code == 0, result.output
    result = _finetune(train_file, out, "--overwrite", "--max-steps", "1", *args)
    assert result.exit_code == 0, result.output
    assert not list(out.glob("checkpoint-*"))


def test_finetune_reports_a_damaged_checkpoint_with_exit_4(
    train_file: Path, tiny_m3_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--model", str(tiny_m3_path), "--save-steps", "1", *F]
    assert _finetune(train_file, out, "--max-steps", "1", *args).exit_code == 0
    state = out / "checkpoint-1" / "trainer_state.json"
    state.write_text(state.read_text()[:50])
    result = _finetune(train_file, out, "--resume", "--max-steps", "2")
    assert result.exit_code == 4
    assert "checkpoint-1 is damaged: trainer_state.json cannot be read" in result.output
    assert "weights_only" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eval-steps", "1"], "give --dev"),
        (["--patience", "2"], "give --dev"),
        (["--max-steps", "0"], "max_steps must be an int >= 1"),
        (["--lr", "inf"], "learning_rate must be a finite number"),
        (["--resume", "--overwrite"], "not both"),
    ],
)
def test_finetune_refuses_bad_options_before_loading(
    train_file: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    # --model names nothing loadable: a refusal must come first
    result = _finetune(train_file, tmp_path / "o", "--model", str(tmp_path / "none"), *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_finetune_checks_every_example_before_loading(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": "q2", "pos": ["p"]}\n')
    result = _finetune(data, tmp_path / "o", "--model", str(tmp_path / "none"), *F)
    assert result.exit_code == 2
    assert "d.jsonl:2: no negatives but group_size=2" in result.output
    assert not (tmp_path / "o").exists()


def test_a_beir_folder_without_a_train_split(beir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "beir"
    shutil.copytree(beir, folder)
    (folder / "qrels" / "train.tsv").rename(folder / "qrels" / "test.tsv")
    for command in (
        ["finetune", str(folder), "--output", str(tmp_path / "o")],
        ["mine", str(folder), "--index", str(tmp_path / "i"), "-o", str(tmp_path / "m.jsonl")],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert "no qrels/train.tsv in" in result.output
        assert "a BEIR folder needs a train split" in result.output


def test_mine_checks_its_output_before_mining(beir: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "m.jsonl"
    result = runner.invoke(
        app, ["mine", str(beir), "--index", str(tmp_path / "i"), "-o", str(target)]
    )
    assert result.exit_code == 2
    assert "cannot be written" in result.output
    assert not (tmp_path / "i").exists()  # nothing indexed or mined
