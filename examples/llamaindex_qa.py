"""A LlamaIndex query engine over an m3rag index: M3Retriever + M3Reranker.

Offline it answers with llama-index-core's MockLLM (which echoes its prompt); pass a real LLM
through ``Settings.llm`` or ``RetrieverQueryEngine.from_args(..., llm=...)``.

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
        engine = RetrieverQueryEngine.from_args(
            retriever, llm=MockLLM(max_tokens=32), node_postprocessors=[reranker]
        )
        response = engine.query(args.question)
        print("answer:", str(response)[:200])
        for i, nws in enumerate(response.source_nodes, 1):
            meta = nws.node.metadata
            print(
                f"[{i}] {meta['parent_id']}  rerank={nws.score:.3f}  retrieval={meta['retrieval_score']:.3f}  "
                f"paths={ {p: round(s, 3) for p, s in meta['path_scores'].items()} }"
            )
        col.close()


if __name__ == "__main__":
    main()
