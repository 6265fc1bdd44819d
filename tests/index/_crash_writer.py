"""Child process for the crash test: commit batches forever, logging each one before and after."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from m3rag import Collection
from m3rag.testing import random_outputs


def log(path: Path, record: dict[str, object]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def main() -> None:
    folder, logfile = Path(sys.argv[1]), Path(sys.argv[2])
    if (folder / "manifest.json").exists():
        col = Collection.open(folder)
    else:
        col = Collection.create(folder, heads=("dense", "sparse", "colbert"), dim=16, colbert_dim=8)
    sys.stdout.write("ready\n")  # imported and opened: the parent's clock for the kill starts
    sys.stdout.flush()
    while True:
        gen = col.generation + 1
        batch = random_outputs(20, seed=gen)
        ids = [f"g{gen}-{i}" for i in range(20)]
        live = col.ids()
        deleted = live[:3] if gen % 3 == 0 else []
        replaced = live[3:5] if gen % 4 == 0 else []
        log(logfile, {"begin": gen, "add": ids, "delete": deleted, "replace": replaced})
        col.add([f"text of {i}" for i in ids], ids=ids, embeddings=batch)
        if deleted:
            col.delete(deleted)
        if replaced:
            col.upsert(
                [f"replaced {i} at {gen}" for i in replaced],
                ids=replaced,
                embeddings=random_outputs(len(replaced), seed=10_000 + gen),
            )
        col.commit()
        log(logfile, {"committed": gen})


if __name__ == "__main__":
    main()
