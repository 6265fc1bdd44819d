"""ColBERT MaxSim over candidate sets: float32 exact across row blocks, bfloat16 within its bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3rag import Collection, M3Output
from m3rag.index import stores
from m3rag.scoring import colbert_score


def _mats(n: int, seed: int, dim: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = rng.standard_normal((int(rng.integers(1, 40)), dim)).astype(np.float32)
        out.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("block", [7, None])
def test_maxsim_precisions_against_brute_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, block: int | None
) -> None:
    if block is not None:  # documents straddle row blocks
        monkeypatch.setattr(stores, "maxsim_block_rows", lambda dim: block)
    monkeypatch.setattr(stores, "_COLBERT_APPEND", 13)  # and are written 13 at a time
    mats = _mats(120, 1)
    with Collection.create(
        tmp_path / "c", heads=("colbert",), colbert_dim=32, colbert_dtype=dtype
    ) as col:
        col.add([f"t{i}" for i in range(120)], embeddings=M3Output.build(colbert_vecs=mats))
        col.commit()
        keys = np.array([5, 0, 119, 64, 5, 33], dtype=np.int64)
        stored = col.colbert_vecs(keys)  # the stored (dequantised) matrices
        q = _mats(1, 2)[0]
        want = np.array([colbert_score(q, m) for m in stored])
        exact = col.colbert_scores(q, keys)
        np.testing.assert_allclose(exact, want, rtol=1e-5, atol=1e-6)
        fast = col.colbert_scores(q, keys, precision="bfloat16")
        assert np.abs(fast - want).max() <= 3 * 2.0**-8
        if dtype != "bfloat16":
            assert np.abs(fast - want).max() > 0  # it really is the other computation
        with pytest.raises(ValueError, match="precision"):
            col.colbert_scores(q, keys, precision="float8")
    # what is stored is the input within the storage form's rounding
    given = np.concatenate([mats[k] for k in keys.tolist()])
    kept = np.concatenate(stored)
    tolerance = {"float32": 0, "float16": 2.0**-11, "bfloat16": 2.0**-8, "int8": 2.0**-7}[dtype]
    assert np.abs(kept - given).max() <= tolerance * np.abs(given).max() + 1e-12


def test_a_maxsim_block_is_4_mib_of_float32_rows() -> None:
    assert stores.maxsim_block_rows(1024) == 1024  # BGE-M3's ColBERT width
    assert stores.maxsim_block_rows(384) == 2560  # 2730, down to a multiple of 256
    assert stores.maxsim_block_rows(32) == 32768
    assert stores.maxsim_block_rows(1 << 20) == 256  # never below 256 rows
