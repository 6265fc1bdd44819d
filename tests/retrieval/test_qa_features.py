"""QA-bot features: page and heading citations, offsets, spans, min_score, MMR, neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from m3rag import Collection, FusionConfig, HybridRetriever, M3Output, index_files
from m3rag.cli import app
from m3rag.ingest import discover, read_documents

runner = CliRunner()


def _pdf(path: Path, pages: list[str]) -> None:
    """A minimal PDF with one line of text per page, cross-reference table included."""
    n = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
    ]
    font = 3 + 2 * n
    for i, text in enumerate(pages):
        content = f"BT /F1 14 Tf 20 100 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 600 144] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(
            b"<< /Length "
            + str(len(content)).encode()
            + b" >>\nstream\n"
            + content
            + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
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


PAGES = [
    "The annual report opens with the budget of the harbour authority.",
    "Spending on roads and bridges rose in the northern districts this year.",
    "The board chose Lisbon as the venue of the next general assembly.",
    "An appendix lists every member of the board and their terms.",
]
GUIDE = (
    "# Guide\n\nThis guide explains the tool.\n\n## Install\n\nRun the installer and wait. "
    "The installer asks for a folder.\n\n## Configure\n\nEdit the settings file to choose "
    "a language and a theme for the interface.\n"
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qa-sources")
    _pdf(folder / "report.pdf", PAGES)
    (folder / "guide.md").write_text(GUIDE, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, sources: Path, tiny_encoder) -> Collection:  # type: ignore[no-untyped-def]
    col = Collection.create(tmp_path_factory.mktemp("qa") / "c", encoder=tiny_encoder)
    report = index_files(col, [sources], chunk_tokens=24, overlap=4)
    assert report.documents == 2 and not report.problems
    yield col
    col.close()


def test_offsets_slice_the_source_back_and_pages_are_cited(
    indexed: Collection, sources: Path
) -> None:
    texts = {d.id: d.text for d, _ in read_documents(discover([sources])[0]) if d is not None}
    keys = np.arange(indexed.count(), dtype=np.int64)
    chunks = indexed.documents(keys)
    assert len(chunks) > 4
    for chunk in chunks:
        parent = chunk.metadata["parent_id"]
        assert texts[parent][chunk.metadata["start"] : chunk.metadata["end"]] == chunk.text
        if parent == "report.pdf":
            first, last = chunk.metadata["page_start"], chunk.metadata["page_end"]
            assert 1 <= first <= last <= 4
            for page, line in enumerate(PAGES, 1):
                if line in chunk.text:
                    assert first <= page <= last
            assert "page_offsets" not in chunk.metadata
    retriever = HybridRetriever(
        indexed, recall=("bm25",), fusion=FusionConfig(weights={"bm25": 1}), rollup=None
    )
    hit = retriever.retrieve("Lisbon venue assembly", k=1)[0]
    assert hit.citation == "report.pdf p. 3"
    found = [hit.text[a:b].lower() for a, b in hit.spans]
    assert found and set(found) <= {"lisbon", "venue", "assembly"}
    assert len(found) == sum(hit.text.lower().count(w) for w in ("lisbon", "venue", "assembly"))
    assert texts["report.pdf"][hit.start : hit.end] == hit.text


def test_markdown_chunks_carry_their_heading_path(indexed: Collection) -> None:
    retriever = HybridRetriever(
        indexed, recall=("bm25",), fusion=FusionConfig(weights={"bm25": 1}), rollup=None
    )
    hit = retriever.retrieve("settings theme language", k=1)[0]
    assert hit.metadata["headings"] == ["Guide", "Configure"]
    assert hit.citation == "guide.md § Guide > Configure"
    # chunks are cut before headings: no chunk starts in the middle of a section's first line
    keys = np.arange(indexed.count(), dtype=np.int64)
    starts = [
        d.text.split("\n")[0]
        for d in indexed.documents(keys)
        if d.metadata["parent_id"] == "guide.md"
    ]
    assert any(s.startswith("## Configure") for s in starts)


def test_ask_cites_the_page(sources: Path, tmp_path: Path, tiny_m3_path: Path) -> None:
    index = tmp_path / "idx"
    built = runner.invoke(
        app,
        [
            "index",
            str(sources),
            "--index",
            str(index),
            "--model",
            str(tiny_m3_path),
            "--chunk-tokens",
            "24",
        ],
    )
    assert built.exit_code == 0, built.output
    asked = runner.invoke(
        app,
        [
            "ask",
            "Lisbon assembly",
            "--index",
            str(index),
            "--mode",
            "bm25",
            "--no-rerank",
            "-k",
            "1",
        ],
    )
    assert asked.exit_code == 0, asked.output
    assert "report.pdf p. 3" in asked.stdout


def test_neighbours_expand_a_hit_without_repeating_overlaps(
    indexed: Collection, sources: Path
) -> None:
    texts = {d.id: d.text for d, _ in read_documents(discover([sources])[0]) if d is not None}
    retriever = HybridRetriever(
        indexed, recall=("bm25",), fusion=FusionConfig(weights={"bm25": 1}), rollup=None, expand=1
    )
    hit = retriever.retrieve("roads bridges northern", k=1)[0]
    index = hit.metadata["chunk"]
    ids = [f"report.pdf#{i}" for i in (index - 1, index, index + 1) if i >= 0]
    present = set(indexed.ids())
    around = indexed.get([i for i in ids if i in present])
    first, last = min(d.metadata["start"] for d in around), max(d.metadata["end"] for d in around)
    assert hit.context == texts["report.pdf"][first:last]
    assert len(hit.context) > len(hit.text)


def test_min_score_cuts_on_the_fused_score(indexed: Collection) -> None:
    retriever = HybridRetriever(
        indexed, recall=("bm25",), fusion=FusionConfig(weights={"bm25": 1}), rollup=None
    )
    every = retriever.retrieve("board", k=20)
    assert len(every) >= 2
    cut = (every[0].score + every[-1].score) / 2
    kept = retriever.retrieve("board", k=20, min_score=cut)
    assert kept.ids == [h.id for h in every if h.score >= cut]
    assert len(retriever.retrieve("board", k=20, min_score=every[0].score + 1)) == 0
    with pytest.raises(ValueError, match="min_score"):
        retriever.retrieve("board", min_score=float("nan"))


def test_mmr_prefers_novel_hits_over_near_duplicates(tmp_path: Path) -> None:
    texts = [
        "harbour ships harbour ships",
        "harbour ships harbour ships.",
        "harbour ships harbour ships!",
        "harbour ships and cranes",
        "harbour ships with pilots",
        "weather at the harbour",
        "news from the harbour",
    ]
    rng = np.random.default_rng(0)
    base = rng.standard_normal(8)
    vecs = np.stack(
        [base + 1e-3 * rng.standard_normal(8) for _ in range(3)]
        + [rng.standard_normal(8) for _ in range(4)]
    ).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    n = len(texts)
    emb = M3Output(vecs, None, None, np.full(n, 4, np.int64), np.zeros(n, np.bool_))
    with Collection.create(tmp_path / "c", heads=("dense",), dim=8) as col:
        col.add(texts, ids=[f"d{i}" for i in range(n)], embeddings=emb)
        col.commit()
        fusion = FusionConfig(weights={"bm25": 1})
        plain = HybridRetriever(col, recall=("bm25",), fusion=fusion).retrieve("harbour ships", k=3)
        assert set(plain.ids) == {"d0", "d1", "d2"}  # the near-duplicates fill the top 3
        diverse = HybridRetriever(col, recall=("bm25",), fusion=fusion, mmr_lambda=0.5).retrieve(
            "harbour ships", k=3
        )
        assert diverse.ids[0] == plain.ids[0]
        assert len({"d0", "d1", "d2"} & set(diverse.ids)) == 1  # one of the near-duplicates

        def redundancy(ids: list[str]) -> float:
            v = vecs[[int(i[1:]) for i in ids]]
            sim = v @ v.T
            return float(sim[np.triu_indices(len(ids), 1)].mean())

        assert redundancy(diverse.ids) < redundancy(plain.ids) - 0.5
        same = HybridRetriever(col, recall=("bm25",), fusion=fusion, mmr_lambda=1.0).retrieve(
            "harbour ships", k=3
        )
        assert same.ids == plain.ids
        with pytest.raises(ValueError, match="mmr_lambda"):
            HybridRetriever(col, recall=("bm25",), fusion=fusion, mmr_lambda=2.0)
