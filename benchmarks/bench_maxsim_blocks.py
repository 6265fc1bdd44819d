"""ColBERT MaxSim: how many token rows to gather, widen and multiply at a time.

``ColbertStore.maxsim`` walks the candidates' token rows a block at a time: gathered from the
memory map into a reused buffer, widened to the compute type, multiplied by the query. The block
is sized in bytes of float32 rows (``m3rag.index.stores._MAXSIM_BLOCK_BYTES``, 4 MiB: 1024 rows
at BGE-M3's 1024 dimensions); before, it was 8192 rows at every width. This script times
``Collection.colbert_scores`` at each width and storage type with the default and other budgets,
and with the old 8192 rows, on two candidate shapes:

* ``passages``: 100 candidates of ~200 token rows (``bench_index.py``'s ColBERT part: a passage
  of m3rag's default 512-token chunks);
* ``short``: 200 candidates of ~16 rows (``bench_retriever.py``'s synthetic passages).

The settings take turns within each round (the order rotates every round), on the same random
candidates, each set read once before it is timed; a busy or throttled machine slows a round for
all of them alike. Each cell runs with one torch thread and with one per core (``--threads``):
on a shared virtual machine whose second core comes and goes, two-thread timings swing by 2x
between minutes (each of the product's parallel steps waits for the slower thread), while one
thread's are steady, and show the cache effect alone. The float32 scores are checked to agree
across block sizes (to 1e-5: a block boundary may change the order of the product's sums).

Run: ``.venv/bin/python benchmarks/bench_maxsim_blocks.py [--quick]`` (about a minute on 2
cores; ``--stored 100`` stores 100 passages per candidate, bench_index.py's 10,000).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import colbert_mats, machine, write_results

HERE = Path(__file__).resolve().parent
OLD_ROWS = 8192
MIB = 1 << 20


def settings(dim: int, budgets_mib: list[int]) -> dict[str, int]:
    """Label -> block budget in bytes of float32 rows, the old fixed 8192 rows last."""
    from m3rag.index import stores

    out = {}
    for mib in budgets_mib:
        label = f"{mib} MiB" + (" (default)" if mib * MIB == stores._MAXSIM_BLOCK_BYTES else "")
        out[label] = mib * MIB
    out[f"{OLD_ROWS} rows (before)"] = OLD_ROWS * 4 * dim
    return out


def measure(
    col: Any, *, dim: int, candidates: int, n: int, rounds: int, budgets: dict[str, int]
) -> dict[str, Any]:
    from m3rag.index import stores

    q = colbert_mats(1, dim=dim, rows=32, seed=7)[0]
    rng = np.random.default_rng(0)
    labels = list(budgets)
    times: dict[str, dict[str, list[float]]] = {
        precision: {label: [] for label in labels} for precision in ("float32", "bfloat16")
    }
    default = stores._MAXSIM_BLOCK_BYTES
    rows_per_block = {}
    drift = 0.0
    try:
        for label, budget in budgets.items():
            stores._MAXSIM_BLOCK_BYTES = budget
            rows_per_block[label] = stores.maxsim_block_rows(dim)
        for r in range(rounds + 1):
            keys = rng.choice(n, size=candidates, replace=False)
            col.colbert_scores(q, keys)  # the rows into the page cache, the buffers sized
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            exact = None
            for label in order:
                stores._MAXSIM_BLOCK_BYTES = budgets[label]
                for precision, spent in times.items():
                    t = time.perf_counter()
                    scores = col.colbert_scores(q, keys, precision=precision)
                    if r:  # the first round warms every setting up
                        spent[label].append(time.perf_counter() - t)
                    if precision == "float32":
                        # a block boundary may change the product's kernel and so its sums'
                        # order: equal up to float32 rounding, not bit for bit
                        exact = scores if exact is None else exact
                        drift = max(drift, float(np.abs(scores - exact).max()))
    finally:
        stores._MAXSIM_BLOCK_BYTES = default
    if drift > 1e-5:
        msg = f"float32 scores moved by {drift:.2g} between block sizes"
        raise AssertionError(msg)
    p50 = {
        precision: {label: statistics.median(ts) * 1000 for label, ts in by.items()}
        for precision, by in times.items()
    }
    before = labels[-1]
    chosen = next((label for label in labels if "default" in label), None)
    return {
        "p50_ms": p50,
        "rows_per_block": rows_per_block,
        "float32_max_abs_difference": drift,
        "speedup_default_vs_before": (
            {p: by[before] / by[chosen] for p, by in p50.items()} if chosen else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dims", default="1024,384", help="ColBERT widths")
    parser.add_argument("--dtypes", default="float16,int8", help="ColBERT storage types")
    parser.add_argument("--budgets", default="1,2,4,8,16", help="block budgets, MiB")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--stored", type=int, default=5, help="passages stored per candidate (default 5)"
    )
    parser.add_argument("--shapes", default="passages,short", help="candidate shapes to time")
    parser.add_argument(
        "--threads",
        default="1,all",
        help="torch threads to time with, comma-separated ('all': every core)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "maxsim-blocks.json")
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")
    if args.quick:
        args.dims, args.dtypes, args.rounds = "256", "float16", 3

    import torch

    from m3rag import Collection, M3Output

    cores = os.cpu_count() or 1
    threads = [cores if t == "all" else int(t) for t in args.threads.split(",")]

    shapes = {"passages": (100, 200), "short": (200, 16)}  # candidates, rows per passage
    budgets_mib = [int(b) for b in args.budgets.split(",")]
    results: dict[str, Any] = {
        "benchmark": "maxsim-blocks",
        "machine": machine(),
        "rounds": args.rounds,
        "query_rows": 32,
        "shapes": {k: {"candidates": c, "rows": r} for k, (c, r) in shapes.items()},
        "cells": [],
    }
    work = Path(tempfile.mkdtemp(prefix="m3rag-bench-maxsim-"))
    try:
        for dim in (int(d) for d in args.dims.split(",")):
            for dtype in args.dtypes.split(","):
                for shape, (candidates, rows) in shapes.items():
                    if shape not in args.shapes.split(","):
                        continue
                    n = args.stored * candidates
                    folder = work / f"{dim}-{dtype}-{shape}"
                    col = Collection.create(
                        folder, heads=("colbert",), colbert_dim=dim, colbert_dtype=dtype
                    )
                    mats = colbert_mats(n, dim=dim, rows=rows, seed=dim)
                    col.add(
                        [f"p{i}" for i in range(n)],
                        ids=[str(i) for i in range(n)],
                        embeddings=M3Output.build(colbert_vecs=mats),
                    )
                    col.commit()
                    for count in threads:
                        torch.set_num_threads(count)
                        cell = measure(
                            col,
                            dim=dim,
                            candidates=candidates,
                            n=n,
                            rounds=args.rounds,
                            budgets=settings(dim, budgets_mib),
                        )
                        cell = {
                            "dim": dim,
                            "dtype": dtype,
                            "shape": shape,
                            "torch_threads": count,
                            **cell,
                        }
                        results["cells"].append(cell)
                        print(json.dumps(cell))
                    torch.set_num_threads(cores)
                    col.close()
                    shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
