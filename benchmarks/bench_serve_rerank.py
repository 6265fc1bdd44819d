"""`m3rag serve`'s ``/rerank`` under load: shared reranker batches vs a plain per-request endpoint.

``bench_serve.py`` loads no reranker; this script measures the server's second model. A load
generator (the one ``bench_serve.py`` uses: asyncio + httpx, loopback only, bounded in requests
and seconds) sends ``/rerank`` requests in text-embeddings-inference's shape -- one query and
``--passages`` passages each, what a retriever hands the reranker -- at 1, 8 and 32 concurrent
clients, against:

* ``m3rag serve --reranker`` with its defaults: the reranker's batcher packs the pairs of
  concurrent requests into shared ``Reranker.score`` calls, cut by cost (``--batch-overhead
  auto``), and on a CPU of 2 cores or more two model threads run batches side by side on one
  in-process copy of the reranker (``--model-threads auto``);
* the same with ``--model-threads 1`` and with ``--model-workers 2`` (two copies of the reranker
  in child processes), where chosen;
* a plain endpoint: the same reranker behind FastAPI, each request scored on its own in a worker
  thread (``asyncio.to_thread``), no batching -- what a hand-written wrapper does.

Also measured in the same run, in-process on a worker thread (as the server runs its model):
one ``Reranker.score`` call on every pair of every request (the throughput ceiling) and one call
per request (the latency floor).

The cross-encoder is random, in the bge-reranker-v2-m3 layout: ``--size mid`` (6 layers, hidden
384; the CPU default, as ``bench_reranker.py``), ``--size m3`` (v2-m3's own shape, 24 layers,
hidden 1024; for a GPU) or ``--size tiny`` (the tests'; ``--quick``'s default, which only keeps
the script working). The server's encoder is the tiny checkpoint: ``/rerank`` never touches it.

The same three figures as issue #17's ``/embed_all`` targets are reported for ``/rerank`` (32
clients against 1, 32 clients against offline, p95 at 1 client against the in-process call);
the issue sets no target for ``/rerank``, so they are figures, not verdicts.

Run: ``.venv/bin/python benchmarks/bench_serve_rerank.py [--quick] [--out results.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import machine, percentiles, write_results
from bench_serve import (
    CONCURRENCY,
    FORWARD_TOKENS,
    SIZES,
    chosen_servers,
    in_worker_thread,
    load_options,
    offline_and_per_call,
    run_cell,
    server_stack,
    start_server,
)

HERE = Path(__file__).resolve().parent
SERVERS = {
    "batched": "m3rag serve --reranker (shared batches)",
    "one-thread": "m3rag serve --reranker --model-threads 1",
    "model-workers": "m3rag serve --reranker --model-workers 2",
    "plain": "plain per-request endpoint",
}


def plain_server(reranker_path: str, port: int, device: str, batch_tokens: int) -> None:
    """The same reranker behind FastAPI, one ``score`` call per request (no batching)."""
    import uvicorn
    from fastapi import FastAPI

    from m3rag import Reranker
    from m3rag.rerank.cross_encoder import rank_passages

    reranker = Reranker(reranker_path, device=device, max_batch_tokens=batch_tokens)
    app = FastAPI()

    @app.post("/rerank")
    async def rerank(body: dict[str, Any]) -> list[dict[str, Any]]:
        query, texts = body["query"], body["texts"]
        scores = await asyncio.to_thread(reranker.score, [(query, t) for t in texts])
        ranked = rank_passages(query, texts, scores, normalize=not body.get("raw_scores", False))
        return [{"index": r.index, "score": r.score} for r in ranked]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def targets(results: dict[str, Any], server: str) -> dict[str, float]:
    """The three figures of issue #17's ``/embed_all`` targets, for one server's ``/rerank``."""
    cells = results["servers"][server]
    one, many = cells[0], cells[-1]
    return {
        "x32_vs_1_client": many["rps"] / one["rps"],
        "x32_vs_offline": many["rps"] / results["offline"]["requests_per_s"],
        "p95_1_client_vs_in_process": one["p95_ms"] / results["in_process_call"]["p95_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    load_options(parser, HERE / "results" / "serve-rerank.json", SERVERS)
    parser.add_argument("--passages", type=int, default=8, help="passages per request")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="the reranker (default mid; tiny with --quick)",
    )
    parser.add_argument("--plain-server", nargs=4, metavar=("RERANKER", "PORT", "DEVICE", "TOKENS"))
    args = parser.parse_args()
    chosen = chosen_servers(parser, args, SERVERS)
    if args.passages < 1:
        parser.error("--passages must be at least 1")
    if args.plain_server:
        path, port, device, tokens = args.plain_server
        plain_server(path, int(port), device, int(tokens))
        return
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")
    args.size = args.size or ("tiny" if args.quick else "mid")
    n_requests = 16 if args.quick else args.requests
    budget = 10.0 if args.quick else args.budget

    import torch

    from m3rag import Reranker
    from m3rag.serve.threads import auto_model_threads
    from m3rag.testing import build_m3_checkpoint, build_reranker_checkpoint, multilingual_corpus

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="m3rag-bench-serve-rerank-")
    folder = Path(tmp.name)
    encoder_ckpt = build_m3_checkpoint(folder / "encoder", vocab_size=4000, **SIZES["tiny"])
    reranker_ckpt = build_reranker_checkpoint(
        folder / "reranker", vocab_size=4000, **SIZES[args.size]
    )
    forward_tokens = args.max_batch_tokens or FORWARD_TOKENS[args.device]
    queries = multilingual_corpus(n_requests, seed=21, min_words=3, max_words=12)
    passages = multilingual_corpus(n_requests * args.passages, seed=22, min_words=10, max_words=120)
    bodies = [
        # truncate: text-embeddings-inference refuses an over-long pair unless asked (413); the
        # plain endpoint truncates as Reranker.score does
        {
            "query": q,
            "texts": passages[i * args.passages : (i + 1) * args.passages],
            "truncate": True,
        }
        for i, q in enumerate(queries)
    ]
    requests = [[(b["query"], t) for t in b["texts"]] for b in bodies]
    all_pairs = [pair for pairs in requests for pair in pairs]

    reranker = Reranker(reranker_ckpt, device=args.device, max_batch_tokens=forward_tokens)

    in_worker_thread(functools.partial(reranker.score, requests[0]))  # warm-up
    offline_s, per_call = in_worker_thread(
        functools.partial(offline_and_per_call, reranker.score, all_pairs, requests)
    )
    results: dict[str, Any] = {
        "benchmark": "serve-rerank",
        "machine": machine(),
        "checkpoint": SIZES[args.size],
        "size": args.size,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "dtype": str(reranker.dtype).removeprefix("torch."),
        "forward_tokens": forward_tokens,
        "max_wait_ms": args.max_wait_ms,
        "model_threads": auto_model_threads(args.device),
        "load_procs": args.load_procs,
        "passages_per_request": args.passages,
        "server_stack": server_stack(),
        "requests_per_cell": n_requests,
        "budget_s": budget,
        "offline": {
            "pairs": len(all_pairs),
            "seconds": offline_s,
            "pairs_per_s": len(all_pairs) / offline_s,
            "requests_per_s": n_requests / offline_s,
        },
        "in_process_call": percentiles(per_call),
        # the same requests one call each, back to back: what batching has to beat
        "one_by_one_requests_per_s": len(per_call) / sum(per_call),
        "servers": {},
    }
    print(
        f"offline score: {results['offline']['pairs_per_s']:.1f} pairs/s "
        f"({results['offline']['requests_per_s']:.1f} requests of {args.passages}); one call per "
        f"request: {results['one_by_one_requests_per_s']:.1f} requests/s, p50 "
        f"{results['in_process_call']['p50_ms']:.1f} ms",
        flush=True,
    )
    del reranker
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the servers load their own copies
    args.out.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    serve = [
        *(py, "-m", "m3rag", "serve", "--model", str(encoder_ckpt)),
        *("--reranker", str(reranker_ckpt), "--device", args.device),
        *("--max-wait-ms", str(args.max_wait_ms), "--max-batch-tokens", str(forward_tokens)),
    ]
    commands = {
        "batched": serve,
        "one-thread": [*serve, "--model-threads", "1"],
        "model-workers": [*serve, "--model-workers", "2"],
        "plain": [py, str(Path(__file__).resolve()), "--plain-server", str(reranker_ckpt)],
    }

    for key in (k for k in SERVERS if k in chosen):
        name, cmd = SERVERS[key], commands[key]
        child, url = start_server(cmd, args.device, forward_tokens)
        try:
            cells: list[dict[str, Any]] = []
            for clients in CONCURRENCY:
                batcher = ("m3rag_rerank_batch", "pairs") if "serve" in cmd else None
                cell, extra = run_cell(
                    url, "/rerank", bodies, clients, budget, args.load_procs, child.pid, batcher
                )
                cell["pairs_per_s"] = cell["rps"] * args.passages
                cells.append(cell)
                results["servers"][name] = cells  # partial results survive a timeout
                write_results(args.out, results)
                print(
                    f"{name:42s} {clients:3d} clients: {cell['rps']:6.1f} req/s "
                    f"({cell['pairs_per_s']:6.1f} pairs/s) p50 {cell['p50_ms']:7.1f} ms "
                    f"p95 {cell['p95_ms']:7.1f} ms ({cell['requests']} ok, "
                    f"{cell['errors']} errors{extra})",
                    flush=True,
                )
        finally:
            child.terminate()
            child.wait(30)

    results["load_average"] = list(os.getloadavg())  # the machine may be shared: say how busy
    results["figures"] = {
        key: targets(results, SERVERS[key])
        for key in ("batched", "model-workers")
        if SERVERS[key] in results["servers"]
    }
    for key, figures in results["figures"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
        print(f"{SERVERS[key]}: {shown}")
    write_results(args.out, results)
    tmp.cleanup()


if __name__ == "__main__":
    main()
