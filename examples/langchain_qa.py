"""A LangChain LCEL QA chain over a folder of multilingual long documents, answering with citations.

M3VectorStore.as_retriever(search_type="hybrid") (hybrid recall, every path scored) -> M3Reranker (cross-encoder) -> prompt with
numbered passages -> chat model. Offline it runs with langchain-core's fake chat model; plug a
real one in with ``--openai-model`` (needs ``langchain-openai`` and ``OPENAI_API_KEY``) or edit
``make_llm``.

Run: python examples/langchain_qa.py "What is hybrid search?" --docs examples/data \
        [--model BAAI/bge-m3] [--reranker BAAI/bge-reranker-v2-m3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from m3rag_langchain import M3Reranker, M3VectorStore

from m3rag import Collection, M3Encoder, Reranker, index_files

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer only from the numbered passages and cite them like [1]."),
        ("human", "Passages:\n{context}\n\nQuestion: {question}"),
    ]
)


def build_index(docs: Path, folder: Path, encoder: M3Encoder, chunk_tokens: int) -> Collection:
    """Chunk every document of ``docs`` and index the chunks, as ``m3rag index`` does."""
    col = Collection.create(folder, encoder=encoder)
    report = index_files(col, [docs], chunk_tokens=chunk_tokens)
    for problem in report.problems:
        print(f"skipped {problem}")
    return col


def make_llm(openai_model: str | None):  # type: ignore[no-untyped-def]
    if openai_model:
        from langchain_openai import ChatOpenAI  # pip install langchain-openai; OPENAI_API_KEY

        return ChatOpenAI(model=openai_model, temperature=0)
    return FakeListChatModel(responses=["Hybrid search combines dense and lexical matching [1]."])


def format_passages(docs: list) -> str:  # type: ignore[type-arg]
    return "\n\n".join(
        f"[{i}] ({d.metadata.get('parent_id', d.id)}) {d.page_content}"
        for i, d in enumerate(docs, 1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question")
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--model", default="BAAI/bge-m3")
    parser.add_argument("--reranker", default="BAAI/bge-reranker-v2-m3")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--openai-model", default=None)
    args = parser.parse_args()

    encoder = M3Encoder(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        col = build_index(args.docs, Path(tmp) / "index", encoder, args.chunk_tokens)
        # the LangChain way: the collection as a vector store, its hybrid retriever
        retriever = M3VectorStore(col).as_retriever(search_type="hybrid", search_kwargs={"k": 8})
        reranker = M3Reranker(reranker=Reranker(args.reranker), top_n=3)

        def retrieve_and_rerank(question: str) -> list:  # type: ignore[type-arg]
            return list(reranker.compress_documents(retriever.invoke(question), question))

        passages = RunnableLambda(retrieve_and_rerank)
        chain = (
            {"docs": passages, "question": RunnablePassthrough()}
            | RunnablePassthrough.assign(context=lambda x: format_passages(x["docs"]))
            | {
                "answer": PROMPT | make_llm(args.openai_model) | StrOutputParser(),
                "docs": lambda x: x["docs"],
            }
        )
        out = chain.invoke(args.question)
        print("answer:", out["answer"])
        for i, d in enumerate(out["docs"], 1):
            print(
                f"[{i}] {d.metadata['parent_id']}  relevance={d.metadata['relevance_score']:.3f}  "
                f"retrieval={d.metadata['retrieval_score']:.3f}  {d.page_content[:80]!r}"
            )
        col.close()


if __name__ == "__main__":
    main()
