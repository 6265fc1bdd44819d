"""A LlamaIndex query engine over an m3rag index: M3Retriever + M3Reranker.

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

from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from m3rag_llamaindex import M3Reranker, M3Retriever

from m3rag import Collection, HybridRetriever, M3Encoder, Reranker, index_files


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
        retriever = M3Retriever(HybridRetriever(col), similarity_top_k=8)
        reranker = M3Reranker(args.reranker, top_n=3, reranker=Reranker(args.reranker))
        # MockLLM(max_tokens=n) would answer "text text ..."; without it, it echoes the prompt.
        engine = RetrieverQueryEngine.from_args(
            retriever, llm=MockLLM(), node_postprocessors=[reranker]
        )
        response = engine.query(args.question)
        print("prompt a real LLM would answer (MockLLM echoes it), last 300 characters:")
        print(str(response)[-300:])
        for i, nws in enumerate(response.source_nodes, 1):
            meta = nws.node.metadata
            print(
                f"[{i}] {meta['parent_id']}  rerank={nws.score:.3f}  retrieval={meta['retrieval_score']:.3f}  "
                f"paths={ {p: round(s, 3) for p, s in meta['path_scores'].items()} }"
            )
        col.close()


if __name__ == "__main__":
    main()
