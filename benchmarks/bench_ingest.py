"""Ingest throughput and memory of m3rag against its peers, on bench_retriever's synthetic data.

Every system is measured in its own fresh Python process, so its peak memory is its own. In each
process, in this order: the system's modules are imported; the passages' embeddings are generated
(``bench_retriever.data``, 10,000 passages per seed ``0, 10000, 20000, ...``, the same vectors for
every system), together with everything the system takes as input (texts, ids, LlamaIndex nodes,
LangChain texts); the garbage is collected and the resident set is read (``baseline_rss_mb``);
the peak is reset; the ingest is timed; the peak is read (``peak_rss_mb``). No model runs on any
side: the embeddings are precomputed, and generating them is never timed.

Timed (``ingest_s``; ``setup_s`` is the part of it spent creating the empty store), from nothing
to the passages stored and searchable:

* m3rag: ``Collection.create`` (dense float16, sparse, and ColBERT int8 up to ``--colbert-max``,
  as bench_retriever's ``ours()``), then ``add`` + ``commit`` per 10,000-passage batch. Each
  commit writes the stores to disk, so the figure includes making the data durable.
  ``Collection.create`` imports torch (to look for the int8 scan kernel): that import is done
  before the baseline with the other modules (about 1 s and 190 MB; see ``import_s``).
* milvus-lite: ``MilvusClient`` on a new ``.db`` folder (its gRPC server starts in this
  process), ``create_collection`` with bench_retriever's schema (dense ``FLAT``/IP, sparse
  ``SPARSE_INVERTED_INDEX``/IP), ``insert`` in batches of 5,000 rows (building the row dicts,
  ``dense.tolist()`` included, is timed: it is the input ``insert`` takes), ``flush`` and
  ``load_collection``.
* LlamaIndex ``BGEM3Index(nodes=...)``, the constructor its users call, with the BGE-M3 model
  loaded before the baseline (a tiny random checkpoint) and its ``encode`` replaced by the
  precomputed outputs in FlagEmbedding's format (dense matrix, ``{str(token): float32}`` lexical
  weights, one ColBERT matrix per passage). Timed: the docstore insert and the index build. It
  keeps the encoder's outputs as they are, so those outputs (the whole index) are in its baseline;
  ``resident_after_mb`` shows what it holds, and ``memory_ratio_vs_bgem3index`` leaves it out. Its ``persist`` (a pickle) is timed apart
  (``persist_s``, ``persisted_mb``), not in ``ingest_s``.
* LangChain: ``BM25Retriever.from_texts`` (rank-bm25 over texts spelled from each passage's
  lexical token ids, as in bench_retriever) and ``InMemoryVectorStore.add_texts`` with an
  ``Embeddings`` that looks up each text's precomputed vector (a dict lookup and ``tolist()``,
  timed inside ``add_texts``, reported as ``embedding_lookup_s``). In memory only: no disk size.

Memory, in MB (2**20 bytes), from ``/proc/self/status``:

* ``baseline_rss_mb``: VmRSS after imports and data, just before the ingest;
* ``peak_rss_mb``: VmHWM after the ingest, the high-water mark having been reset at the baseline
  (``echo 5 > /proc/self/clear_refs``), so a transient peak of data generation does not count;
* ``peak_minus_baseline_mb``: what the system itself needed on top of its inputs;
* ``resident_after_mb``: VmRSS after the ingest with the inputs dropped (the system still open),
  minus VmRSS before the data was generated: what the system keeps. An upper bound: freed memory
  is not always handed back to the OS.

Also per system: ``import_s`` and ``imports_rss_mb`` (its modules, and for BGEM3Index its model
load, before any data), ``data_s`` (generating its inputs), none of them in ``ingest_s``.

``ru_maxrss`` (``getrusage``) is recorded as ``ru_maxrss_mb`` but not used: on Linux it carries
the spawning process's resident set over ``exec`` (measured: a child of a 2 GB parent reports
1.9 GB while its VmHWM is 9 MB), and this script's parent has torch imported. Resident memory
counts memory-mapped file pages that were touched (m3rag maps its stores): they are reclaimable
page cache, not heap.

Ratios per size: ``ingest_speedup_vs_<peer>`` = m3rag's ``ingest_per_s`` / the peer's;
``memory_ratio_vs_<peer>`` = the peer's ``peak_minus_baseline_mb`` / m3rag's (above 1: m3rag
needed less). A peer that fails (import error, out of memory, timeout) gets its error string.

Run: ``.venv/bin/python benchmarks/bench_ingest.py [--quick] [--sizes 10000,100000]``
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, write_results, zipf_probabilities
from bench_retriever import data, lexical_text, precomputed_embeddings

HERE = Path(__file__).resolve().parent
BATCH = 10_000
"""Passages per generated batch (bench_retriever's seeds) and per m3rag add + commit."""
MILVUS_BATCH = 5_000
RESULT = "RESULT "
"""Prefix of the child's result line on stdout (libraries may print too)."""
PEERS = ("milvus_lite", "bgem3index", "langchain")
SYSTEMS = ("m3rag", *PEERS)


# -- memory --------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``, ...) in MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    msg = f"/proc/self/status has no {field}"
    raise RuntimeError(msg)


def rss_mb() -> float:
    """The resident set now, in MB."""
    gc.collect()
    try:
        return _status_mb("VmRSS")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def reset_peak() -> bool:
    """Reset the resident-set high-water mark (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def folder_mb(path: Path) -> float:
    """Total size of the files under ``path``, in MB."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class Meter:
    """The memory and time figures of one ingest, read in the order the module docstring gives."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.import_s = time.perf_counter() - spec["started"]  # the system's modules
        self.before_data = rss_mb()

    def start(self) -> None:
        """Call with the inputs ready: reads the baseline, resets the peak, starts the clock."""
        self.baseline = rss_mb()
        self.peak_reset = reset_peak()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        """Call as soon as the ingest is done."""
        self.ingest_s = time.perf_counter() - self.t0
        self.peak = _status_mb("VmHWM")

    def result(self, n: int) -> dict[str, Any]:
        """The figures; call after dropping every reference to the inputs."""
        import resource

        return {
            "passages": n,
            "import_s": self.import_s,
            "imports_rss_mb": self.before_data,
            "ingest_s": self.ingest_s,
            "ingest_per_s": n / self.ingest_s,
            "baseline_rss_mb": self.baseline,
            "peak_rss_mb": self.peak,
            "peak_minus_baseline_mb": self.peak - self.baseline,
            "resident_after_mb": rss_mb() - self.before_data,
            "peak_reset": self.peak_reset,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


# -- the systems, each run in its own process ------------------------------------------------------


def batches(n: int, spec: dict[str, Any], *, colbert_tokens: int) -> list[Any]:
    """The ``n`` passages' embeddings as bench_retriever's 10,000-passage ``M3Output`` batches."""
    zipf_p = zipf_probabilities()
    return [
        data(
            min(BATCH, n - b),
            dim=spec["dim"],
            colbert_tokens=colbert_tokens,
            seed=b,
            zipf_p=zipf_p,
        )
        for b in range(0, n, BATCH)
    ]


def ingest_m3rag(spec: dict[str, Any]) -> dict[str, Any]:
    # Collection.create imports torch (to check for the int8 scan kernel) and tantivy; they are
    # imported here, before the baseline, as every system's modules are
    import tantivy  # noqa: F401
    import torch  # noqa: F401

    from m3rag import Collection

    n, folder = spec["n"], Path(spec["work"]) / "m3rag"
    with_colbert = n <= spec["colbert_max"]
    heads = ("dense", "sparse", "colbert") if with_colbert else ("dense", "sparse")
    meter = Meter(spec)
    t = time.perf_counter()
    outs = batches(n, spec, colbert_tokens=spec["colbert_tokens"] if with_colbert else 0)
    texts = [f"p{i}" for i in range(n)]
    ids = [str(i) for i in range(n)]
    data_s = time.perf_counter() - t

    meter.start()
    col = Collection.create(
        folder,
        heads=heads,
        dim=spec["dim"],
        colbert_dim=spec["dim"],
        dense_dtype="float16",
        colbert_dtype="int8",
    )
    setup_s = time.perf_counter() - meter.t0
    for j, out in enumerate(outs):
        b = j * BATCH
        col.add(texts[b : b + len(out)], ids=ids[b : b + len(out)], embeddings=out)
        col.commit()
    meter.stop()

    del outs, texts, ids
    result = meter.result(n)
    count = col.count()
    col.close()
    if count != n:
        msg = f"m3rag holds {count} passages, not {n}"
        raise RuntimeError(msg)
    return {
        **result,
        "setup_s": setup_s,
        "data_s": data_s,
        "heads": list(heads),
        "disk_mb": folder_mb(folder),
    }


def ingest_milvus_lite(spec: dict[str, Any]) -> dict[str, Any]:
    import milvus_lite.adapter.grpc.server  # noqa: F401 - loaded lazily by the first client
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import DataType, MilvusClient

    n, dim, db = spec["n"], spec["dim"], Path(spec["work"]) / "milvus.db"
    meter = Meter(spec)
    t = time.perf_counter()
    outs = batches(n, spec, colbert_tokens=0)  # the same dense and lexical vectors as m3rag's
    data_s = time.perf_counter() - t

    meter.start()
    client = MilvusClient(str(db))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    index = client.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection("bench", schema=schema, index_params=index)
    setup_s = time.perf_counter() - meter.t0
    for j, out in enumerate(outs):
        for off in range(0, len(out), MILVUS_BATCH):
            b = j * BATCH + off
            rows = [
                {"id": b + i, "dense": out.dense_vecs[off + i].tolist(), "sparse": lex}
                for i, lex in enumerate(out.lexical_weights[off : off + MILVUS_BATCH])
            ]
            client.insert("bench", rows)
    client.flush("bench")
    client.load_collection("bench")
    meter.stop()

    del outs, rows
    result = meter.result(n)
    count = client.get_collection_stats("bench")["row_count"]
    client.close()
    server_manager_instance.release_server(str(db))  # writes out and closes its files
    if count != n:
        msg = f"milvus-lite holds {count} rows, not {n}"
        raise RuntimeError(msg)
    return {**result, "setup_s": setup_s, "data_s": data_s, "disk_mb": folder_mb(db)}


def ingest_bgem3index(spec: dict[str, Any]) -> dict[str, Any]:
    import FlagEmbedding
    from llama_index.core.schema import TextNode
    from llama_index.indices.managed.bge_m3 import BGEM3Index

    n = spec["n"]
    # the model is loaded before the baseline; its encode hands back the precomputed outputs
    model = FlagEmbedding.BGEM3FlagModel(
        spec["ckpt"], pooling_method="cls", normalize_embeddings=True, use_fp16=False
    )
    meter = Meter(spec)
    t = time.perf_counter()
    outs = batches(n, spec, colbert_tokens=spec["colbert_tokens"])
    encoded = {  # FlagEmbedding's output format
        "dense_vecs": np.concatenate([o.dense_vecs for o in outs]),
        "lexical_weights": [
            {str(k): np.float32(v) for k, v in d.items()} for o in outs for d in o.lexical_weights
        ],
        "colbert_vecs": [m for o in outs for m in o.colbert_vecs],
    }
    nodes = [TextNode(id_=str(i), text=f"p{i}") for i in range(n)]
    data_s = time.perf_counter() - t
    calls: list[int] = []

    def encode(sentences: list[str], *, _out: dict[str, Any] = encoded, **_: Any) -> dict[str, Any]:
        calls.append(len(sentences))
        return _out

    model.encode = encode
    original = FlagEmbedding.BGEM3FlagModel
    FlagEmbedding.BGEM3FlagModel = lambda *_a, **_kw: model  # BGEM3Index imports it per call
    try:
        meter.start()
        index = BGEM3Index(
            nodes=nodes, model_name=spec["ckpt"], weights_for_different_modes=[0.4, 0.2, 0.4]
        )
        meter.stop()
    finally:
        FlagEmbedding.BGEM3FlagModel = original

    if calls != [n]:
        msg = f"BGEM3Index encoded {calls} passages, not one call of {n}"
        raise RuntimeError(msg)
    del outs, encoded, nodes
    result = meter.result(n)
    folder = Path(spec["work"]) / "bgem3index"
    t = time.perf_counter()
    index.persist(str(folder))
    persist_s = time.perf_counter() - t
    return {
        **result,
        "setup_s": None,  # there is no empty index to create first
        "data_s": data_s,
        "persist_s": persist_s,
        "persisted_mb": folder_mb(folder),
    }


def ingest_langchain(spec: dict[str, Any]) -> dict[str, Any]:
    import warnings

    from langchain_core.vectorstores import InMemoryVectorStore

    with warnings.catch_warnings():  # langchain-community announces its sunset on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.retrievers import BM25Retriever
    import rank_bm25  # noqa: F401 - BM25Retriever imports it on first use

    n = spec["n"]
    meter = Meter(spec)
    t = time.perf_counter()
    outs = batches(n, spec, colbert_tokens=0)
    texts = [lexical_text(d) for o in outs for d in o.lexical_weights]
    embeddings = precomputed_embeddings(texts, np.concatenate([o.dense_vecs for o in outs]))
    ids = [str(i) for i in range(n)]
    data_s = time.perf_counter() - t

    meter.start()
    bm25 = BM25Retriever.from_texts(texts, ids=ids, k=100)
    store = InMemoryVectorStore(embeddings)
    store.add_texts(texts, ids=ids)
    meter.stop()

    del outs, texts, ids
    # the lookup table and the vectors it reads are the benchmark's inputs, not LangChain's
    embeddings.rows, embeddings.vectors = {}, np.empty((0, spec["dim"]), np.float32)
    result = meter.result(n)
    if len(store.store) != n or len(bm25.docs) != n:
        msg = f"LangChain holds {len(store.store)} vectors and {len(bm25.docs)} texts, not {n}"
        raise RuntimeError(msg)
    return {
        **result,
        "setup_s": None,  # there is no empty index to create first
        "data_s": data_s,
        "embedding_lookup_s": embeddings.seconds,
    }


INGEST: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "m3rag": ingest_m3rag,
    "milvus_lite": ingest_milvus_lite,
    "bgem3index": ingest_bgem3index,
    "langchain": ingest_langchain,
}


def child(spec: dict[str, Any]) -> None:
    result = INGEST[spec["system"]]({**spec, "started": time.perf_counter()})
    print(RESULT + json.dumps(result), flush=True)


# -- the parent ------------------------------------------------------------------------------------


def run_system(system: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One system's figures from a fresh process, or ``{"error": ...}`` if it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        res = subprocess.run(  # noqa: S603 - our own script and interpreter
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in res.stdout.splitlines() if line.startswith(RESULT)]
    if res.returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT) :])
    if res.returncode < 0:
        name = signal.Signals(-res.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return {"error": f"killed by {name}{hint}"}
    tail = [line for line in res.stderr.splitlines() if line.strip()]
    return {"error": tail[-1] if tail else f"exit status {res.returncode}, no result"}


def ratios(row: dict[str, Any]) -> None:
    ours = row.get("m3rag", {})
    for peer in PEERS:
        theirs = row.get(peer, {})
        if "ingest_per_s" in ours and "ingest_per_s" in theirs:
            row[f"ingest_speedup_vs_{peer}"] = ours["ingest_per_s"] / theirs["ingest_per_s"]
            mine = ours["peak_minus_baseline_mb"]
            row[f"memory_ratio_vs_{peer}"] = (
                theirs["peak_minus_baseline_mb"] / mine if mine > 0 else None
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--colbert-tokens", type=int, default=16)
    parser.add_argument(
        "--colbert-max", type=int, default=100_000, help="largest size m3rag stores ColBERT at"
    )
    parser.add_argument("--milvus-max", type=int, default=100_000)
    parser.add_argument(
        "--bgem3-max",
        type=int,
        default=10_000,
        help="largest size for BGEM3Index (it holds every ColBERT matrix in a Python list)",
    )
    parser.add_argument(
        "--langchain-max",
        type=int,
        default=100_000,
        help="largest size for LangChain (it keeps vectors as Python lists)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per system and size")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}-quick.json")  # keep the full run's file
    if args.quick:
        args.sizes, args.dim = "2000", 64
        args.milvus_max = args.bgem3_max = args.langchain_max = 2000
    systems = [s for s in args.systems.split(",") if s]
    if args.colbert_tokens < 1:
        parser.error(f"--colbert-tokens must be at least 1, got {args.colbert_tokens}")
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    caps = {
        "m3rag": None,
        "milvus_lite": ("--milvus-max", args.milvus_max),
        "bgem3index": ("--bgem3-max", args.bgem3_max),
        "langchain": ("--langchain-max", args.langchain_max),
    }
    work = Path(tempfile.mkdtemp(prefix="m3rag-bench-ingest-"))
    results: dict[str, Any] = {
        "benchmark": "ingest",
        "command": " ".join(["benchmarks/bench_ingest.py", *sys.argv[1:]]),
        "machine": machine(),
        "dim": args.dim,
        "colbert_tokens": args.colbert_tokens,
        "colbert_max": args.colbert_max,
        "memory_unit": "MiB (2**20 bytes)",
        "rows": [],
    }
    ckpt: str | None = None
    try:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            row: dict[str, Any] = {"passages": n}
            for system in systems:
                cap = caps[system]
                if cap is not None and n > cap[1]:
                    row[system] = {"skipped": f"{n} passages > {cap[0]} {cap[1]}"}
                    continue
                if system == "bgem3index" and ckpt is None:
                    try:
                        from m3rag.testing import build_m3_checkpoint

                        ckpt = str(build_m3_checkpoint(work / "tiny"))
                    except Exception as exc:  # its model cannot be built: record why, go on
                        row[system] = {"error": f"tiny checkpoint: {type(exc).__name__}: {exc}"}
                        continue
                folder = work / f"{system}-{n}"
                folder.mkdir()
                spec = {
                    "system": system,
                    "n": n,
                    "dim": args.dim,
                    "colbert_tokens": args.colbert_tokens,
                    "colbert_max": args.colbert_max,
                    "work": str(folder),
                    "ckpt": ckpt,
                }
                row[system] = run_system(system, spec, args.timeout)
                shutil.rmtree(folder, ignore_errors=True)
                print(system, n, json.dumps(row[system]), flush=True)
            ratios(row)
            results["rows"].append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
