"""examples/encode.py runs offline with the tiny checkpoint and with the shipped MiniLM.

The README runs the other examples, as written: tests/test_docs.py runs them and checks what they
print (OUTPUT_CHECKS).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.model
def test_encode_example_runs(tiny_m3_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "encode.py"), "--model", str(tiny_m3_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "M3Output(n=3" in out.stdout
    assert "colbert=" in out.stdout


@pytest.mark.model
def test_encode_example_with_a_dense_only_model(minilm_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "encode.py"), "--model", str(minilm_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "heads=['dense']" in out.stdout
