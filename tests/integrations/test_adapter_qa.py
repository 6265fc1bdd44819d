"""The QA-bot options through the adapters: min_score, and chunk nodes with their source."""

from __future__ import annotations

import pytest

from m3rag import Collection, HybridRetriever, index_files
from m3rag.testing import FakeEncoder


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    root = tmp_path_factory.mktemp("adapter-qa")
    (root / "docs").mkdir()
    (root / "docs" / "harbour.md").write_text(
        "# Harbour\n\nShips dock in the harbour at dawn. " * 12
    )
    (root / "docs" / "rain.txt").write_text("Rainfall in the valleys doubled this year. " * 12)
    col = Collection.create(root / "idx", encoder=FakeEncoder())
    index_files(col, [root / "docs"], chunk_tokens=24)
    yield col
    col.close()


def test_langchain_retriever_min_score(chunked: Collection) -> None:
    pytest.importorskip("langchain_core")
    from m3rag_langchain import M3Retriever

    hybrid = HybridRetriever(chunked, rollup=None)
    every = hybrid.retrieve("ships harbour", k=6)
    cut = (every[0].score + every[-1].score) / 2
    retriever = M3Retriever(retriever=hybrid, k=6, min_score=cut)
    got = retriever.invoke("ships harbour")
    assert [d.id for d in got] == [h.id for h in every if h.score >= cut]
    assert retriever.invoke("ships harbour", min_score=every[0].score + 1) == []


def test_llamaindex_retriever_min_score_and_chunk_sources(chunked: Collection) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import MetadataMode, NodeRelationship
    from m3rag_llamaindex import M3Retriever

    hybrid = HybridRetriever(chunked, rollup=None)
    nodes = M3Retriever(hybrid, similarity_top_k=4).retrieve("ships harbour")
    assert nodes
    for n in nodes:
        parent = n.node.metadata["parent_id"]
        assert n.node.ref_doc_id == parent
        assert n.node.relationships[NodeRelationship.SOURCE].node_id == parent
        shown = n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "doc_sha256" not in shown and "path_scores" not in shown
    top = nodes[0].score
    assert M3Retriever(hybrid, similarity_top_k=4, min_score=top + 1).retrieve("ships") == []
    with pytest.raises(ValueError, match="min_score"):
        M3Retriever(hybrid, min_score=float("inf"))
