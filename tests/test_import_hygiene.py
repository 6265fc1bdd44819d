from __future__ import annotations

import subprocess
import sys


def test_importing_m3rag_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, m3rag, m3rag.testing, m3rag.scoring;"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'tokenizers',"
        " 'langchain_core', 'llama_index', 'tantivy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_writing_and_lexical_search_do_not_load_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # torch is only needed by the dense scan and ColBERT scoring; an ingest-only or BM25 process
    # should not pay its ~1 s import
    code = f"""
import sys
import numpy as np
from m3rag import Collection, M3Output
rng = np.random.default_rng(0)
dense = rng.standard_normal((20, 32)).astype(np.float32)
out = M3Output.build(dense_vecs=dense, lexical_weights=[{{5: 0.3, 9: 0.1}}] * 20)
with Collection.create({str(tmp_path / "c")!r}, heads=("dense", "sparse"), dim=32) as col:
    col.add([f"text {{i}}" for i in range(20)], embeddings=out)
col = Collection.open({str(tmp_path / "c")!r}, read_only=True)
col.search_lexical({{5: 1.0}}, k=3)
col.search_bm25("text", k=3)
print("torch" in sys.modules)
col.search_dense(dense[0], k=3)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
