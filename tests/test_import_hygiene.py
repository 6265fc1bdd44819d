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
