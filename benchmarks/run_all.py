"""Run every benchmark against its peers, then write the benchmarks page and its plots.

Each area has its own script (they can be run alone); this one runs them one after another in
fresh processes, records what ran (commands, durations, package versions, the machine) in
``results/run_all.json`` and renders ``docs/benchmarks.md`` and ``docs/img/bench-*.png`` from
the JSON results with :mod:`report`.

* default: the sizes that fit in under 30 minutes on a 2-core machine (100k-passage index,
  10k and 100k end-to-end, SciFact BM25, encoder and reranker throughput, ingest and memory);
* ``--large``: also the 1M-passage runs (index, end-to-end), ColBERT at 100k passages in int8
  (20 GB on disk) and BGEM3Index at 100k passages: about 40 more minutes and 24 GB of memory;
* ``--quick``: every script in its ``--quick`` form (about two minutes; CI runs it to keep the
  scripts working). Its results go to ``*-quick.json`` and its page to
  ``benchmarks/results/quick/``, never over the full run's;
* ``--render-only``: redraw the page from the JSON already there.

Run: ``.venv/bin/python benchmarks/run_all.py [--quick | --large] [--only encoder,bm25]``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name, script arguments (the JSON lands in results/<name>.json, or <name>-quick.json)
STEPS: list[tuple[str, list[str]]] = [
    ("encoder", ["bench_encoder.py"]),
    ("reranker", ["bench_reranker.py"]),
    ("index", ["bench_index.py"]),
    ("maxsim-blocks", ["bench_maxsim_blocks.py"]),
    ("bm25", ["bench_bm25.py"]),
    ("bm25_analyzer", ["bench_bm25_analyzer.py"]),
    ("retriever", ["bench_retriever.py", "--sizes", "10000,100000"]),
    ("ingest", ["bench_ingest.py"]),
    ("serve", ["bench_serve.py"]),
    ("model-threads", ["bench_model_threads.py"]),
    ("serve-rerank", ["bench_serve_rerank.py"]),
]
LARGE: list[tuple[str, list[str]]] = [
    (
        "index-1m",
        [
            "bench_index.py",
            "--sizes",
            "100000,1000000",
            "--milvus",
            "",
            "--ann",
            "",
            "--colbert",
            "",
        ],
    ),
    (
        "index-colbert-100k",
        ["bench_index.py", "--sizes", "", "--milvus", "", "--ann", "", "--colbert", "100000:int8"],
    ),
    (
        "retriever-1m",
        ["bench_retriever.py", "--sizes", "1000000", "--milvus-max", "0", "--langchain-max", "0"],
    ),
    (
        "retriever-bgem3-100k",
        [
            "bench_retriever.py",
            *("--sizes", "100000", "--bgem3-max", "100000"),
            *("--milvus-max", "0", "--langchain-max", "0"),
        ],
    ),
]
PACKAGES = (
    "m3rag",
    "torch",
    "transformers",
    "numpy",
    "scipy",
    "tantivy",
    "usearch",
    "FlagEmbedding",
    "pymilvus",
    "milvus-lite",
    "llama-index-core",
    "llama-index-indices-managed-bge-m3",
    "langchain-core",
    "langchain-community",
    "langchain-classic",
    "bm25s",
    "rank-bm25",
    "pytrec-eval-terrier",
    "matplotlib",
)


def versions() -> dict[str, str]:
    """Installed versions of m3rag and every peer and tool the figures depend on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's description."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_step(name: str, argv: list[str], *, quick: bool) -> dict[str, Any]:
    """Run one script in a fresh interpreter; its JSON goes to ``results/<name>[-quick].json``."""
    out = RESULTS / (f"{name}-quick.json" if quick else f"{name}.json")
    cmd = [sys.executable, str(HERE / argv[0]), *argv[1:], "--out", str(out)]
    if quick:
        cmd.append("--quick")
    shown = " ".join(
        ["python", f"benchmarks/{argv[0]}", *(a if a else '""' for a in argv[1:])]
        + (["--quick"] if quick else [])
    )
    print(f"[run_all] {shown}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False)  # noqa: S603 - our own scripts, our interpreter
    seconds = time.perf_counter() - start
    print(f"[run_all] {name}: exit {proc.returncode} in {seconds:.0f} s", flush=True)
    return {"command": shown, "seconds": seconds, "returncode": proc.returncode, "out": out.name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every script's --quick form")
    mode.add_argument("--large", action="store_true", help="also the 1M-passage runs")
    parser.add_argument("--only", default="", help="comma-separated step names")
    parser.add_argument("--render-only", action="store_true", help="only redraw the page")
    args = parser.parse_args()

    steps = STEPS + (LARGE if args.large else [])
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {name for name, _ in STEPS + LARGE}
        if unknown:
            parser.error(f"unknown steps {sorted(unknown)}; use {[n for n, _ in STEPS + LARGE]}")
        steps = [s for s in STEPS + LARGE if s[0] in wanted]

    record_path = RESULTS / ("run_all-quick.json" if args.quick else "run_all.json")
    record: dict[str, Any] = {}
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
    failed = []
    if not args.render_only:
        record.setdefault("steps", {})
        record["versions"] = versions()
        record["cpu_model"] = cpu_model()
        for name, argv in steps:
            step = run_step(name, argv, quick=args.quick)
            step["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            record["steps"][name] = step
            if step["returncode"] != 0:
                failed.append(name)
            RESULTS.mkdir(parents=True, exist_ok=True)
            record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    sys.path.insert(0, str(HERE))
    import report

    page = (
        RESULTS / "quick" / "benchmarks.md"
        if args.quick
        else HERE.parent / "docs" / "benchmarks.md"
    )
    report.render(quick=args.quick, page=page)
    print(f"[run_all] wrote {page}", flush=True)
    if failed:
        print(f"[run_all] failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
