"""Encode a few multilingual texts with BGE-M3 and show the three heads and their scores.

Run: python examples/encode.py [--model BAAI/bge-m3 | /path/to/checkpoint]
"""

from __future__ import annotations

import argparse

from m3rag import M3Encoder

QUERIES = ["What is BGE M3?", "北京是哪个国家的首都？"]
PASSAGES = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and "
    "multi-vector interaction.",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "BM25 is a bag-of-words retrieval function that ranks documents by the query terms "
    "they contain.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="BAAI/bge-m3", help="hub id or local folder")
    args = parser.parse_args()

    encoder = M3Encoder(args.model)
    print(encoder)
    queries = encoder.encode_queries(QUERIES)
    passages = encoder.encode_corpus(PASSAGES)
    print(queries, passages, sep="\n")
    if queries.lexical_weights is not None:
        top = sorted(queries.lexical_weights[0].items(), key=lambda kv: -kv[1])[:5]
        print(
            "top lexical weights of query 0:",
            {encoder.tokenizer.decode([t]): round(w, 4) for t, w in top},
        )
    pairs = [(q, p) for q in QUERIES for p in PASSAGES]
    if "sparse" in encoder.heads:
        scores = encoder.compute_score(pairs, weights=(0.4, 0.2, 0.4))
        for (q, p), d, s, c, all3 in zip(
            pairs,
            scores.dense,
            scores.sparse,
            scores.colbert,
            scores["colbert+sparse+dense"],
            strict=False,
        ):
            print(
                f"{q[:24]:<26}{p[:30]:<32} dense={d:.3f} sparse={s:.3f} colbert={c:.3f} "
                f"all={all3:.3f}"
            )
    else:
        sims = queries.dense_vecs @ passages.dense_vecs.T
        for i, q in enumerate(QUERIES):
            print(q, [round(float(x), 3) for x in sims[i]])


if __name__ == "__main__":
    main()
