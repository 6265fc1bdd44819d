"""Model threads in-process: one thread on every core against N threads side by side.

What ``m3rag serve --model-threads`` bets on, measured without the server, on a checkpoint of
BGE-M3's own shape (24 layers, hidden 1024, 16 heads; random weights, the test tokenizer), which
``bench_serve.py`` cannot load on a CPU in reasonable time: random groups of ``--group`` texts
(what one model thread gathers at 32 clients), encoded

* one group after another on one worker thread with every core (``--model-threads 1``), and
* by ``--threads`` worker threads at once, each on its share of the cores, sharing one copy of
  the model (the replicas ``m3rag serve`` builds: ``m3rag.cli._serve.in_process_models``).

Both models cut their passes by cost (``batch_overhead="auto"``, measured as the server
measures it), with ``OMP_WAIT_POLICY=PASSIVE`` as ``m3rag serve`` sets it. The two take turns
for ``--rounds`` rounds; the best round of each counts (a busy machine only slows a round).

Run: ``.venv/bin/python benchmarks/bench_model_threads.py [--size m3] [--texts 64]``
(about five minutes on 2 cores at BGE-M3's shape).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import machine, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def on_threads(jobs: list[Any], workers: list[Any], run: Any) -> float:
    """Seconds for ``workers`` threads (one per worker) to ``run(worker, job)`` every job,
    each taking the next job as it comes free."""
    todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for job in jobs:
        todo.put(job)
    ready = threading.Barrier(len(workers) + 1)
    errors: list[BaseException] = []

    def work(worker: Any) -> None:
        ready.wait()
        try:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                run(worker, job)
        except BaseException as exc:  # reported below, not lost on the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="m3", help="the checkpoint: tiny, mid or m3")
    parser.add_argument("--texts", type=int, default=64, help="texts in all")
    parser.add_argument("--group", type=int, default=16, help="texts per group (per call)")
    parser.add_argument("--threads", type=int, default=2, help="model threads side by side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="mid checkpoint, 32 texts")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "model-threads.json")
    args = parser.parse_args()
    if args.quick:
        args.size, args.texts = "mid", 32
        if args.out == parser.get_default("out"):
            args.out = args.out.with_name("model-threads-quick.json")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as m3rag serve, before torch loads
    sys.path[:0] = [str(ROOT)]

    import torch
    from bench_serve import SIZES

    from m3rag import M3Encoder
    from m3rag._torchutil import available_cores
    from m3rag.cli._serve import in_process_models
    from m3rag.testing import build_m3_checkpoint, multilingual_corpus

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="m3rag-bench-threads-")
    ckpt = build_m3_checkpoint(Path(tmp.name) / "m3", vocab_size=4000, **SIZES[args.size])
    texts = multilingual_corpus(args.texts, seed=11, min_words=5, max_words=120)
    groups = [texts[i : i + args.group] for i in range(0, len(texts), args.group)]

    def encode(model: Any, group: list[str]) -> None:
        model.encode_corpus(group, dense=True, sparse=True, colbert=True)

    one = in_process_models(M3Encoder(ckpt, device="cpu"), 2048, "auto", 1)
    many = in_process_models(M3Encoder(ckpt, device="cpu"), 2048, "auto", args.threads)

    def side_by_side(replica: Any, group: list[str]) -> None:
        replica.use_threads(replica.torch_threads)  # its share, as the batcher sets it
        encode(replica, group)

    for warm in (one, many):  # each thread's first pass, outside the clock
        on_threads(groups[: len(warm)], warm, side_by_side if len(warm) > 1 else encode)
    rounds: dict[str, list[float]] = {"one_thread": [], "side_by_side": []}
    for _ in range(args.rounds):
        seconds = on_threads(groups, one, encode)
        rounds["one_thread"].append(len(texts) / seconds)
        seconds = on_threads(groups, many, side_by_side)
        rounds["side_by_side"].append(len(texts) / seconds)
        print(
            f"one thread: {rounds['one_thread'][-1]:.2f} texts/s; {args.threads} threads side by "
            f"side: {rounds['side_by_side'][-1]:.2f} texts/s",
            flush=True,
        )
    best = {k: max(v) for k, v in rounds.items()}
    results = {
        "benchmark": "model-threads",
        "machine": machine(),
        "checkpoint": {"size": args.size, **SIZES[args.size]},
        "cores": available_cores(),
        "texts": len(texts),
        "texts_per_group": args.group,
        "threads": args.threads,
        "torch_threads_each": [r.torch_threads for r in many],
        "batch_overhead": {"one_thread": one[0].batch_overhead, "share": many[0].batch_overhead},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "rounds_texts_per_s": rounds,
        "best_texts_per_s": best,
        "ratio": best["side_by_side"] / best["one_thread"],
        "load_average": list(os.getloadavg()),
    }
    print(f"best: {best['side_by_side'] / best['one_thread']:.2f}x side by side")
    write_results(args.out, results)
    tmp.cleanup()


if __name__ == "__main__":
    main()
