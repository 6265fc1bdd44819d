"""Render the benchmarks page (markdown) and its plots (PNG) from ``results/*.json``.

Every number on the page is read from a results file written by a benchmark script; nothing is
typed in by hand. Sections whose results file is missing say so and how to produce it.

Run: ``.venv/bin/python benchmarks/report.py [--quick]`` (``run_all.py`` calls it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from run_all import STEPS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

Json = dict[str, Any]


# -- formatting ---------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    """Milliseconds with sensible precision."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x >= 100:
        return f"{x:,.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    if x >= 1:
        return f"{x:.2f} ms"
    return f"{x:.3f} ms"


def num(x: float | None, digits: int = 0) -> str:
    """A number with thousands separators (— for none)."""
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def ratio(x: float | None) -> str:
    """A speed ratio."""
    if x is None:
        return "—"
    return f"{x:,.0f}×" if x >= 20 else f"{x:.2f}×"


def verdict(met: bool | None) -> str:
    """**met** / **missed** / not measured."""
    if met is None:
        return "not measured"
    return "**met**" if met else "**missed**"


def p50(entry: Any) -> float | None:
    """The p50 of a percentiles dict, if there is one."""
    if isinstance(entry, dict) and "p50_ms" in entry:
        return float(entry["p50_ms"])
    return None


def p95(entry: Any) -> float | None:
    """The p95 of a percentiles dict, if there is one."""
    if isinstance(entry, dict) and "p95_ms" in entry:
        return float(entry["p95_ms"])
    return None


def table(header: list[str], rows: Iterable[list[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one of ``l``/``r`` per column (default: l then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


class Report:
    """Collects the page's sections, the target verdicts and the plots."""

    def __init__(self, *, quick: bool, page: Path) -> None:
        self.quick = quick
        self.page = page
        self.img = page.parent / "img"
        self.targets: list[tuple[str, str, bool | None]] = []
        self.missing: list[str] = []

    def load(self, name: str) -> Any:
        """``results/<name>.json`` (``-quick`` in quick mode), or None."""
        path = RESULTS / (f"{name}-quick.json" if self.quick else f"{name}.json")
        if not path.exists():
            self.missing.append(path.name)
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def target(self, what: str, measured: str, met: bool | None) -> None:
        """Record a target and how it went."""
        self.targets.append((what, measured, met))

    def plot(self, name: str, draw: Callable[[Any], None], *, size: tuple[float, float]) -> str:
        """Draw a PNG with matplotlib; returns the markdown image line."""
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt

        self.img.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=size, dpi=110)
        draw(ax)
        fig.tight_layout()
        fig.savefig(self.img / f"bench-{name}.png")
        plt.close(fig)
        return f"![{name}](img/bench-{name}.png)"


def throughput_bars(rows: list[Json], key: str, unit: str) -> Callable[[Any], None]:
    """A drawing of horizontal throughput bars, peers (names starting "Flag") in grey."""

    def draw(ax: Any) -> None:
        names = [row["name"].replace(" (", "\n(") for row in rows]
        colors = ["#999999" if n.startswith("Flag") else "#2a6fdb" for n in names]
        ax.barh(names, [row[key] for row in rows], color=colors)
        ax.set_xlabel(f"{unit} (higher is better)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)

    return draw


def latency_axes(ax: Any, xlabel: str) -> None:
    """Labels, legend and grid of a latency-vs-size plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("p50 latency, ms (log)")
    ax.legend(fontsize=8)
    ax.grid(visible=True, which="both", alpha=0.3)


# -- sections -----------------------------------------------------------------------------------


def section_encoder(r: Report) -> str:
    enc = r.load("encoder")
    if enc is None:
        return "## Encoder\n\nNo results yet: `python benchmarks/bench_encoder.py`.\n"
    rows = enc["rows"]
    ck = enc.get("checkpoint", {})
    out = [
        "## Encoder: `M3Encoder` vs `BGEM3FlagModel`",
        "",
        f"`python benchmarks/bench_encoder.py` — a random checkpoint in the BGE-M3 layout "
        f"({ck.get('layers')} layers, hidden {ck.get('hidden')}), {enc.get('texts')} mixed-length "
        f"multilingual texts ({num(enc.get('tokens'))} tokens, truncated at "
        f"{enc.get('max_length')}), all three heads, median of {enc.get('repeats')} runs; both "
        "sides in the same process on the same inputs.",
        "",
        table(
            ["side", "s", "texts/s", "tokens/s", "vs FlagEmbedding default"],
            [
                [
                    row["name"],
                    f"{row['seconds']:.2f}",
                    f"{row['texts_per_s']:.1f}",
                    num(row["tokens_per_s"]),
                    ratio(row["ratio_vs_flagembedding"]),
                ]
                for row in rows
            ],
        ),
        "",
    ]
    par = enc.get("parity_fp32", {})
    ref = enc.get("parity_reference_batching", {})
    out.append(
        "Parity, asserted in the same run: with the reference batching m3rag is within "
        f"{ref.get('dense_max_abs', 0):.1e} (dense), {ref.get('lexical_max_abs', 0):.1e} "
        f"(lexical), {ref.get('colbert_max_abs', 0):.1e} (ColBERT) of FlagEmbedding "
        f"(0 = bit-identical); with its own batching within {par.get('dense_max_abs', 0):.1e}, "
        f"{par.get('lexical_max_abs', 0):.1e} and {par.get('colbert_max_abs', 0):.1e}."
    )
    drift = enc.get("bf16_drift_minilm_scifact")
    if drift:
        out.append(
            f"The bf16 fast path's drift on the real all-MiniLM-L6-v2 (SciFact, "
            f"{drift['docs']} documents, {drift['queries']} queries): dense cosine ≥ "
            f"{drift['dense_cos_min']:.4f}, top-10 overlap with fp32 "
            f"{100 * drift['top10_overlap']:.1f}%."
        )
    out.append("")

    def by(prefix: str) -> Json | None:
        return next((row for row in rows if row["name"].startswith(prefix)), None)

    parity = by("m3rag M3Encoder fp32, reference")
    fast = by("m3rag M3Encoder bf16")
    tuned = by("FlagEmbedding BGEM3FlagModel (fp32, batch 32)")
    if parity:
        r.target(
            "encoder ≥ 1.0× FlagEmbedding at parity",
            ratio(parity["ratio_vs_flagembedding"]),
            parity["ratio_vs_flagembedding"] >= 1.0,
        )
    if fast:
        vs_tuned = fast["texts_per_s"] / tuned["texts_per_s"] if tuned else None
        r.target(
            "encoder ≥ 1.8× FlagEmbedding with the fast path",
            f"{ratio(fast['ratio_vs_flagembedding'])} vs its default, {ratio(vs_tuned)} vs "
            "its best batch size",
            (vs_tuned if vs_tuned is not None else fast["ratio_vs_flagembedding"]) >= 1.8,
        )
        out.append(
            "The bit-parity gain is FlagEmbedding's work m3rag skips (a throw-away batch-size "
            "probe pass, the unused pooler, a Python loop per token for the lexical dicts). "
            "Against FlagEmbedding tuned to its best batch size the batching gain is small; the "
            'fast path (`dtype="bfloat16"`) is where the rest comes from, on a CPU with '
            "AVX512-BF16 (on CPUs without native bf16 it can be slower: measure first)."
        )
        out.append("")

    draw = throughput_bars(rows, "texts_per_s", "texts / s")
    out += [r.plot("encoder", draw, size=(7.5, 3.2)), ""]
    return "\n".join(out)


def section_reranker(r: Report) -> str:
    rer = r.load("reranker")
    if rer is None:
        return "## Reranker\n\nNo results yet: `python benchmarks/bench_reranker.py`.\n"
    rows = rer["rows"]
    out = [
        "## Reranker: `Reranker` vs `FlagReranker`",
        "",
        f"`python benchmarks/bench_reranker.py` — a random cross-encoder in the "
        f"bge-reranker-v2-m3 layout, {rer.get('pairs')} multilingual pairs "
        f"({rer.get('truncated_pairs')} truncated at {rer.get('max_length')}), median of "
        f"{rer.get('repeats')}.",
        "",
        table(
            ["side", "s", "pairs/s", "vs FlagReranker"],
            [
                [
                    row["name"],
                    f"{row['seconds']:.2f}",
                    f"{row['pairs_per_s']:.1f}",
                    ratio(row["ratio_vs_flagreranker"]),
                ]
                for row in rows
            ],
        ),
        "",
        f"Parity in the same run: max |score difference| {rer.get('parity_max_abs', 0):.1e}; "
        "bit-identical with the reference batching (asserted). bf16 scores rank the pairs with "
        f"a Spearman correlation of {rer.get('bf16_spearman_vs_fp32', float('nan')):.3f} to fp32.",
        "",
    ]
    parity = next((row for row in rows if "reference batching" in row["name"]), None)
    if parity:
        r.target(
            "reranker ≥ 1.0× FlagReranker at parity",
            ratio(parity["ratio_vs_flagreranker"]),
            parity["ratio_vs_flagreranker"] >= 1.0,
        )

    draw = throughput_bars(rows, "pairs_per_s", "pairs / s")
    out += [r.plot("reranker", draw, size=(7.5, 3.0)), ""]
    return "\n".join(out)


def _index_sizes(r: Report) -> list[Json]:
    sizes: dict[int, Json] = {}
    for name in ("index", "index-1m"):
        data = r.load(name)
        for row in (data or {}).get("sizes", []):
            sizes[row["passages"]] = row  # the larger run's rows win for equal sizes
    return [sizes[n] for n in sorted(sizes)]


def section_index(r: Report) -> str:
    idx = r.load("index")
    rows = _index_sizes(r)
    out = [
        "## Index: `Collection` on synthetic BGE-M3-like data",
        "",
        "`python benchmarks/bench_index.py` (and `--sizes 100000,1000000` for the 1M row) — "
        "250,002-token vocabulary, Zipf-distributed token ids, ~60 lexical tokens per passage "
        "(weights uniform in (0, 0.5], independent of frequency), 20-token queries, 1024-d unit "
        "dense vectors stored as float16 with the int8 scan copy; the model excluded. Latencies "
        "are measured in a fresh process that opens the index read-only (its peak RSS is "
        "reported); the lexical path is checked against a brute-force `scipy.sparse` product "
        "over the same weights in the same run.",
        "",
    ]
    if rows:
        out += [
            table(
                [
                    "passages",
                    "ingest (store only)",
                    "disk",
                    "dense exact p50 (p95)",
                    "lexical p50 (p95)",
                    "scipy brute force p50",
                    "lexical top-10 = brute force",
                    "first lexical query",
                    "peak RSS (anon / file pages at the end)",
                ],
                [
                    [
                        num(row["passages"]),
                        f"{num(row['ingest_per_s'])} /s",
                        f"{num(row['disk_mb'])} MB",
                        f"{ms(p50(row['dense_exact']))} ({ms(p95(row['dense_exact']))})",
                        f"{ms(p50(row['lexical']))} ({ms(p95(row['lexical']))})",
                        ms(p50(row["lexical_scipy_bruteforce"])),
                        row["lexical_top10_identical"],
                        f"{row['lexical_first_query_s']:.2f} s"
                        if row.get("lexical_first_query_s")
                        else "—",
                        f"{num(row['peak_rss_mb_query_process'])} MB"
                        + (
                            f" ({num(row['rss_anon_mb_end'])} / {num(row['rss_file_mb_end'])})"
                            if row.get("rss_file_mb_end") is not None
                            else ""
                        ),
                    ]
                    for row in rows
                ],
            ),
            "",
            "The first lexical query of a collection above 50,000 passages builds the in-memory "
            "impact table of its most frequent tokens (one byte per passage per token, at most "
            "256 tokens); later commits extend it.",
            "",
        ]
    big = rows[-1] if rows else None
    if big is not None and big["passages"] >= 1_000_000:
        lex, dense = p50(big["lexical"]), p50(big["dense_exact"])
        r.target(
            "store ingest ≥ 5,000 passages/s",
            f"{num(big['ingest_per_s'])} /s at 1M",
            big["ingest_per_s"] >= 5000,
        )
        r.target("lexical p50 ≤ 20 ms at 1M", ms(lex), lex is not None and lex <= 20)
        r.target("dense exact p50 ≤ 40 ms at 1M", ms(dense), dense is not None and dense <= 40)
        r.target(
            "peak RSS of a 1M lexical + dense index ≤ 3 GB",
            f"{num(big['peak_rss_mb_query_process'])} MB",
            big["peak_rss_mb_query_process"] <= 3072,
        )
        if dense is not None:
            out += [
                f"The exact dense scan at 1M ({ms(dense)} p50) is mostly torch's int8-weight "
                "kernel over the 1 GB scan copy. That kernel is compute-bound here (55 ms on "
                "one core) and alone took between 28 and 37 ms on both cores from one minute "
                "to the next on this shared machine, so this p50 moves between runs by about "
                "its margin to the 40 ms target.",
                "",
            ]
        if big.get("rss_file_mb_end") is not None:
            peak = big["peak_rss_mb_query_process"]
            verdict = "misses" if peak > 3072 else "is within"
            out += [
                f"Peak RSS at 1M ({num(peak)} MB) {verdict} 3 GB. RSS counts the page-cache "
                "pages a process has mapped as well as its own memory: at the end of the run "
                f"{num(big['rss_file_mb_end'])} MB were file pages of the memory-mapped stores "
                "(the 1 GB int8 scan copy, which every exact query reads whole, and the lexical "
                "store, whose rescoring gathers touch most of it), shared and reclaimable, and "
                f"{num(big['rss_anon_mb_end'])} MB the process's own (Python, torch, the lexical "
                "head table). Rows rescored from the float16 matrix are read with `pread`, not "
                "through its map: through the map, each scattered row left a whole page-cache "
                "folio mapped (about 300 KB here), and twenty queries had mapped 900 MB of it.",
                "",
            ]
        if dense is not None and dense > 40:
            out += [
                f"Dense exact at 1M ({ms(dense)}) misses 40 ms: besides the scan, topping the "
                "scores and rescoring the rows within the proven error bound from the float16 "
                "matrix add about 6 ms. The HNSW option below answers in a few milliseconds "
                "where approximate recall is acceptable.",
                "",
            ]
        if lex is not None and lex > 20:
            out += [
                f"Lexical at 1M ({ms(lex)}) misses 20 ms: tantivy's union over the tail "
                "tokens' bit planes plus the head-table pass over every passage dominate.",
                "",
            ]
    mil = (idx or {}).get("milvus_lite", [])
    if mil:
        ours = {row["passages"]: row for row in rows}
        out += [
            "Lexical search against milvus-lite's sparse search (`SPARSE_INVERTED_INDEX`, IP) on "
            "the same weights and queries, same run:",
            "",
            table(
                [
                    "passages",
                    "m3rag lexical p50",
                    "milvus-lite sparse p50 (p95)",
                    "milvus-lite ingest",
                    "top-10 identical",
                    "ratio",
                ],
                [
                    [
                        num(m["passages"]),
                        ms(p50(ours.get(m["passages"], {}).get("lexical"))),
                        f"{ms(p50(m['milvus_lite_sparse']))} ({ms(p95(m['milvus_lite_sparse']))})",
                        f"{num(m['milvus_lite_ingest_per_s'])} /s",
                        m.get("top10_identical_to_m3rag", "—"),
                        ratio(
                            p50(m["milvus_lite_sparse"]) / p50(ours[m["passages"]]["lexical"])  # type: ignore[operator]
                            if m["passages"] in ours
                            else None
                        ),
                    ]
                    for m in mil
                ],
            ),
            "",
        ]
    ann = (idx or {}).get("ann", [])
    if ann:
        out += [
            "Optional HNSW graph (`Collection.create(..., ann=True)`, usearch), vectors clustered "
            "around 2,000 topics (on uniformly random 1024-d vectors any graph index does badly):",
            "",
            table(
                [
                    "passages",
                    "ingest with HNSW",
                    "dense exact p50",
                    "dense HNSW p50",
                    "recall@10 vs exact",
                ],
                [
                    [
                        num(a["passages"]),
                        f"{num(a['ingest_with_hnsw_per_s'])} /s",
                        ms(p50(a["dense_exact"])),
                        ms(p50(a["dense_hnsw"])),
                        f"{a['hnsw_recall@10']:.2f}",
                    ]
                    for a in ann
                ],
            ),
            "",
        ]
    colbert = [
        c
        for name in ("index", "index-1m", "index-colbert-100k")
        for c in (r.load(name) or {}).get("colbert", [])
    ]
    seen: dict[tuple[int, str], Json] = {(c["passages"], c["dtype"]): c for c in colbert}
    if seen:
        out += [
            "ColBERT store, ~200 × 1024 token vectors per passage, MaxSim of a 32-token query "
            "over 100 random candidates, in both precisions (`float32`: exact on the stored "
            "values; `bfloat16`: the CPU's bfloat16 dot products). Each candidate set is read "
            "once before it is timed, so these are compute figures with the rows in the page "
            "cache; a store larger than memory pays a disk read of ~20,000 rows on top:",
            "",
            table(
                [
                    "passages",
                    "storage",
                    "ingest",
                    "disk",
                    "MaxSim float32 p50 (p95)",
                    "MaxSim bfloat16 p50 (p95)",
                ],
                [
                    [
                        num(c["passages"]),
                        c["dtype"],
                        f"{num(c['ingest_per_s'])} /s",
                        f"{c['disk_mb'] / 1000:.2f} GB",
                        f"{ms(p50(c['maxsim_100']))} ({ms(p95(c['maxsim_100']))})",
                        f"{ms(p50(c.get('maxsim_100_bfloat16')))} "
                        f"({ms(p95(c.get('maxsim_100_bfloat16')))})",
                    ]
                    for c in seen.values()
                ],
            ),
            "",
        ]
        timed = [
            (p50(c.get("maxsim_100_bfloat16")), c["dtype"])
            for c in seen.values()
            if p50(c.get("maxsim_100_bfloat16")) is not None
        ]
        default = next((c for c in seen.values() if c["dtype"] == "float16"), None)
        exact = p50(default["maxsim_100"]) if default else None
        if timed:
            best = min(timed)  # type: ignore[type-var]
            r.target(
                "MaxSim over 100 candidates ≤ 10 ms",
                f"{ms(best[0])} ({best[1]} storage, bfloat16 products); float16 storage, "
                f"exact float32: {ms(exact)}",
                best[0] is not None and best[0] <= 10,
            )
        if exact is not None and exact > 10:
            out += [
                f"The exact float32 MaxSim on float16 storage ({ms(exact)}) misses 10 ms: 100 "
                "candidates are ~20,000 rows of 1024 dimensions; gathering them (40 MB) and "
                "widening them to float32 cost a few milliseconds each, and the float32 product "
                "(0.65 GFLOP) runs at the speed of MKL's float32 kernel on 2 cores (~10 ms). "
                "The bfloat16 products run several times faster on this CPU's AVX512-BF16 "
                "units; storing ColBERT as bfloat16 also removes the widening.",
                "",
            ]
    out += _maxsim_blocks(r)
    if len(rows) >= 2:

        def draw(ax: Any) -> None:
            xs = [row["passages"] for row in rows]
            ax.loglog(xs, [p50(row["lexical"]) for row in rows], "o-", label="m3rag lexical")
            ax.loglog(
                xs, [p50(row["dense_exact"]) for row in rows], "s-", label="m3rag dense exact"
            )
            ax.loglog(
                xs,
                [p50(row["lexical_scipy_bruteforce"]) for row in rows],
                "x--",
                label="scipy brute-force sparse product",
                color="#999999",
            )
            for m in mil:
                ax.loglog(
                    [m["passages"]],
                    [p50(m["milvus_lite_sparse"])],
                    "^",
                    label="milvus-lite sparse",
                    color="#d9534f",
                )
            latency_axes(ax, "passages (log)")

        out += [r.plot("index", draw, size=(6.5, 4.0)), ""]
    return "\n".join(out)


def _maxsim_blocks(r: Report) -> list[str]:
    """``bench_maxsim_blocks.py``: MaxSim's block of token rows, the default against the rest."""
    res = r.load("maxsim-blocks")
    if res is None:
        return []
    cells = res["cells"]
    labels = list(cells[0]["p50_ms"]["float32"])
    budgets = [int(label.split()[0]) for label in labels if " MiB" in label]
    before = next(label for label in labels if "before" in label).removesuffix(" (before)")
    shapes = res["shapes"]
    out = [
        "MaxSim gathers, widens and multiplies the candidates' token rows a block at a time. "
        "`python benchmarks/bench_maxsim_blocks.py"
        + (" --quick" if r.quick else "")
        + f"` times it with blocks of {min(budgets)}–{max(budgets)} MiB of float32 rows and "
        f"with the {before} at every width it used before, taking turns within each of "
        f"{res['rounds']} rounds on the same random candidates (a {res['query_rows']}-row "
        f"query; *passages*: {shapes['passages']['candidates']} candidates of "
        f"~{shapes['passages']['rows']} rows, *short*: {shapes['short']['candidates']} of "
        f"~{shapes['short']['rows']}), with one torch thread and with one per core. p50 in ms, "
        "float32 products / bfloat16 products:",
        "",
        table(
            ["width", "storage", "candidates", "threads", *labels, "default vs before"],
            [
                [
                    str(c["dim"]),
                    c["dtype"],
                    c["shape"],
                    str(c["torch_threads"]),
                    *(
                        f"{c['p50_ms']['float32'][label]:.1f} / "
                        f"{c['p50_ms']['bfloat16'][label]:.1f}"
                        for label in labels
                    ),
                    " / ".join(
                        ratio((c["speedup_default_vs_before"] or {}).get(p))
                        for p in ("float32", "bfloat16")
                    ),
                ]
                for c in cells
            ],
        ),
        "",
    ]
    long = [
        c["speedup_default_vs_before"]["float32"]
        for c in cells
        if c["shape"] == "passages" and c["torch_threads"] == 1 and c["speedup_default_vs_before"]
    ]
    if long:
        out += [
            f"With one thread, the default ran passage-length candidates in float32 "
            f"{min(long):.2f}–{max(long):.2f}× as fast as 8192 rows: a block's rows are "
            "gathered, widened and multiplied while they are still in the cache, where 8192 "
            "rows of 1024 floats (32 MiB, 48 with the gathered copy) are not. Two threads' "
            "figures move with the machine: its second core is shared.",
            "",
        ]
    steps = (r.load("run_all") or {}).get("steps", {})
    index, blocks = steps.get("index", {}), steps.get("maxsim-blocks", {})
    if index.get("finished", "") < blocks.get("finished", ""):
        day = index["finished"][:10] if "finished" in index else "an earlier day"
        out += [
            f"The ColBERT store table above is `bench_index.py`'s run of {day}, with the "
            "blocks of that day's "
            f"code; this comparison ran on {blocks['finished'][:10]}. This machine's speed moves "
            "between days, so read each run's own ratios, not one day's figures against the "
            "other's.",
            "",
        ]
    return out


def section_bm25(r: Report) -> str:
    bm = r.load("bm25")
    out = ["## BM25: m3rag vs bm25s and rank-bm25 on SciFact", ""]
    if bm is None:
        return "\n".join([*out, "No results yet: `python benchmarks/bench_bm25.py`.", ""])
    rows = bm["rows"]
    out += [
        f"`python benchmarks/bench_bm25.py` — {bm['dataset']} ({num(bm['documents'])} documents, "
        f"{bm['queries']} queries), one query at a time, each query's time the median of "
        f"{bm['passes']} passes; nDCG@10 with pytrec_eval. rank-bm25's `BM25Okapi` is what "
        "LangChain's `BM25Retriever` uses (with `str.split`).",
        "",
        table(
            ["system", "tokenisation", "build", "p50 (p95)", "nDCG@10", "Recall@100", "m3rag is"],
            [
                [
                    row["system"],
                    str(row.get("tokenizer") or row.get("stemmer") or "m3rag analyzer"),
                    f"{row['build_s']:.2f} s",
                    f"{ms(p50(row['query']))} ({ms(p95(row['query']))})",
                    f"{row['ndcg@10']:.4f}",
                    f"{row['recall@100']:.4f}",
                    ratio(p50(row["query"]) / p50(rows[0]["query"]))  # type: ignore[operator]
                    if row is not rows[0]
                    else "—",
                ]
                for row in rows
            ],
            "llrrrrr",
        ),
        "",
    ]
    m3, bm25s = rows[0], next((row for row in rows if row["system"] == "bm25s"), None)
    rank = next((row for row in rows if row["system"] == "rank_bm25"), None)
    runs = bm.get("runs") or []
    if runs:  # the script run several times: latency moves with the machine's load
        ours = sorted(run["m3rag_p50_ms"] for run in runs)
        theirs = sorted(run["bm25s_p50_ms"] for run in runs)
        loads = ", ".join(f"{run['load_average_start'][0]:.1f}" for run in runs)
        out += [
            f"Query p50 in each of {len(runs)} runs of the script: m3rag "
            f"{', '.join(ms(x) for x in ours)} (median {ms(statistics.median(ours))}), bm25s "
            f"{', '.join(ms(x) for x in theirs)} (median {ms(statistics.median(theirs))}); the "
            f"table is the median run. Load average (1 min) at the start of each run: {loads} "
            "(2 cores shared with other jobs).",
            "",
        ]
    if "load_average" in bm and not runs:
        shown = ", ".join(f"{x:.1f}" for x in bm["load_average"])
        out += [f"Load average at the end of the run (1, 5, 15 min): {shown}.", ""]
    m3_p50 = statistics.median(run["m3rag_p50_ms"] for run in runs) if runs else p50(m3["query"])
    if m3_p50 is not None:
        r.target(
            "BM25 p50 on SciFact ≤ 0.107 ms (1.5× the one-analyzer 0.071 ms at rest)",
            ms(m3_p50),
            m3_p50 <= 0.107,
        )
    if m3_p50 is not None and bm25s:
        # The same bound with the machine's speed taken out: the run that set 0.071 ms had
        # bm25s at 0.0828 ms, so m3rag stood at 0.86x bm25s then; 1.5x that relation now.
        relation = m3_p50 / p50(bm25s["query"])  # type: ignore[operator]
        r.target(
            "BM25 p50 on SciFact ≤ 1.5× the pre-#15 relation to bm25s in the same run "
            "(0.071 ms vs bm25s 0.0828 ms: 0.86×)",
            f"{relation:.2f}× bm25s (≤ {1.5 * 0.071 / 0.0828:.2f}×)",
            relation <= 1.5 * 0.071 / 0.0828,
        )
    if bm25s:
        fast = p50(m3["query"]) <= p50(bm25s["query"])  # type: ignore[operator]
        good = m3["ndcg@10"] >= bm25s["ndcg@10"] - 5e-4
        r.target(
            "BM25 at least as fast as bm25s at an nDCG@10 at least as high",
            f"{ms(p50(m3['query']))} vs {ms(p50(bm25s['query']))}; nDCG@10 "
            f"{m3['ndcg@10']:.4f} vs {bm25s['ndcg@10']:.4f}",
            fast and good,
        )
        if not fast:
            out.append(
                "bm25s is faster per query here: it scores a query with a few numpy operations "
                "over a precomputed sparse score matrix, while m3rag goes through tantivy (query "
                "parsing, a boolean query, its top-k collector, the key fast field) and the "
                "collection's filter and id bookkeeping; at ~0.1 ms a query the fixed per-call "
                "cost dominates. m3rag's p95 is lower than bm25s's, and its index is the same one "
                "that serves filters, upserts and the other paths."
            )
            out.append("")
    if rank:
        speed = p50(rank["query"]) / p50(m3["query"])  # type: ignore[operator]
        r.target("BM25 ≥ 20× faster than rank-bm25", ratio(speed), speed >= 20)
    ana = r.load("bm25_analyzer")
    if ana:
        out += bm25_analyzer_section(r, ana)

    def draw(ax: Any) -> None:
        names = [f"{row['system']}\n{row.get('tokenizer', '')}".strip() for row in rows]
        values = [p50(row["query"]) for row in rows]
        bars = ax.barh(names, values, color=["#2a6fdb"] + ["#999999"] * (len(rows) - 1))
        ax.set_xscale("log")
        ax.set_xlabel("p50 ms per query (log, lower is better)")
        for bar, row in zip(bars, rows, strict=True):
            ax.text(
                bar.get_width() * 1.1,
                bar.get_y() + bar.get_height() / 2,
                f"nDCG@10 {row['ndcg@10']:.3f}",
                va="center",
                fontsize=8,
            )
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)

    out += [r.plot("bm25", draw, size=(7.5, 2.8)), ""]
    return "\n".join(out)


def _has_cpu(res: dict[str, Any]) -> bool:
    """Whether the run recorded CPU time (runs since the accounting have it in every cell)."""
    return all(
        "server_cpu_cores" in cell
        for cells in res["servers"].values()
        for runs in cells.values()
        for cell in runs
    )


def _serve_table(res: dict[str, Any]) -> list[str]:
    cpu = _has_cpu(res)
    rows = [
        [
            server,
            f"`{path}`",
            str(cell["clients"]),
            f"{cell['rps']:.1f}",
            *_cell_columns(cell, "texts_per_batch"),
            *(
                [f"{cell['server_cpu_cores']:.2f}", f"{cell['client_cpu_cores']:.2f}"]
                if cpu
                else []
            ),
        ]
        for server, cells in res["servers"].items()
        for path, runs in cells.items()
        for cell in runs
    ]
    header = ["server", "route", "clients", "req/s", "p50", "p95", "errors"]
    header += ["model busy", "texts/batch", *(["server CPU", "client CPU"] if cpu else [])]
    return [table(header, rows, "ll" + "r" * (len(header) - 2)), ""]


def _cell_columns(cell: dict[str, Any], per_batch: str) -> list[str]:
    """A load cell's latency, errors and batching columns (``per_batch``: the key of its items
    per gathered batch, ``texts_per_batch`` or ``pairs_per_batch``)."""
    return [
        ms(cell["p50_ms"]),
        ms(cell["p95_ms"]),
        str(cell["errors"]),
        f"{cell['model_busy']:.0%}" if "model_busy" in cell else "—",
        f"{cell[per_batch]:.1f}" if per_batch in cell else "—",
    ]


def _rps_against(cells: list[Json], baseline: list[Json], digits: int = 1) -> str:
    """One server's req/s against another's at each concurrency, "; "-joined."""
    return "; ".join(
        f"{a['clients']} client{'s' if a['clients'] > 1 else ''} {a['rps']:.{digits}f} against "
        f"{b['rps']:.{digits}f} req/s ({a['rps'] / b['rps']:.2f}×)"
        for a, b in zip(cells, baseline, strict=False)
        if b["rps"]
    )


# the m3rag serve variants a run may load besides the default: how the setup names each, the
# lead of its comparison ({baseline}: what it is compared with; {default}: the default's model
# threads), and the server it is compared with (None, or one the run lacks: the default)
_ONE_THREAD_SERVER = "m3rag serve --model-threads 1"
_SERVE_VARIANTS: dict[str, tuple[str, str, str | None]] = {
    _ONE_THREAD_SERVER: (
        "the same with `--model-threads 1` (one model thread, the default before model threads)",
        # read the other way round: the default's gain over one model thread
        "{default} against one (`--model-threads 1`)",
        None,
    ),
    "m3rag serve --wait-policy always": (
        "the same with `--wait-policy always` (every batch holds its first request for "
        "`--max-wait-ms`)",
        "Every batch holding its first request (`--wait-policy always`) against the adaptive "
        "wait (the default)",
        None,
    ),
    "m3rag serve, OpenMP spinning": (
        "the same with OpenMP's threads spinning between ops as libgomp does by default "
        "(`OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000`; `m3rag serve` sets `PASSIVE` unless "
        "a policy is set)",
        "OpenMP's threads spinning (libgomp's default) against sleeping (`m3rag serve`'s "
        "`OMP_WAIT_POLICY=PASSIVE`)",
        None,
    ),
    "m3rag serve --batch-overhead none": (
        "the same with `--batch-overhead none` (each forward pass filled to the token budget; "
        "`m3rag serve` cuts a gathered batch into passes by cost)",
        "Forward passes filled to the token budget (`--batch-overhead none`) against cut by "
        "cost (the default)",
        None,
    ),
    "m3rag serve --model-process": (
        "the same with `--model-process` (one model, in a child process)",
        "The model in a child process (`--model-process`) against {baseline}",
        _ONE_THREAD_SERVER,
    ),
    "m3rag serve --model-workers 2": (
        "the same with `--model-workers 2` (two copies of the model in child processes, each "
        "with half the cores, running batches side by side)",
        "Two model workers in child processes (`--model-workers 2`) against {baseline}",
        None,
    ),
}
# how a comparison names a baseline other than the default
_BASELINES = {_ONE_THREAD_SERVER: "one model thread in the server's process (`--model-threads 1`)"}
_WORKERS_SERVER = "m3rag serve --model-workers 2"
_DEFAULT_SERVER = "m3rag serve (dynamic batching)"


def _model_threads(res: dict[str, Any]) -> int:
    """The default server's model threads in a run (1 in runs from before model threads)."""
    return int(res.get("model_threads", 1))


def _threads_desc(res: dict[str, Any]) -> str:
    """The default's model threads, to open a sentence: "Two model threads (the default)"."""
    n = _model_threads(res)
    words = {1: "One", 2: "Two", 3: "Three", 4: "Four"}
    return f"{words.get(n, str(n))} model thread{'s' if n > 1 else ''} (the default)"


def _default_desc(res: dict[str, Any]) -> str:
    """What the default server runs its model on, in a run."""
    n = _model_threads(res)
    if n == 1:
        return "one model thread (the default)"
    return f"{n} model threads sharing one copy of the model (the default on this machine)"


def _serve_setup(res: dict[str, Any]) -> str:
    inproc, search = res["in_process_call"], res["in_process_search"]
    ck = res["checkpoint"]
    against = ", ".join(
        [
            f"`m3rag serve` (dynamic batching, the {res['wait_policy']} batch wait; "
            f"{_default_desc(res)})",
            *(setup for name, (setup, _, _) in _SERVE_VARIANTS.items() if name in res["servers"]),
        ]
    )
    return (
        "one text per request to `/embed_all` (all three heads, ColBERT as base64) and one query "
        f"per request to `/search`, {res['requests_per_cell']} requests per cell at 1, 8 and 32 "
        f"concurrent clients over loopback, against {against}, and the same model behind a "
        "plain FastAPI endpoint that encodes each request on its own; a random checkpoint in "
        f"the BGE-M3 layout ({ck['num_layers']} layers, hidden {ck['hidden_size']}), "
        f"`--max-wait-ms {res['max_wait_ms']:g}`, {res['forward_tokens']} tokens per gathered "
        "batch and per forward pass on every side (`--max-batch-tokens`). In the "
        f"same run: offline `encode_corpus` on all the texts, "
        f"{res['offline']['texts_per_s']:.1f} texts/s; the in-process call per text, p50 "
        f"{ms(inproc['p50_ms'])}, p95 {ms(inproc['p95_ms'])}; in-process `retrieve`, p50 "
        f"{ms(search['p50_ms'])}, p95 {ms(search['p95_ms'])}."
    )


def _requests_flag(res: dict[str, Any]) -> str:
    """`` --requests N`` when a run asked for other than bench_serve's default 128 per cell."""
    n = res["requests_per_cell"]
    return "" if n == 128 else f" --requests {n}"


def _variants_vs_default(res: dict[str, Any]) -> list[str]:
    """A sentence for each m3rag serve variant the run loaded, against the default server."""
    servers = res["servers"]
    out = []
    for name, (_, lead, baseline) in _SERVE_VARIANTS.items():
        if name not in servers:
            continue
        if baseline in servers:
            lead = lead.format(baseline=_BASELINES[baseline])
        else:
            baseline = _DEFAULT_SERVER
            lead = lead.format(baseline=_default_desc(res), default=_threads_desc(res))
        first, second = name, baseline
        if name == _ONE_THREAD_SERVER:
            first, second = second, first
        lines = [
            f"`{path}`: " + _rps_against(servers[first][path], servers[second][path])
            for path in ("/embed_all", "/search")
        ]
        out += [f"{lead}: " + "; ".join(lines) + ".", ""]
    return out


def _one_client(res: dict[str, Any]) -> list[str]:
    """One client on `/embed_all`: the plain endpoint against the batcher's two waits."""
    servers = res["servers"]
    plain = servers.get("plain per-request endpoint", {}).get("/embed_all")
    always = servers.get("m3rag serve --wait-policy always", {}).get("/embed_all")
    if not plain or not always:
        return []
    mine = servers[_DEFAULT_SERVER]["/embed_all"][0]["rps"]
    held = always[0]["rps"]
    return [
        f"One client on `/embed_all`: the plain endpoint {plain[0]['rps']:.1f} req/s, `m3rag "
        f"serve` with the adaptive wait {mine:.1f}, with `--wait-policy always` {held:.1f} "
        f"({mine / held:.2f}× for the adaptive wait, {mine / plain[0]['rps']:.0%} of the "
        "plain endpoint). A lone request held for company waits out `--max-wait-ms` with "
        "nothing to gain."
        + (
            " Our reading of the rest of the gap (not isolated by this run): the hand-off to "
            "the model's thread and back."
            if mine < 0.97 * plain[0]["rps"]
            else ""
        ),
        "",
    ]


def _plain_ahead(res: dict[str, Any]) -> list[str]:
    """The cells under load where the plain endpoint served more than the batcher, if any."""
    plain = res["servers"].get("plain per-request endpoint")
    if not plain:
        return []
    ahead_cells = [
        (path, p)
        for path in ("/embed_all", "/search")
        for p, d in zip(plain[path], res["servers"][_DEFAULT_SERVER][path], strict=False)
        if p["clients"] > 1 and p["rps"] > d["rps"]
    ]
    default = res["servers"][_DEFAULT_SERVER]
    ahead = [
        f"`{path}` at {p['clients']} clients ({p['rps']:.1f} against "
        f"{next(d['rps'] for d in default[path] if d['clients'] == p['clients']):.1f} req/s)"
        for path, p in ahead_cells
    ]
    if not ahead:
        return []
    return [
        "Where the plain endpoint served more than the batcher: " + "; ".join(ahead) + ". "
        "Our reading (not isolated by this run): its requests run at once on as many threads "
        "as there are clients, each small forward pass beside the others, while the batcher "
        + (
            "runs one pass at a time on the model's thread"
            if _model_threads(res) == 1
            else f"runs at most {_model_threads(res)} passes at a time"
        )
        + "; on a CPU, several small passes side by side can use the cores better than one "
        "pass over their texts."
        + (
            " `--model-workers 2`, which runs two batches side by side, served more than the "
            "plain endpoint in every one of these cells."
            if _workers_ahead(res, ahead_cells)
            else ""
        ),
        "",
    ]


def _workers_ahead(res: dict[str, Any], cells: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether the model workers served more than the plain endpoint in each of ``cells``."""
    workers = res["servers"].get(_WORKERS_SERVER)
    if not workers or not cells:
        return False
    return all(
        w["rps"] > p["rps"]
        for path, p in cells
        for w in workers[path]
        if w["clients"] == p["clients"]
    )


def _pass_cost(res: dict[str, Any]) -> list[str]:
    """What a forward pass costs beyond its slots, as the run measured it in-process."""
    cost = res.get("forward_pass_cost")
    gathered = res.get("gathered_texts_per_s", {})
    if cost is None or gathered.get("batch_overhead") is None:
        return []
    singles = cost["single_text"]
    return [
        "The fixed cost of a forward pass, in-process: one text of "
        + ", ".join(str(c["tokens"]) for c in singles)
        + " tokens took "
        + ", ".join(ms(c["ms"]) for c in singles)
        + ", the time of "
        + ", ".join(f"{c['overhead_tokens']:.0f}" for c in singles)
        + f" more tokens in a full pass ({cost['full_pass_ms_per_token'] * 1000:.0f} µs a "
        "token). `--batch-overhead auto` measured "
        f"{gathered['batch_overhead']} token slots on this model (each server measures its own "
        "at start) and cuts a gathered batch into the passes of least total cost by it.",
        "",
    ]


def _gathered(res: dict[str, Any]) -> list[str]:
    """Where 32 clients' throughput stands between the gathered batches' ceiling and offline."""
    gathered = res.get("gathered_texts_per_s")
    if gathered is None:
        return []
    offline = res["offline"]["texts_per_s"]
    served = res["servers"][_DEFAULT_SERVER]["/embed_all"][-1]
    ceiling = gathered["cost_cut"]
    return [
        f"Against offline throughput: offline `encode_corpus` sorts all "
        f"{res['offline']['texts']} texts by length, so each forward pass holds texts of about "
        f"one length; a server sorts only what it has gathered, at 32 clients "
        f"{served.get('texts_per_batch', 0):.1f} texts a batch. In-process, the same texts in "
        f"random groups of {gathered['texts_per_group']} ran at {ceiling:.1f} texts/s with the "
        f"server's cut by cost ({gathered['filled']:.1f} filled to the budget): "
        f"{ceiling / offline:.0%} of offline, one group after another. 32 clients got "
        f"{served['rps']:.1f} req/s, {served['rps'] / ceiling:.2f}× that"
        + (
            f" ({_model_threads(res)} model threads run groups side by side)"
            if _model_threads(res) > 1
            else ""
        )
        + ". "
        + _cpu_split(res, served),
        "",
    ]


def _workers(res: dict[str, Any]) -> list[str]:
    """What running batches side by side did with the cores: the default's model threads, and
    the model workers, where the run loaded them, each against one model thread."""
    servers = res["servers"]
    offline = res["offline"]["texts_per_s"]
    one = servers.get(_ONE_THREAD_SERVER, {}).get("/embed_all")
    out = []
    for name, what in (
        (
            _DEFAULT_SERVER,
            f"{_threads_desc(res)} run as many batches at once on one copy of the model",
        ),
        (_WORKERS_SERVER, "Two model workers (`--model-workers 2`) run two batches at once"),
    ):
        cells = servers.get(name, {}).get("/embed_all")
        if not cells or (name == _DEFAULT_SERVER and _model_threads(res) == 1):
            continue
        many, alone = cells[-1], cells[0]
        line = (
            f"{what}, each on its share of the cores: at 32 clients {many['rps']:.1f} req/s, "
            f"{many['rps'] / offline:.0%} of offline"
            + (f" ({many['rps'] / one[-1]['rps']:.2f}× one model thread)" if one else "")
            + f", with {many.get('texts_per_batch', 0):.1f} texts a batch"
        )
        if "server_cpu_cores" in many:
            line += (
                f"; the server used {many['server_cpu_cores']:.2f} of the "
                f"{res['machine']['cores']} cores"
            )
        line += ". At one client a lone request runs on one of them, lent the others' cores"
        if one:
            line += (
                f": {alone['rps']:.1f} against {one[0]['rps']:.1f} req/s for one model thread, "
                f"p95 {ms(alone['p95_ms'])} against {ms(one[0]['p95_ms'])}"
            )
        out += [line + ".", ""]
    return out


def _threads_in_process(r: Report) -> list[str]:
    """``bench_model_threads.py``'s in-process run, where its results file exists."""
    path = RESULTS / ("model-threads-quick.json" if r.quick else "model-threads.json")
    if not path.exists():
        return []
    res = json.loads(path.read_text(encoding="utf-8"))
    ck, best = res["checkpoint"], res["best_texts_per_s"]
    shape = "BGE-M3's shape" if ck["size"] == "m3" else f"the {ck['size']} checkpoint"
    shares = res["torch_threads_each"]
    share = str(shares[0]) if len(set(shares)) == 1 else "–".join(map(str, sorted(set(shares))))
    rounds = res["rounds_texts_per_s"]
    return [
        f"### Model threads at {shape}, in-process",
        "",
        "`python benchmarks/bench_model_threads.py"
        + (" --quick" if r.quick else "")
        + f"` — a checkpoint of {shape} "
        f"({ck['num_layers']} layers, hidden {ck['hidden_size']}; random weights), "
        f"{res['texts']} texts in random groups of {res['texts_per_group']}, all three heads, "
        "passes cut by cost, `OMP_WAIT_POLICY=PASSIVE` as `m3rag serve` sets it. One group "
        f"after another on one thread with all {res['cores']} cores: {best['one_thread']:.2f} "
        f"texts/s; {res['threads']} threads side by side, {share} core(s) each, sharing one "
        f"copy of the model as `--model-threads {res['threads']}` does: "
        f"{best['side_by_side']:.2f} texts/s ({res['ratio']:.2f}×). Best of "
        f"{len(rounds['one_thread'])} rounds each (one thread: "
        + ", ".join(f"{x:.2f}" for x in rounds["one_thread"])
        + "; side by side: "
        + ", ".join(f"{x:.2f}" for x in rounds["side_by_side"])
        + "). `bench_serve.py` cannot load this shape on a CPU in reasonable time; this is "
        "the model's side of what the server gains, without HTTP or the event loop.",
        "",
    ]


def _cpu_split(res: dict[str, Any], served: dict[str, Any]) -> str:
    """Where the cores went in a 32-client cell, where the run recorded it."""
    if "server_cpu_cores" not in served:
        return "The rest went to HTTP, JSON and the load generator, on the same cores."
    cores = res["machine"]["cores"]
    server, client = served["server_cpu_cores"], served["client_cpu_cores"]
    idle = cores - server - client
    out = (
        f"In that cell the server used {server:.2f} of the {cores} cores (its model, HTTP and "
        f"JSON) and the load generator {client:.2f}"
    )
    plain = res["servers"].get("plain per-request endpoint", {}).get("/embed_all")
    if idle < 0.2:
        return out + ": the machine was full."
    out += f"; {idle:.2f} stayed idle" + (
        ": the batcher runs one forward pass at a time, and its serial parts leave cores free"
        if _model_threads(res) == 1
        else ""
    )
    one = res["servers"].get(_ONE_THREAD_SERVER, {}).get("/embed_all")
    if one and "server_cpu_cores" in one[-1]:
        out += f" (with one model thread the server used {one[-1]['server_cpu_cores']:.2f})"
    if plain and "server_cpu_cores" in plain[-1]:
        out += (
            f"; the plain endpoint, whose requests run side by side, used "
            f"{plain[-1]['server_cpu_cores']:.2f}"
        )
    workers = res["servers"].get(_WORKERS_SERVER, {}).get("/embed_all")
    if workers and "server_cpu_cores" in workers[-1]:
        out += f"; with two model workers the server used {workers[-1]['server_cpu_cores']:.2f}"
    return out + "."


def _comparisons(res: dict[str, Any]) -> list[str]:
    """What a serve run's table says beside it: each variant, one client, the plain endpoint."""
    return [*_variants_vs_default(res), *_one_client(res), *_plain_ahead(res)]


def _serve_targets(r: Report, server: str, t: dict[str, float], met: dict[str, bool]) -> None:
    """Issue #17's three targets, as one server's run measured and judged them (the thresholds
    are `bench_serve`'s, in ``met``)."""
    r.target(
        f"{server}: 32 clients ≥ 3× one client (`/embed_all`)",
        ratio(t["x32_vs_1_client"]),
        met["x32_vs_1_client>=3"],
    )
    r.target(
        f"{server}: 32 clients ≥ 80% of offline encode",
        f"{t['x32_vs_offline']:.0%}",
        met["x32_vs_offline>=0.8"],
    )
    r.target(
        f"{server}: p95 at 1 client ≤ 1.5× the in-process call",
        ratio(t["p95_1_client_vs_in_process"]),
        met["p95_1_client<=1.5x"],
    )


_RERANK_DEFAULT = "m3rag serve --reranker (shared batches)"
_RERANK_ONE_THREAD = "m3rag serve --reranker --model-threads 1"
_RERANK_WORKERS = "m3rag serve --reranker --model-workers 2"
_RERANK_PLAIN = "plain per-request endpoint"


def _rerank_table(res: dict[str, Any]) -> list[str]:
    rows = [
        [
            server,
            str(cell["clients"]),
            f"{cell['rps']:.1f}",
            f"{cell['pairs_per_s']:.1f}",
            *_cell_columns(cell, "pairs_per_batch"),
            f"{cell['server_cpu_cores']:.2f}" if "server_cpu_cores" in cell else "—",
            f"{cell['client_cpu_cores']:.2f}",
        ]
        for server, cells in res["servers"].items()
        for cell in cells
    ]
    header = ["server", "clients", "req/s", "pairs/s", "p50", "p95", "errors"]
    header += ["model busy", "pairs/batch", "server CPU", "client CPU"]
    return [table(header, rows, "l" + "r" * (len(header) - 1)), ""]


def _rerank_against(res: dict[str, Any], name: str, baseline: str, lead: str) -> list[str]:
    """One sentence: ``name``'s req/s against ``baseline``'s at each concurrency."""
    servers = res["servers"]
    if name not in servers or baseline not in servers:
        return []
    return [f"{lead}: " + _rps_against(servers[name], servers[baseline], digits=2) + ".", ""]


def _serve_rerank(r: Report) -> list[str]:
    """``bench_serve_rerank.py``: ``/rerank`` under load, where its results file exists."""
    res = r.load("serve-rerank")
    if res is None:
        return [
            "### Reranking under `m3rag serve`",
            "",
            "No results yet: `python benchmarks/bench_serve_rerank.py`.",
            "",
        ]
    ck, inproc, offline = res["checkpoint"], res["in_process_call"], res["offline"]
    n = _model_threads(res)
    loaded = [s for s in (_RERANK_ONE_THREAD, _RERANK_WORKERS) if s in res["servers"]]
    out = [
        "### Reranking under `m3rag serve`",
        "",
        "`python benchmarks/bench_serve_rerank.py"
        + (" --quick" if r.quick else "")
        + f"` — `/rerank` in text-embeddings-inference's shape, one query and "
        f"{res['passages_per_request']} passages (10–120 words, `truncate: true`) per request, "
        f"{res['requests_per_cell']} requests per cell at 1, 8 and 32 concurrent clients over "
        "loopback, against `m3rag serve --reranker` with its defaults (shared reranker "
        f"batches on {_model_threads(res)} model thread{'s' if n > 1 else ''})"
        + "".join(f", `{s.removeprefix('m3rag serve --reranker ')}`" for s in loaded)
        + " and the same reranker behind a plain FastAPI endpoint that scores each request on "
        "its own. A random cross-encoder in the bge-reranker-v2-m3 layout "
        f"({ck['num_layers']} layers, hidden {ck['hidden_size']}), {res['forward_tokens']} "
        "tokens per gathered batch and per forward pass on every side (`--max-batch-tokens`). "
        "In the same run, in-process: "
        f"one `Reranker.score` call on all {offline['pairs']} pairs, "
        f"{offline['pairs_per_s']:.1f} pairs/s ({offline['requests_per_s']:.2f} requests/s); "
        f"one call per request, p50 {ms(inproc['p50_ms'])}, p95 {ms(inproc['p95_ms'])}, "
        f"{res['one_by_one_requests_per_s']:.2f} requests/s back to back.",
        "",
        *_rerank_table(res),
        "*model busy*: the share of the cell's wall time the reranker's batcher spent in the "
        "model (summed over its model threads or copies); *pairs/batch*: pairs per gathered "
        "batch; *server CPU*, *client CPU*: the server's and the load generator's CPU time over "
        "the cell, in cores.",
        "",
        *_rerank_against(
            res, _RERANK_DEFAULT, _RERANK_PLAIN, "The default server against the plain endpoint"
        ),
        *(
            _rerank_against(
                res,
                _RERANK_DEFAULT,
                _RERANK_ONE_THREAD,
                f"{_threads_desc(res)} against one (`--model-threads 1`)",
            )
            if n > 1
            else []
        ),
        *_rerank_against(
            res,
            _RERANK_WORKERS,
            _RERANK_DEFAULT,
            "Two model workers in child processes (`--model-workers 2`) against the default",
        ),
    ]
    bound = offline["requests_per_s"] / res["one_by_one_requests_per_s"]
    for key, server in (
        ("batched", "the default server"),
        ("model-workers", "`--model-workers 2`"),
    ):
        f = res.get("figures", {}).get(key)
        if f is None:
            continue
        out += [
            f"The three figures of the `/embed_all` targets, for `/rerank` with {server} (the "
            "issue sets none for `/rerank`): 32 clients against one, "
            f"{f['x32_vs_1_client']:.2f}×; against the offline call, "
            f"{f['x32_vs_offline']:.0%}; p95 at one client against the in-process call, "
            f"{f['p95_1_client_vs_in_process']:.2f}×.",
            "",
        ]
    one = res["servers"][_RERANK_DEFAULT][0]
    if one["p50_ms"] < inproc["p50_ms"]:
        out += [
            "The default server at one client came out faster than the same call in-process "
            f"(p50 {ms(one['p50_ms'])} against {ms(inproc['p50_ms'])}). Two differences may "
            "explain it, and this run does not separate them: the server cuts its passes by "
            "the cost it measured at start, the in-process call by the library's default, and "
            "the in-process calls ran first, on a machine (2 cores, shared with other jobs) "
            "that may have been busier then.",
            "",
        ]
    out += [
        "Each request already brings a batch of "
        f"{res['passages_per_request']} pairs, so there is less for shared batches to gain "
        "than with one text per request: in-process, one call on every pair ran "
        f"{bound:.2f}× as many requests a second as one call per request.",
        "",
    ]
    return out


def section_serve(r: Report) -> str:
    res = r.load("serve")
    if res is None:
        return "## Serving\n\nNo results yet: `python benchmarks/bench_serve.py`.\n"
    inproc = res["in_process_call"]
    out = [
        "## Serving: `m3rag serve` vs a plain per-request endpoint",
        "",
        f"`python benchmarks/bench_serve.py{_requests_flag(res)}` — " + _serve_setup(res),
        "",
        *_serve_table(res),
        "*model busy*: the share of the cell's wall time the batcher spent inside the model "
        "(from the server's `/metrics`; summed over the model threads or copies, so up to "
        "200% with two); *texts/batch*: texts per gathered batch"
        + (
            "; *server CPU*, *client CPU*: the server's (with its model processes) and the load "
            f"generator's CPU time over the cell, in cores (the machine has "
            f"{res['machine']['cores']})."
            if _has_cpu(res)
            else "."
        ),
        "",
        *_comparisons(res),
    ]
    one = res["servers"][_DEFAULT_SERVER]["/embed_all"][0]
    load = res.get("load_average")
    if load is not None:
        shown = ", ".join(f"{x:.1f}" for x in load)
        out += [f"Load average at the end of the run (1, 5, 15 min): {shown}.", ""]
    if one["p50_ms"] < inproc["p50_ms"]:
        out += [
            "**Read with care**: the served call at one client came out faster than the same "
            "call in-process, which cannot be a real effect — the in-process baselines were "
            "measured while the machine (2 cores, shared with other jobs) was busier. The "
            "verdicts measured against them are not proven by this run.",
            "",
        ]
    batched = res["servers"][_DEFAULT_SERVER]["/embed_all"]
    missed_3x = not res["targets_met"]["x32_vs_1_client>=3"]
    if missed_3x and "model_busy" in batched[-1]:
        first, last = batched[0], batched[-1]
        cost = res.get("forward_pass_cost", {}).get("single_text", [])
        fixed = [c["overhead_tokens"] for c in cost]
        out += [
            "Why the 3× target is missed on this machine: at 32 clients the batcher gathered "
            f"{last['texts_per_batch']:.1f} texts per batch and the model was busy "
            f"{last['model_busy']:.0%} of the time"
            + (
                f" (summed over its {_model_threads(res)} threads)"
                if _model_threads(res) > 1
                else ""
            )
            + f", against {first['model_busy']:.0%} at one "
            "client. The model bounds throughput, not the server, and on a CPU a forward pass "
            "costs its slots (texts and padding) plus a fixed part"
            + (
                f", the time of {min(fixed):.0f}–{max(fixed):.0f} tokens (measured below)"
                if fixed
                else ""
            )
            + ": packing texts into one pass saves that fixed part on each, no more. "
            "In-process, "
            "one call on every text ran at "
            f"{res['offline']['texts_per_s']:.1f} texts/s"
            + (
                f" against {res['one_by_one_texts_per_s']:.1f} texts/s one call per text "
                f"({res['offline']['texts_per_s'] / res['one_by_one_texts_per_s']:.2f}×): that "
                "ratio bounds what batching alone can gain here"
                + (
                    ", one pass at a time; passes side by side (the model threads) add a "
                    f"little, to {res['targets']['x32_vs_1_client']:.2f}× in this run"
                    if _model_threads(res) > 1
                    else ""
                )
                if "one_by_one_texts_per_s" in res
                else ""
            )
            + ". The load generator shares the "
            f"{res['machine']['cores']} cores with the server. Batching pays where a batch "
            "costs little more than one text, on a GPU: see *Serving on a GPU* below.",
            "",
        ]
    elif missed_3x:
        out += [
            "Why the 3× target is missed here (our reading; this run does not isolate it): on a "
            "CPU a forward pass already keeps the cores busy at one text, so packing texts into "
            "one pass gains little. Dynamic batching pays where a batch costs little more than "
            "one text, on a GPU: see *Serving on a GPU* below.",
            "",
        ]
    out += [*_pass_cost(res), *_gathered(res), *_workers(res), *_threads_in_process(r)]
    tiny_path = RESULTS / ("serve-tiny-quick.json" if r.quick else "serve-tiny.json")
    if tiny_path.exists():
        tiny = json.loads(tiny_path.read_text(encoding="utf-8"))
        out += [
            "### With the tests' tiny checkpoint: the server's own work",
            "",
            f"`python benchmarks/bench_serve.py --size tiny{_requests_flag(tiny)} --out "
            "benchmarks/results/serve-tiny.json` — the same load with a checkpoint whose forward pass takes "
            "milliseconds, so that what the server does around the model (HTTP, JSON, the "
            "batcher, the GIL) shows, as it does on a GPU: " + _serve_setup(tiny),
            "",
            *_serve_table(tiny),
            *_comparisons(tiny),
            *_pass_cost(tiny),
            *_gathered(tiny),
            *_workers(tiny),
        ]
    out += _serve_rerank(r)
    _serve_targets(r, "serve", res["targets"], res["targets_met"])
    if "targets_model_workers" in res:
        _serve_targets(
            r,
            "serve `--model-workers 2`",
            res["targets_model_workers"],
            res["targets_met_model_workers"],
        )
    return "\n".join(out)


DEFAULT_STEPS = tuple(name for name, _ in STEPS)
"""The steps ``run_all.py`` runs without ``--large``."""

PEERS = (
    ("milvus_lite_hybrid", "milvus-lite hybrid_search", "speedup_vs_milvus_lite"),
    ("bgem3index", "LlamaIndex BGEM3Index", "speedup_vs_bgem3index"),
    ("langchain_ensemble", "LangChain EnsembleRetriever", "speedup_vs_langchain_ensemble"),
)


def _e2e_rows(r: Report) -> list[Json]:
    merged: dict[int, Json] = {}
    for name in ("retriever", "retriever-1m", "retriever-bgem3-100k"):
        for row in (r.load(name) or {}).get("rows", []):
            into = merged.setdefault(row["passages"], {"passages": row["passages"]})
            earlier = "m3rag" in into  # an earlier run already gave this size's m3rag figures
            for key, value in row.items():
                if key.startswith("m3rag") and earlier and name != "retriever":
                    # keep the main run's m3rag figure; the peer's own run has its own ratio
                    into.setdefault(f"{key}@{name}", value)
                    continue
                into.setdefault(key, value)
    return [merged[n] for n in sorted(merged)]


def section_e2e(r: Report) -> str:
    rows = _e2e_rows(r)
    out = [
        "## End-to-end hybrid query vs milvus-lite, LlamaIndex `BGEM3Index`, LangChain",
        "",
        "`python benchmarks/bench_retriever.py --sizes 10000,100000` (and `--sizes 1000000`; "
        "BGEM3Index at 100k: `--sizes 100000 --bgem3-max 100000`) — the same synthetic vectors "
        "on every side (1024-d dense around 2,000 topics, ~60 Zipf lexical tokens, 16 ColBERT "
        "vectors per passage up to 100k), 20-token queries, **query encoding excluded "
        "everywhere** (precomputed query embeddings are handed in). m3rag: dense top-100 + "
        "lexical top-100 recall (both exact below 1M; at 1M the collection keeps an HNSW graph, "
        "`ann=True`, and dense recall comes from it, see below), every candidate scored exactly "
        "on dense, lexical, ColBERT "
        "(from the stored vectors, int8) and BM25, weighted fusion, top-10. milvus-lite: "
        "`hybrid_search` (dense FLAT/IP + sparse inverted index/IP, top-100 each, "
        "`WeightedRanker`). BGEM3Index: `query` with its model's `encode` replaced by the "
        "precomputed embedding (its scoring loop is what is timed). LangChain: "
        "`EnsembleRetriever(BM25Retriever + InMemoryVectorStore)` with the dense vectors "
        "precomputed (a BM25 + dense hybrid, not BGE-M3's lexical weights). Each peer runs in the "
        "same process run as m3rag, on the same data; ratios are peer p50 / m3rag p50 of that run.",
        "",
    ]
    if not rows:
        return "\n".join([*out, "No results yet.", ""])
    header = ["passages", "m3rag p50 (p95)"] + [f"{label} p50" for _, label, _ in PEERS]
    header += [f"vs {label.split()[-1]}" for _, label, _ in PEERS]
    body = []
    for row in rows:
        line = [
            num(row["passages"]),
            f"{ms(p50(row['m3rag']))} ({ms(p95(row['m3rag']))})"
            + ("" if row.get("m3rag_colbert", True) else ", no ColBERT")
            + (", HNSW dense recall" if row.get("m3rag_dense_recall") == "hnsw" else ""),
        ]
        line += [ms(p50(row.get(key))) if key in row else "not run" for key, _, _ in PEERS]
        line += [ratio(row.get(speed)) for _, _, speed in PEERS]
        body.append(line)
    out += [table(header, body), ""]
    at = {row["passages"]: row for row in rows}
    mid = at.get(100_000, {})
    r.target(
        "hybrid query ≥ 50× faster than milvus-lite at 100k",
        ratio(mid.get("speedup_vs_milvus_lite")),
        None if "speedup_vs_milvus_lite" not in mid else mid["speedup_vs_milvus_lite"] >= 50,
    )
    r.target(
        "hybrid query ≥ 100× faster than BGEM3Index at 100k",
        ratio(mid.get("speedup_vs_bgem3index")),
        None if "speedup_vs_bgem3index" not in mid else mid["speedup_vs_bgem3index"] >= 100,
    )
    big = at.get(1_000_000)
    if big:
        e2e = p50(big["m3rag"])
        r.target("hybrid query p50 ≤ 30 ms at 1M passages", ms(e2e), e2e is not None and e2e <= 30)
        if big.get("m3rag_dense_recall") == "hnsw" and "m3rag_exact_dense" in big:
            overlap = big.get("top10_overlap_with_exact_dense")
            out += [
                f"At 1M the dense recall comes from the collection's HNSW graph (usearch, "
                f"float16 vectors, M=16, the defaults of `ann=True`), which `search_dense` asks for "
                f"four times the 100 candidates it returns: {ms(e2e)} p50. The candidates are "
                f"then scored exactly like every other. The same queries "
                f"with exact dense recall (`HybridRetriever(exact_dense=True)`, the int8 scan) "
                f"take {ms(p50(big['m3rag_exact_dense']))} p50; the two final top-10s share "
                f"{100 * (overlap or 0):.1f}% of their hits. What the graph costs is ingest: "
                f"{num(big['passages'] / big['build_s'])} passages/s here (stores, graph and "
                "generating the synthetic data), against the index section's rate without it.",
                "",
            ]
        rows_1m = [row for row in _index_sizes(r) if row["passages"] == 1_000_000]
        if e2e is not None and e2e > 30 and rows_1m:
            d, lx = p50(rows_1m[0]["dense_exact"]), p50(rows_1m[0]["lexical"])
            out += [
                f"At 1M the hybrid query ({ms(e2e)}) misses 30 ms. Its recall paths cost about "
                f"what the index section measures on their own (dense exact scan {ms(d)}, "
                f"lexical {ms(lx)}); scoring the ~200 candidates on every path and fusing them "
                "adds the rest.",
                "",
            ]

    def draw(ax: Any) -> None:
        xs = [row["passages"] for row in rows]
        ax.loglog(
            xs,
            [p50(row["m3rag"]) for row in rows],
            "o-",
            label="m3rag HybridRetriever",
            color="#2a6fdb",
        )
        for (key, label, _), marker, color in zip(
            PEERS, "s^D", ("#d9534f", "#f0ad4e", "#5cb85c"), strict=True
        ):
            pts = [(row["passages"], p50(row[key])) for row in rows if key in row]
            if pts:
                ax.loglog(*zip(*pts, strict=True), marker + "--", label=label, color=color)
        latency_axes(ax, "passages (log)")

    out += [r.plot("e2e", draw, size=(6.5, 4.2)), ""]
    return "\n".join(out)


def section_ingest(r: Report) -> str:
    ing = r.load("ingest")
    out = ["## Ingest throughput and memory vs the same peers", ""]
    if ing is None:
        return "\n".join([*out, "No results yet: `python benchmarks/bench_ingest.py`.", ""])
    rows = ing.get("rows", [])
    found = {k for row in rows for k, v in row.items() if isinstance(v, dict)}
    systems = ["m3rag", *sorted(found - {"m3rag"})]
    labels = {
        "m3rag": "m3rag Collection",
        "milvus_lite": "milvus-lite",
        "bgem3index": "LlamaIndex BGEM3Index",
        "langchain": "LangChain BM25Retriever + InMemoryVectorStore",
    }
    out += [
        "`python benchmarks/bench_ingest.py` — each system builds from the same synthetic "
        "data (as in the end-to-end section: dense, lexical and ColBERT vectors) in its own "
        "fresh process; model forward passes are excluded, the data is generated before the "
        "clock starts, and memory is the process's peak RSS (`VmHWM`, reset once the data is "
        "generated) minus its RSS at that point. m3rag and milvus-lite write to disk as they "
        "go; BGEM3Index and the LangChain stores only keep Python objects in memory "
        "(BGEM3Index keeps the given arrays themselves, so its figure leaves its index out).",
        "",
    ]
    body = []
    for row in rows:
        for system in systems:
            entry = row.get(system)
            if not isinstance(entry, dict):
                continue
            name = labels.get(system, system)
            if "error" in entry:
                body.append([num(row["passages"]), name, "failed", "—", "—", "—", "—"])
                continue
            speed = row.get(f"ingest_speedup_vs_{system}")
            body.append(
                [
                    num(row["passages"]),
                    name,
                    f"{num(entry.get('ingest_per_s'))} /s",
                    f"{entry.get('ingest_s', 0):.1f} s",
                    f"{num(entry.get('peak_minus_baseline_mb'))} MB",
                    f"{num(entry.get('disk_mb'))} MB" if entry.get("disk_mb") is not None else "—",
                    "—" if system == "m3rag" else ratio(speed),
                ]
            )
    out += [
        table(
            [
                "passages",
                "system",
                "ingest",
                "time",
                "memory (peak − data)",
                "disk",
                "m3rag ingest is",
            ],
            body,
            "llrrrrr",
        ),
        "",
    ]

    def draw(ax: Any) -> None:
        size = max(row["passages"] for row in rows)
        last = next(row for row in rows if row["passages"] == size)
        names = [s for s in systems if isinstance(last.get(s), dict) and "ingest_per_s" in last[s]]
        ax.barh(
            names,
            [last[s]["ingest_per_s"] for s in names],
            color=["#2a6fdb" if "m3rag" in s else "#999999" for s in names],
        )
        ax.set_xlabel(f"passages / s at {size:,} passages (higher is better)")
        ax.invert_yaxis()

    if rows:
        out += [r.plot("ingest", draw, size=(6.5, 2.6)), ""]
    return "\n".join(out)


# -- the page -----------------------------------------------------------------------------------


def header(r: Report) -> str:
    rec = r.load("run_all") or {}
    vers = rec.get("versions", {})
    machine_line = rec.get("cpu_model", "unknown CPU")
    steps = rec.get("steps", {})
    default = sum(s.get("seconds", 0) for name, s in steps.items() if name in DEFAULT_STEPS)
    large = sum(s.get("seconds", 0) for name, s in steps.items() if name not in DEFAULT_STEPS)
    out = [
        "# Benchmarks",
        "",
        "<!-- generated by benchmarks/report.py from benchmarks/results/*.json: edit those "
        "scripts, not this page -->",
        "",
        "Every figure on this page is read from a results file written by a script in "
        "`benchmarks/`; every comparison runs both sides in the same process run, on the same "
        "data or checkpoint, and reports medians over repeats and the ratio (peer time / m3rag "
        "time). Models are random checkpoints in the real file layouts (no weights can be "
        "downloaded where these were measured), so throughput is meaningful while the quality "
        "of a random model is not; retrieval quality is measured on real data with a real model "
        "in [Evaluation](evaluation.md).",
        "",
        f"**Machine**: {machine_line}, 2 cores, 24 GiB, no GPU (torch uses 2 threads). "
        "**Excluded**: model forward passes wherever a section says so (index, BM25, end-to-end, "
        "ingest: precomputed embeddings on every side).",
        "",
        "**Reproduce**: `.venv/bin/python benchmarks/run_all.py` runs every default-size "
        "benchmark and rewrites this page and its plots"
        + (f" ({default / 60:.0f} minutes here)" if default else "")
        + "; `--large` adds the 1M-passage runs, ColBERT at 100k passages in int8 and "
        "BGEM3Index at 100k"
        + (f" ({large / 60:.0f} more minutes)" if large else "")
        + "; `--quick` is the few-minute smoke run CI does; `--only index,bm25` reruns some "
        "areas. Each script also runs alone (`python benchmarks/bench_index.py --help`).",
        "",
    ]
    if vers:
        out += [
            "<details><summary>Versions of this run</summary>",
            "",
            table(["package", "version"], [[k, v] for k, v in vers.items()], "ll"),
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)


def bm25_analyzer_section(r: Report, ana: Any) -> list[str]:
    """The per-language BM25 table of ``bench_bm25_analyzer.py`` (#15)."""
    rows = ana.get("rows", []) if isinstance(ana, dict) else []
    by: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "system" in row:  # the pre-#15 format has no system: skip it
            by.setdefault(row["dataset"], {})[row["system"]] = row
    if not by:
        return []
    lines = [
        "### BM25 analyzer",  # docs/evaluation.md links #bm25-analyzer
        "",
        "Every language in one run (`python benchmarks/bench_bm25_analyzer.py`): nDCG@10 of "
        "m3rag before #15 (one regex, English stop words and stemmer for every language), "
        'm3rag now (`lang="auto"`: detection and a pipeline per language family), and bm25s with '
        "its best per-language tokens (PyStemmer Snowball and its stop words, jieba for Chinese, "
        "character bigrams for Thai; k1 1.5, b 0.75). Query p50 is one query at a time, "
        "tokenising included; build is detection, analysis, add and commit.",
        "",
    ]
    body = []
    for dataset, sides in by.items():
        m3, old, b = sides.get("m3rag"), sides.get("m3rag legacy"), sides.get("bm25s")
        if not (m3 and b):
            continue
        det = m3.get("detection") or {}
        body.append(
            [
                dataset,
                f"{old['ndcg@10']:.4f}" if old else "—",
                f"**{m3['ndcg@10']:.4f}**",
                f"{b['ndcg@10']:.4f}",
                str(b.get("setup", "")),
                f"{m3['query_p50_ms']:.3f}",
                f"{b['query_p50_ms']:.3f}",
                f"{m3.get('docs_per_s', 0):,.0f}",
                ", ".join(m3.get("families") or []),
                f"{det.get('accuracy', 0):.1%} / {det.get('us_per_query', 0):.0f} µs",
            ]
        )
        r.target(
            f"BM25 nDCG@10 on {dataset} ≥ bm25s's best setup",
            f"{m3['ndcg@10']:.4f} vs {b['ndcg@10']:.4f}",
            m3["ndcg@10"] >= b["ndcg@10"],
        )
    header = [
        "dataset",
        "before",
        "m3rag",
        "bm25s",
        "bm25s tokens",
        "m3rag p50 ms",
        "bm25s p50 ms",
        "m3rag build docs/s",
        "families",
        "detection (queries)",
    ]
    lines += [table(header, body, "lrrrlrrrll"), ""]
    if isinstance(ana, dict) and "load_average" in ana:
        start = ana.get("load_average_start") or ana["load_average"]
        lines += [
            f"Load average (1 min) at the start and end of the run: {start[0]:.1f}, "
            f"{ana['load_average'][0]:.1f} (2 cores shared with other jobs: the absolute times "
            "are inflated, the ratios within a row less so).",
            "",
        ]
    return lines


def render(*, quick: bool = False, page: Path | None = None) -> Path:
    """Write the page (and its plots beside it, in ``img/``); returns its path."""
    page = page or (
        RESULTS / "quick" / "benchmarks.md" if quick else HERE.parent / "docs" / "benchmarks.md"
    )
    r = Report(quick=quick, page=page)
    body = [
        section_encoder(r),
        section_reranker(r),
        section_index(r),
        section_bm25(r),
        section_e2e(r),
        section_ingest(r),
        section_serve(r),
    ]
    targets = table(
        ["target", "measured", "verdict"],
        [[what, measured, verdict(met)] for what, measured, met in r.targets],
        "llr",
    )
    missed = [what for what, _, met in r.targets if met is False]
    summary = [
        "## Targets",
        "",
        targets,
        "",
        (
            "Where a target is missed, its section says where the time goes."
            if missed
            else "Every measured target is met."
        ),
        "",
    ]
    page.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header(r), *summary, *body]).rstrip() + "\n"
    kept = hand_written(page)
    if kept:
        text += "\n" + kept
    page.write_text(text, encoding="utf-8")
    return page


HAND_WRITTEN = "(hand-run, not generated)"


def hand_written(page: Path) -> str:
    """The page's sections marked ``(hand-run, not generated)``, kept across renders.

    Such a section reports a script this renderer does not read (e.g. ``bench_milvus.py``);
    it sits at the end of the page and is carried over as written.
    """
    if not page.exists():
        return ""
    sections = re.split(r"(?m)^(?=## )", page.read_text(encoding="utf-8"))
    kept = [
        sec.rstrip() + "\n"
        for sec in sections
        if sec.startswith("## ") and HAND_WRITTEN in sec.splitlines()[0]
    ]
    return "\n".join(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="render the --quick results")
    parser.add_argument("--page", type=Path, default=None)
    args = parser.parse_args()
    print(render(quick=args.quick, page=args.page))


if __name__ == "__main__":
    main()
