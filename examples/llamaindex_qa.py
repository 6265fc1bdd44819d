"""A LlamaIndex query engine over an m3rag index, built the LlamaIndex way.

The files are indexed as ``m3rag index`` does (chunks with citations), then LlamaIndex reads the
collection through ``M3VectorStore``: ``VectorStoreIndex.from_vector_store(...)``, queried in
m3rag's own mode (``semantic_hybrid``: every path fused), reranked by ``M3Reranker``.

Offline the LLM is llama-index-core's ``MockLLM()``: without ``max_tokens`` it returns its prompt
unchanged, so what is printed is the prompt a real LLM would answer (the reranked passages and
the question), not an answer. Pass a real LLM through ``Settings.llm`` or
``RetrieverQueryEngine.from_args(..., llm=...)`` for one.

Run: python examples/llamaindex_qa.py "What is hybrid search?" --docs examples/data \
        [--model BAAI/bge-m3] [--reranker BAAI/bge-reranker-v2-m3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from llama_index.core import VectorStoreIndex
from llama_index.core.llms import MockLLM
from m3rag_llamaindex import M3Embedding, M3Reranker, M3VectorStore

from m3rag import Collection, M3Encoder, Reranker, index_files
from m3rag.rollup import citation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question")
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--model", default="BAAI/bge-m3")
    parser.add_argument("--reranker", default="BAAI/bge-reranker-v2-m3")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    args = parser.parse_args()

    encoder = M3Encoder(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        col = Collection.create(Path(tmp) / "index", encoder=encoder)
        index_files(col, [args.docs], chunk_tokens=args.chunk_tokens)  # as `m3rag index` does
        index = VectorStoreIndex.from_vector_store(
            M3VectorStore(col), embed_model=M3Embedding(encoder=encoder)
        )
        reranker = M3Reranker(args.reranker, top_n=3, reranker=Reranker(args.reranker))
        # MockLLM(max_tokens=n) would answer "text text ..."; without it, it echoes the prompt.
        engine = index.as_query_engine(
            llm=MockLLM(),
            vector_store_query_mode="semantic_hybrid",  # every path, fused by m3rag
            similarity_top_k=8,
            node_postprocessors=[reranker],
        )
        response = engine.query(args.question)
        print("prompt a real LLM would answer (MockLLM echoes it), last 300 characters:")
        print(str(response)[-300:])
        for i, nws in enumerate(response.source_nodes, 1):
            meta = nws.node.metadata
            print(
                f"[{i}] {citation(meta, meta['parent_id'])}  rerank={nws.score:.3f}  "
                f"retrieval={meta['retrieval_score']:.3f}"
            )
        col.close()


if __name__ == "__main__":
    main()
