"""Distributed ingest on a real local Ray cluster, bound to a loopback address (127.0.0.2).

One cluster for the module (Ray starts in seconds, not milliseconds); every run is compared with
the single-process `m3rag.index_files` on the same tiny checkpoint and the same files.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data")
pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

pytestmark = [pytest.mark.model, pytest.mark.slow]

HOST = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the machine's own address; 127.0.0.2 it keeps
LONG = " ".join(f"Sentence {i} talks about topic {i % 7} in some detail." for i in range(40))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    import ray

    started = time.perf_counter()
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address=HOST,
        configure_logging=False,
    )
    try:
        nodes = ray.nodes()
        assert nodes
        for node in nodes:
            assert ipaddress.ip_address(node["NodeManagerAddress"]).is_loopback, node
        print(f"ray.init took {time.perf_counter() - started:.1f}s")  # noqa: T201
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text(f"# Guide\n\n## Setup\n\n{LONG}\n\n## Use\n\nRun it.\n")
    (root / "sub" / "note.txt").write_text("A short note about BGE-M3 and hybrid retrieval.")
    (root / "page.html").write_text(
        "<html><title>Page</title><body><h1>Head</h1><p>Some visible text.</p>"
        "<script>hidden()</script></body></html>"
    )
    (root / "empty.txt").write_text("   ")
    records = [
        {"id": "r1", "text": "First record.", "metadata": {"lang": "en", "n": 1}},
        {"id": "r2", "title": "Second", "text": LONG},
        {"text": "A record without an id."},
        {"id": "r1", "text": "The id r1 again."},
        {"id": "bad", "text": ""},
    ]
    (root / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    import pyarrow as pa

    table = pa.table(
        {
            "id": ["p1", None],
            "text": ["A parquet row.", "Another parquet row, without an id."],
            "metadata": [json.dumps({"kind": "row"}), None],
        }
    )
    pyarrow_parquet.write_table(table, root / "rows.parquet")
    return root


def _contents(col: object) -> dict[str, tuple[str, dict[str, object], np.ndarray]]:
    keys = np.flatnonzero(col.allowed()).astype(np.int64)  # type: ignore[attr-defined]
    docs = col.documents(keys)  # type: ignore[attr-defined]
    dense = col.dense_vecs(keys)  # type: ignore[attr-defined]
    return {d.id: (d.text, dict(d.metadata), dense[i]) for i, d in enumerate(docs)}


def _single_process(tiny_encoder: object, corpus: Path, path: Path) -> object:
    import m3rag

    col = m3rag.Collection.create(path, encoder=tiny_encoder)
    report = m3rag.index_files(col, [corpus], chunk_tokens=64, batch_size=8)
    return col, report


def test_index_with_ray_matches_index_files_and_resumes(
    ray_cluster: object, tiny_encoder: object, tiny_m3_path: Path, corpus: Path, tmp_path: Path
) -> None:
    import m3rag
    from m3rag.distributed import index_with_ray

    reference, expected = _single_process(tiny_encoder, corpus, tmp_path / "one")
    col = m3rag.Collection.create(tmp_path / "ray", encoder=tiny_encoder)
    problems: list[object] = []
    progress: list[object] = []
    started = time.perf_counter()
    report = index_with_ray(
        col,
        [corpus],
        chunk_tokens=64,
        batch_size=8,
        commit_every=2,
        on_problem=problems.append,
        on_progress=progress.append,
    )
    print(f"first run {time.perf_counter() - started:.1f}s: {report}")  # noqa: T201
    assert (report.documents, report.chunks, report.skipped, report.replaced) == (
        expected.documents,
        expected.chunks,
        expected.skipped,
        expected.replaced,
    )
    assert sorted(map(str, report.problems)) == sorted(map(str, expected.problems))
    assert len(problems) == len(expected.problems)
    assert progress and progress[-1].done == progress[-1].total  # type: ignore[attr-defined]

    want, got = _contents(reference), _contents(col)
    assert col.ids() == reference.ids()  # same ids, same order
    assert len(got) == expected.chunks
    for doc_id, (text, meta, vec) in want.items():
        assert got[doc_id][0] == text
        assert got[doc_id][1] == meta
        np.testing.assert_allclose(got[doc_id][2], vec, atol=1e-5)
    # the other heads: the same query scores every stored chunk alike
    query = tiny_encoder.encode_queries("topic detail record")  # type: ignore[attr-defined]
    keys = np.arange(reference.count(), dtype=np.int64)
    np.testing.assert_allclose(
        col.lexical_scores(query.lexical_weights[0], keys),
        reference.lexical_scores(query.lexical_weights[0], keys),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        col.colbert_scores(query.colbert_vecs[0], keys),
        reference.colbert_scores(query.colbert_vecs[0], keys),
        atol=1e-3,
    )

    # resume: nothing changed, nothing encoded
    started = time.perf_counter()
    again = index_with_ray(col, [corpus], chunk_tokens=64, batch_size=8)
    print(f"resume run {time.perf_counter() - started:.1f}s: {again}")  # noqa: T201
    assert (again.documents, again.chunks) == (0, 0)
    assert again.skipped == expected.documents
    assert col.count() == expected.chunks

    # a changed document replaces its chunks (fewer now), the rest is skipped
    (corpus / "guide.md").write_text("# Guide\n\nShorter now.\n")
    changed = index_with_ray(col, [corpus], chunk_tokens=64, batch_size=8)
    assert (changed.documents, changed.replaced) == (1, 1)
    assert changed.skipped == expected.documents - 1
    fresh, _ = _single_process(tiny_encoder, corpus, tmp_path / "fresh")
    assert sorted(col.ids()) == sorted(fresh.ids())  # type: ignore[attr-defined]
    for c in (reference, col, fresh):
        c.close()  # type: ignore[attr-defined]


def test_encode_with_ray_shards_feed_collection_add(
    ray_cluster: object, tiny_encoder: object, tiny_m3_path: Path, corpus: Path, tmp_path: Path
) -> None:
    import m3rag
    from m3rag.distributed import encode_with_ray

    reference, expected = _single_process(tiny_encoder, corpus, tmp_path / "one")
    shards = list(
        encode_with_ray(
            [corpus], model_name_or_path=str(tiny_m3_path), chunk_tokens=64, batch_size=8
        )
    )
    assert all(len(s.documents) == len(s.embeddings) for s in shards)
    col = m3rag.Collection.create(tmp_path / "shards", encoder=tiny_encoder)
    for shard in shards:
        col.add(shard.documents, embeddings=shard.embeddings)
        direct = tiny_encoder.encode_corpus([d.text for d in shard.documents])  # type: ignore[attr-defined]
        np.testing.assert_allclose(shard.embeddings.dense_vecs, direct.dense_vecs, atol=1e-5)
        for a, b in zip(shard.embeddings.lexical_weights, direct.lexical_weights, strict=True):
            assert a.keys() == b.keys()
            np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-5)
        for a, b in zip(shard.embeddings.colbert_vecs, direct.colbert_vecs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    col.commit()
    assert col.ids() == reference.ids()
    assert col.count() == expected.chunks
    col.close()
    reference.close()  # type: ignore[attr-defined]


def test_cli_index_ray(
    ray_cluster: object, tiny_m3_path: Path, corpus: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from m3rag.cli import app

    index = tmp_path / "cli"
    argv = ["index", str(corpus), "--model", str(tiny_m3_path), "--chunk-tokens", "64"]
    out = CliRunner().invoke(app, [*argv, "--store", str(index), "--ray", "local"])
    assert out.exit_code == 0, out.output
    assert "indexed 8 documents" in out.output
    again = CliRunner().invoke(app, [*argv, "--index", str(index), "--ray", "local"])
    assert again.exit_code == 0, again.output
    assert "skipped 8 already indexed" in again.output


def test_index_with_ray_into_milvus(
    ray_cluster: object,
    tiny_encoder: object,
    corpus: Path,
    tmp_path: Path,
    milvus_lite_uri: str,
) -> None:
    """Ray encodes, the driver upserts into a MilvusStore: every row there, scores as on disk."""
    import uuid

    from m3rag import MilvusStore
    from m3rag.distributed import index_with_ray

    reference, expected = _single_process(tiny_encoder, corpus, tmp_path / "one")
    store = MilvusStore(
        milvus_lite_uri, f"ray_{uuid.uuid4().hex[:10]}", encoder=tiny_encoder, create=True
    )
    report = index_with_ray(store, [corpus], chunk_tokens=64, batch_size=8, commit_every=2)
    assert (report.documents, report.chunks) == (expected.documents, expected.chunks)
    assert sorted(store.ids()) == sorted(reference.ids())  # type: ignore[attr-defined]
    ids = reference.ids()  # type: ignore[attr-defined]
    for got, want in zip(store.get(ids), reference.get(ids), strict=True):  # type: ignore[attr-defined]
        assert (got.id, got.text, dict(got.metadata)) == (want.id, want.text, dict(want.metadata))
    query = tiny_encoder.encode_queries("topic detail record")  # type: ignore[attr-defined]
    n = expected.chunks
    for path, q in (
        ("search_dense", query.dense_vecs[0]),
        ("search_lexical", query.lexical_weights[0]),
    ):
        on_milvus = getattr(store, path)(q, k=n)
        on_disk = getattr(reference, path)(q, k=n)
        assert dict(zip(on_milvus.ids, on_milvus.scores, strict=True)) == pytest.approx(
            dict(zip(on_disk.ids, on_disk.scores, strict=True)), abs=1e-5
        )
    again = index_with_ray(store, [corpus], chunk_tokens=64, batch_size=8)
    assert (again.documents, again.skipped) == (0, expected.documents)  # resumed: all skipped
    assert store.count() == expected.chunks
    store.drop()
    reference.close()  # type: ignore[attr-defined]
