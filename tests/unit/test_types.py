from __future__ import annotations

import numpy as np
import pytest

from m3rag import M3Output


def _out(n: int = 3) -> M3Output:
    rng = np.random.default_rng(0)
    return M3Output.build(
        dense_vecs=rng.standard_normal((n, 4)).astype(np.float32),
        lexical_weights=[{i: 0.5, 7: 0.25} for i in range(n)],
        colbert_vecs=[rng.standard_normal((i + 1, 4)).astype(np.float32) for i in range(n)],
        truncated=[False, True, False][:n],
    )


def test_build_derives_counts_and_heads() -> None:
    out = _out()
    assert len(out) == 3
    assert out.heads == ("dense", "sparse", "colbert")
    assert out.token_counts.tolist() == [2, 3, 4]
    assert out.truncated_indices == [1]
    assert out.dim == 4
    assert "truncated=[1]" in repr(out)


def test_arrays_are_read_only_and_fields_frozen() -> None:
    out = _out()
    assert out.dense_vecs is not None and out.colbert_vecs is not None
    with pytest.raises(ValueError, match="read-only"):
        out.dense_vecs[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        out.colbert_vecs[0][0, 0] = 1.0
    with pytest.raises(AttributeError):
        out.dense_vecs = None  # type: ignore[misc]


def test_indexing_and_concat_round_trip() -> None:
    out = _out()
    first, rest = out[0], out[1:]
    assert len(first) == 1 and len(rest) == 2
    again = M3Output.concat([first, rest])
    assert again.dense_vecs is not None and out.dense_vecs is not None
    np.testing.assert_array_equal(again.dense_vecs, out.dense_vecs)
    assert again.lexical_weights == out.lexical_weights
    assert again.truncated.tolist() == out.truncated.tolist()
    picked = out[[2, 0]]
    assert picked.lexical_weights == [{2: 0.5, 7: 0.25}, {0: 0.5, 7: 0.25}]
    with pytest.raises(IndexError):
        out[5]


def test_inconsistent_heads_are_rejected() -> None:
    with pytest.raises(ValueError, match="disagree"):
        M3Output.build(dense_vecs=np.zeros((2, 3), np.float32), lexical_weights=[{}])
    with pytest.raises(ValueError, match="at least one"):
        M3Output.build()
    dense_only = M3Output.build(dense_vecs=np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="different heads"):
        M3Output.concat([dense_only, _out(1)])
