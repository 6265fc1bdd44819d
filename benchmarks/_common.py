"""Helpers shared by the benchmark scripts: timing, machine description, synthetic data."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 250_002
"""BGE-M3's vocabulary size."""


def write_results(path: Path, results: Any) -> None:
    """Write a benchmark's results as indented JSON, making its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def percentiles(times: list[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds (linear interpolation between samples, as numpy does)."""
    ms = np.asarray(times, dtype=np.float64) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "n": len(ms),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def colbert_mats(n: int, *, dim: int, rows: int, seed: int) -> list[np.ndarray]:
    """``n`` ColBERT matrices of unit rows, about ``rows`` each (normal, sd ``rows / 4``)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = rng.standard_normal((max(1, int(rng.normal(rows, rows / 4))), dim), dtype=np.float32)
        out.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    return out


def zipf_probabilities() -> np.ndarray:
    """Zipf(1) over the non-special token ids."""
    ranks = np.arange(1, VOCAB - 3, dtype=np.float64)
    p = 1.0 / ranks
    return p / p.sum()


def zipf_lexical(
    n: int, *, tokens: int, rng: np.random.Generator, p: np.ndarray
) -> list[dict[int, float]]:
    """``n`` lexical weight dicts: Poisson(``tokens``) Zipf-drawn ids, weights in (0, 0.5]."""
    counts = np.maximum(1, rng.poisson(tokens, size=n))
    ids = rng.choice(VOCAB - 4, size=int(counts.sum()), p=p) + 4
    weights = rng.uniform(0.001, 0.5, size=len(ids)).astype(np.float32)
    out, start = [], 0
    for c in counts.tolist():
        out.append(
            dict(
                zip(
                    ids[start : start + c].tolist(),
                    weights[start : start + c].tolist(),
                    strict=True,
                )
            )
        )
        start += c
    return out


def warm_page_cache(folder: Path | str) -> float:
    """Read every file under ``folder`` once (plain reads, nothing mapped); returns seconds.

    Timed queries then run with the collection in the page cache, as on a server whose
    memory holds it, rather than against whatever the kernel reclaimed while the data was
    being built (this machine reclaims idle page cache proactively). Plain reads do not
    count in the process's resident memory.
    """
    start = time.perf_counter()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                while fh.read(1 << 24):
                    pass
    return time.perf_counter() - start
