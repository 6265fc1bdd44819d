"""BGE-M3 dense + lexical vectors in a Milvus hybrid collection (milvus-lite, local file).

``M3Embeddings`` gives the dense vectors and ``M3SparseEmbeddings`` the lexical weights as
``{token_id: weight}`` -- the sparse shape Milvus (and langchain-milvus) expects. Milvus's
``hybrid_search`` then fuses the two with a ``WeightedRanker``.

Run: python examples/milvus_hybrid.py "What is hybrid search?" [--model BAAI/bge-m3] [--db /tmp/m3rag-milvus.db]
Needs: pip install "pymilvus[milvus_lite]"
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from m3rag_langchain import M3Embeddings, M3SparseEmbeddings
from pymilvus import AnnSearchRequest, DataType, MilvusClient, WeightedRanker

from m3rag import Chunker, M3Encoder
from m3rag.ingest import discover, read_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question")
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--model", default="BAAI/bge-m3")
    parser.add_argument(
        "--db", type=Path, default=None, help="milvus-lite file (default: temporary)"
    )
    args = parser.parse_args()

    encoder = M3Encoder(args.model)
    dense = M3Embeddings(encoder=encoder)
    sparse = M3SparseEmbeddings(encoder=encoder)
    chunker = Chunker(encoder.tokenizer, max_tokens=128, overlap=16)
    files, _ = discover([args.docs])
    chunks = [
        c
        for doc, _p in read_documents(files)
        if doc is not None
        for c in chunker.split(doc.text, parent_id=doc.id)
    ]
    texts = [c.text for c in chunks]

    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(str(args.db or Path(tmp) / "milvus.db"))
        if client.has_collection("m3rag_demo"):
            client.drop_collection("m3rag_demo")
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=4096)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=encoder.dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        index = client.prepare_index_params()
        index.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        client.create_collection("m3rag_demo", schema=schema, index_params=index)
        rows = [
            {"id": i, "text": t, "dense": d, "sparse": s}
            for i, (t, d, s) in enumerate(
                zip(texts, dense.embed_documents(texts), sparse.embed_documents(texts), strict=True)
            )
        ]
        client.insert("m3rag_demo", rows)
        client.load_collection("m3rag_demo")
        requests = [
            AnnSearchRequest(
                [dense.embed_query(args.question)], "dense", {"metric_type": "IP"}, limit=10
            ),
            AnnSearchRequest(
                [sparse.embed_query(args.question)], "sparse", {"metric_type": "IP"}, limit=10
            ),
        ]
        hits = client.hybrid_search(
            "m3rag_demo", requests, WeightedRanker(0.4, 0.2), limit=3, output_fields=["text"]
        )
        for rank, hit in enumerate(hits[0], 1):
            print(f"[{rank}] score={hit['distance']:.4f}  {hit['entity']['text'][:80]!r}")
        client.close()


if __name__ == "__main__":
    main()
