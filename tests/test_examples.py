"""The examples run offline with the tiny checkpoints (the README's first command uses them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.model
def test_encode_example_runs(tiny_m3_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "encode.py"), "--model", str(tiny_m3_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "M3Output(n=3" in out.stdout
    assert "colbert=" in out.stdout


@pytest.mark.model
def test_encode_example_with_a_dense_only_model(minilm_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "encode.py"), "--model", str(minilm_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "heads=['dense']" in out.stdout


@pytest.mark.model
@pytest.mark.parametrize("script", ["langchain_qa.py", "llamaindex_qa.py"])
def test_qa_examples_run_offline(script: str, tiny_m3_path: Path, tiny_reranker_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / script),
            "What is hybrid search?",
            "--model",
            str(tiny_m3_path),
            "--reranker",
            str(tiny_reranker_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    if script == "langchain_qa.py":
        assert "answer:" in out.stdout
    else:  # MockLLM echoes its prompt, which ends with the question
        assert "MockLLM echoes it" in out.stdout
        assert "Query: What is hybrid search?" in out.stdout
    assert "[1]" in out.stdout and "[3]" in out.stdout  # three cited passages
    assert "retrieval=" in out.stdout  # the retrieval score is kept beside the rerank score


@pytest.mark.model
def test_milvus_hybrid_example_runs(tiny_m3_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "milvus_hybrid.py"),
            "What is hybrid search?",
            "--model",
            str(tiny_m3_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "[1] score=" in out.stdout and "[3] score=" in out.stdout
