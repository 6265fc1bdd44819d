"""The model-free FakeEncoder: the Encoder protocol, determinism, a pipeline with no model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from m3rag.encoder import Encoder
from m3rag.testing import FakeEncoder

ROOT = Path(__file__).resolve().parents[2]


def test_it_is_an_encoder_and_deterministic() -> None:
    enc = FakeEncoder()
    assert isinstance(enc, Encoder)
    a = enc.encode_corpus(["Paris is the capital of France.", "北京是首都"])
    b = FakeEncoder().encode_corpus(["Paris is the capital of France.", "北京是首都"])
    assert a.dense_vecs is not None and b.dense_vecs is not None
    np.testing.assert_array_equal(a.dense_vecs, b.dense_vecs)
    assert a.lexical_weights == b.lexical_weights
    assert np.allclose(np.linalg.norm(a.dense_vecs, axis=1), 1.0)
    assert a.colbert_vecs is not None and a.colbert_vecs[1].shape == (5 + 1, 8)  # 5 CJK + </s>
    only = enc.encode_queries(["x"], sparse=False, colbert=False)
    assert only.lexical_weights is None and only.colbert_vecs is None


def test_a_whole_pipeline_runs_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "paris.md").write_text("# Paris\n\nParis is the capital of France. " * 20)
    (tmp_path / "docs" / "rain.txt").write_text("Rainfall in the valleys doubled this year. " * 20)
    script = textwrap.dedent(
        f"""
        import sys
        from m3rag import Collection, HybridRetriever, index_files
        from m3rag.testing import FakeEncoder

        enc = FakeEncoder()
        col = Collection.create({str(tmp_path / "idx")!r}, encoder=enc)
        report = index_files(col, [{str(tmp_path / "docs")!r}], chunk_tokens=32)
        assert report.documents == 2 and report.chunks > 4, report
        hits = HybridRetriever(col).retrieve("capital of France", k=2)
        assert hits[0].id == "paris.md", hits.ids
        assert set(hits[0].paths) == {{"dense", "lexical", "colbert", "bm25"}}
        col.close()
        # no model code at all (the index itself may use torch's BLAS for its scans)
        heavy = [m for m in ("transformers", "tokenizers", "safetensors") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'integrations'}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_collection_is_a_store(tmp_path: Path) -> None:
    from m3rag import Collection
    from m3rag.index import Store, WritableStore

    with Collection.create(tmp_path / "c", encoder=FakeEncoder()) as col:
        assert isinstance(col, Store) and isinstance(col, WritableStore)
    with Collection.open(tmp_path / "c", read_only=True) as reader:
        assert isinstance(reader, Store)


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(st.text(max_size=80) | st.just("w " * 600), max_size=5),
    max_length=st.sampled_from([None, 4, 64]),
)
def test_count_tokens_is_what_the_fake_encodes(texts: list[str], max_length: int | None) -> None:
    """As on M3Encoder: the counts ``token_counts`` reports, without encoding."""
    fake = FakeEncoder(max_length=max_length or 512)
    counts = fake.count_tokens(texts)
    np.testing.assert_array_equal(counts, fake.encode_corpus(texts).token_counts)
