"""search and ask rerank whole chunks: pairs long enough for a 512-token chunk and its query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from m3rag.cli import _search
from m3rag.cli._app import CLI_RERANK_MAX_LENGTH, app, load_chunk_reranker
from m3rag.errors import InputTooLongError
from m3rag.rerank import Reranker
from m3rag.testing import build_reranker_checkpoint

pytestmark = pytest.mark.model
runner = CliRunner()


@pytest.fixture(scope="module")
def short_reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bge-reranker-base's layout: 512 usable positions."""
    return build_reranker_checkpoint(tmp_path_factory.mktemp("rr514"), max_position_embeddings=514)


def test_the_default_fits_a_chunk_or_takes_the_models_limit(
    tiny_reranker_path: Path, short_reranker_path: Path
) -> None:
    assert load_chunk_reranker(str(tiny_reranker_path), "cpu", None).max_length == 1024
    assert load_chunk_reranker(str(short_reranker_path), "cpu", None).max_length == 512
    assert load_chunk_reranker(str(tiny_reranker_path), "cpu", 700).max_length == 700
    with pytest.raises(InputTooLongError):
        load_chunk_reranker(str(short_reranker_path), "cpu", 600)


def test_search_and_ask_rerank_a_full_chunk_whole(
    tmp_path: Path, tiny_m3_path: Path, tiny_reranker_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a text longer than the pairs of the Reranker's own default (512 tokens) can hold
    words = [f"w{i % 97}" for i in range(230)]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "long.txt").write_text(" ".join(words), encoding="utf-8")
    index = tmp_path / "idx"
    built = runner.invoke(
        app, ["index", str(tmp_path / "docs"), "--index", str(index), "--model", str(tiny_m3_path)]
    )
    assert built.exit_code == 0, built.output
    used: list[Any] = []

    def spy(*args: Any) -> Any:
        used.append(load_chunk_reranker(*args))
        return used[-1]

    monkeypatch.setattr(_search, "load_chunk_reranker", spy)
    question = "what does w3 say about w5 and w7?"
    common = ["--index", str(index), "--reranker", str(tiny_reranker_path)]
    for command in (["search", question, "--rerank"], ["ask", question]):
        result = runner.invoke(app, [*command, *common])
        assert result.exit_code == 0, result.output
        assert used[-1].max_length == CLI_RERANK_MAX_LENGTH
    chunk = " ".join(words)
    assert used[-1].rerank(question, [chunk]).truncated_indices == []
    # the Reranker's own default (FlagReranker's 512) would have cut it
    assert Reranker(tiny_reranker_path, device="cpu").rerank(question, [chunk]).truncated_indices
    shorter = runner.invoke(app, ["ask", question, *common, "--rerank-max-length", "300"])
    assert shorter.exit_code == 0, shorter.output
    assert used[-1].max_length == 300
    too_long = runner.invoke(app, ["ask", question, *common, "--rerank-max-length", "9000"])
    assert too_long.exit_code == 2
    assert "9000" in too_long.output
