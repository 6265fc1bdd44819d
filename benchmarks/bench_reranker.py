"""Reranker throughput: m3rag.Reranker vs FlagEmbedding's FlagReranker, same checkpoint, same run.

Both sides score the same multilingual ``(query, passage)`` pairs (mixed lengths, some truncated
at ``max_length``) on a mid-size random cross-encoder in the bge-reranker-v2-m3 layout
(6 layers, hidden 384). Reported: median seconds over repeats, pairs/s and the ratio; parity is
asserted in the same run (``pairing="text"``, FlagEmbedding 1.4.2's own pairing on transformers
5: within 1e-5; bit-identical with reference batching).

Run: ``.venv/bin/python benchmarks/bench_reranker.py [--quick] [--out results.json]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, median_time, write_results

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "reranker.json")
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")  # keep the full run's file
    n_pairs = 32 if args.quick else args.pairs
    repeats = 1 if args.quick else args.repeats

    from FlagEmbedding import FlagReranker

    from m3rag import Reranker
    from m3rag.testing import build_reranker_checkpoint, multilingual_corpus

    tmp = tempfile.TemporaryDirectory(prefix="m3rag-bench-")
    ckpt = build_reranker_checkpoint(
        Path(tmp.name) / "mid-reranker",
        hidden_size=384,
        num_layers=6,
        num_heads=6,
        vocab_size=4000,
    )
    queries = multilingual_corpus(max(8, n_pairs // 10), seed=3, min_words=3, max_words=20)
    passages = multilingual_corpus(n_pairs, seed=4, min_words=10, max_words=400)
    pairs = [(queries[i % len(queries)], p) for i, p in enumerate(passages)]
    max_len = args.max_length

    reference = FlagReranker(str(ckpt), use_fp16=False, devices="cpu", max_length=max_len)
    ours = Reranker(ckpt, device="cpu", max_length=max_len, pairing="text")
    ours_ids = Reranker(ckpt, device="cpu", max_length=max_len)
    ours_refbatch = Reranker(
        ckpt, device="cpu", max_length=max_len, pairing="text", max_batch_tokens=None
    )
    fast = Reranker(ckpt, device="cpu", max_length=max_len, dtype="bfloat16")

    reference.compute_score(pairs[:8])
    for side in (ours, ours_ids, ours_refbatch, fast):
        side.compute_score(pairs[:8])

    t_ref, ref_scores = median_time(lambda: reference.compute_score(pairs), repeats)
    t_ours, got = median_time(lambda: ours.score(pairs), repeats)
    t_ids, _ = median_time(lambda: ours_ids.score(pairs), repeats)
    t_same, got_same = median_time(lambda: ours_refbatch.compute_score(pairs), repeats)
    t_fast, got_fast = median_time(lambda: fast.compute_score(pairs), repeats)

    want = np.array(ref_scores, np.float32)
    diff = float(np.abs(got.scores - want).max())
    if diff > 1e-5:
        msg = f"parity broken: max |diff| {diff:.2e}"
        raise AssertionError(msg)
    if not np.array_equal(got_same, want):
        msg = "reference batching is not bit-identical"
        raise AssertionError(msg)
    spearman = float(
        np.corrcoef(np.argsort(np.argsort(got_fast)), np.argsort(np.argsort(want)))[0, 1]
    )

    def row(name: str, seconds: float) -> dict[str, Any]:
        return {
            "name": name,
            "seconds": seconds,
            "pairs_per_s": n_pairs / seconds,
            "ratio_vs_flagreranker": t_ref / seconds,
        }

    results = {
        "benchmark": "reranker",
        "machine": machine(),
        "checkpoint": {"hidden": 384, "layers": 6, "heads": 6},
        "pairs": n_pairs,
        "truncated_pairs": int(got.truncated.sum()),
        "max_length": max_len,
        "repeats": repeats,
        "rows": [
            row("FlagEmbedding FlagReranker (fp32, batch 128)", t_ref),
            row("m3rag Reranker fp32, reference batching (bit-identical)", t_same),
            row("m3rag Reranker fp32, token-budget batching (default, pairing=text)", t_ours),
            row("m3rag Reranker fp32, token-budget batching, pairing=ids", t_ids),
            row("m3rag Reranker bf16 (fast path)", t_fast),
        ],
        "parity_max_abs": diff,
        "bf16_spearman_vs_fp32": spearman,
    }
    write_results(args.out, results)
    print(
        f"{n_pairs} pairs ({results['truncated_pairs']} truncated), max_length {max_len}, "
        f"median of {repeats}"
    )
    print("| side | s | pairs/s | vs FlagReranker |")
    print("|---|---:|---:|---:|")
    for r in results["rows"]:
        print(
            f"| {r['name']} | {r['seconds']:.2f} | {r['pairs_per_s']:.1f} | "
            f"{r['ratio_vs_flagreranker']:.2f}x |"
        )
    print(f"parity max |diff| {diff:.2e}; bf16 rank correlation {spearman:.4f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
