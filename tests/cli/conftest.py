"""Fixtures of the command-line tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """A five-document BEIR folder in three languages with four test queries."""
    return _beir(tmp_path / "beir")


def _beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = {
        "paris": "Paris is the capital and most populous city of France.",
        "beijing": "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
        "tokyo": "Tokyo is the capital of Japan and its largest city.",
        "rain": "Rainfall in the northern valleys doubled this year.",
        "cairo": "Cairo is the capital of Egypt. القاهرة هي عاصمة مصر.",
    }
    (folder / "corpus.jsonl").write_text(
        "\n".join(
            json.dumps({"_id": k, "title": "", "text": v}, ensure_ascii=False)
            for k, v in docs.items()
        )
        + "\n"
    )
    queries = {
        "q1": "capital of France",
        "q2": "中国的首都",
        "q3": "capital of Japan",
        "q4": "rain in the valleys",
    }
    (folder / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "text": v}, ensure_ascii=False) for k, v in queries.items())
        + "\n"
    )
    qrels = [("q1", "paris"), ("q2", "beijing"), ("q3", "tokyo"), ("q4", "rain")]
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    )
    return folder
