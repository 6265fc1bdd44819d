"""The int8 dense scan: its error bound holds, and exact search stays exact with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m3rag import Collection, M3Output
from m3rag.index.stores import DenseScan, DenseStore, quantise_rows, scan_width, topk


def _brute_force(stored: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    exact = stored.astype(np.float64) @ q.astype(np.float64)
    order = np.lexsort((np.arange(len(exact)), -exact))[:k]
    return order, exact[order]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(1, 70),
    spread=st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e4]),
)
def test_quantised_rows_and_scores_stay_within_the_bound(
    seed: int, dim: int, spread: float
) -> None:
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((64, dim)) * spread).astype(np.float32)
    rows[0] = 0.0  # an all-zero row
    rows[1, : max(1, dim // 2)] = 0.0
    codes, meta = quantise_rows(rows, scan_width(dim))
    assert codes.shape == (64, scan_width(dim))
    assert not codes[:, dim:].any()
    assert codes.dtype == np.int8
    assert np.abs(codes.astype(np.int32)).max() <= 127
    scale, residual = meta[:, 0], meta[:, 1]
    # every scale is a bfloat16 value, so the kernel applies it exactly
    assert (scale.view(np.uint32) & 0xFFFF).max() == 0
    true_residual = np.linalg.norm(
        rows.astype(np.float64) - codes[:, :dim].astype(np.float64) * scale[:, None], axis=1
    )
    assert (true_residual <= residual).all()
    q = (rng.standard_normal(dim) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    max_norm = float(np.linalg.norm(rows.astype(np.float64), axis=1).max())
    scan = DenseScan(codes, meta)
    approx = scan.approx(q)
    base, c = scan.error_bound(q, max_norm)
    exact = rows.astype(np.float64) @ q.astype(np.float64)
    assert (np.abs(approx - exact) <= base + c * np.abs(approx)).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_scan_search_is_exact_on_near_ties(dtype: str) -> None:
    # many rows share almost the same score: the bound must widen the rescoring enough
    rng = np.random.default_rng(7)
    base = rng.standard_normal(96).astype(np.float32)
    rows = base + 1e-3 * rng.standard_normal((3000, 96)).astype(np.float32)
    rows = np.vstack([rows, rng.standard_normal((3000, 96)).astype(np.float32)])
    stored = rows.astype(dtype)
    q = base / np.linalg.norm(base)
    codes, meta = quantise_rows(stored, scan_width(96))
    scan = DenseScan(codes, meta)
    max_norm = float(np.linalg.norm(stored.astype(np.float64), axis=1).max())
    mask = np.ones(len(rows), dtype=np.bool_)
    mask[::3] = False
    keys, scores = DenseStore.search(stored, q, 25, mask, max_norm, scan)
    allowed = np.flatnonzero(mask)
    _, want_scores = _brute_force(stored[allowed].astype(np.float32), q, 25)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    # Scores are float32: rows whose exact scores differ by less than float32 resolves may
    # swap (which ones depends on the BLAS's summation order). Beyond that, the top 25 is exact.
    exact = stored.astype(np.float64) @ q.astype(np.float64)
    tol = 4 * np.finfo(np.float32).eps * float(np.abs(want_scores).max())
    assert mask[keys].all()
    assert len(set(keys.tolist())) == 25
    np.testing.assert_allclose(exact[keys], want_scores, rtol=0, atol=tol)
    outside = np.setdiff1d(allowed, keys)
    assert exact[outside].max() <= exact[keys].min() + tol


@pytest.mark.parametrize("dense_scan", ["int8", None])
def test_collection_search_is_the_same_with_and_without_the_scan(
    tmp_path: Path, dense_scan: str | None
) -> None:
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((500, 32)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    with Collection.create(
        tmp_path / "c", heads=("dense",), dim=32, dense_dtype="float16", dense_scan=dense_scan
    ) as col:
        col.add(
            [f"t{i}" for i in range(500)],
            ids=[str(i) for i in range(500)],
            embeddings=M3Output.build(dense_vecs=dense),
        )
        col.delete([str(i) for i in range(0, 500, 7)])
    assert (tmp_path / "c" / "dense.scan.int8").exists() == (dense_scan == "int8")
    col = Collection.open(tmp_path / "c", read_only=True)
    stored = dense.astype(np.float16).astype(np.float32)
    alive = np.array([i % 7 != 0 for i in range(500)])
    for seed in range(10):
        q = np.random.default_rng(100 + seed).standard_normal(32).astype(np.float32)
        hits = col.search_dense(q, k=15)
        exact = np.where(alive, stored @ q, -np.inf)
        order = np.lexsort((np.arange(500), -exact))[:15]
        assert hits.ids == [str(i) for i in order]
        np.testing.assert_allclose(hits.scores, exact[order], rtol=1e-5, atol=1e-6)
    col.close()


def test_bad_dense_scan_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dense_scan"):
        Collection.create(tmp_path / "c", heads=("dense",), dim=4, dense_scan="int4")
    assert not (tmp_path / "c" / "manifest.json").exists()


@pytest.mark.parametrize("k", [1, 10, 100])
def test_topk_on_large_arrays_matches_a_stable_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 50, 200_000).astype(np.float32)  # many ties
    scores[rng.random(200_000) < 0.5] = -np.inf
    want = np.lexsort((np.arange(len(scores)), -scores))[:k]
    assert topk(scores, k).tolist() == want.tolist()
    only_three = np.full(200_000, -np.inf, dtype=np.float32)
    only_three[[5, 70_000, 9]] = [1.0, 2.0, 1.0]
    assert topk(only_three, k).tolist() == [70_000, 5, 9][:k]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8])
def test_gather_rows_reads_the_same_rows_as_indexing(
    tmp_path: Path, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m3rag.index import _files
    from m3rag.index._files import Column, gather_rows

    monkeypatch.setattr(_files, "SMALL_MAP_BYTES", 0)  # read every map with pread

    rng = np.random.default_rng(3)
    data = (rng.standard_normal((300, 9)) * 50).astype(dtype)
    col = Column(tmp_path / "x", dtype, 9)
    col.append(data[:100])
    col.append(data[100:])
    mapped = col.read(300)
    keys = np.array([0, 299, 17, 17, -1, 150, 18, 16, 19])
    np.testing.assert_array_equal(gather_rows(mapped, keys), data[keys])
    np.testing.assert_array_equal(gather_rows(mapped, np.arange(40, 260)), data[40:260])
    np.testing.assert_array_equal(gather_rows(mapped, [3, 3, 4, 9]), data[[3, 3, 4, 9]])
    assert gather_rows(mapped, np.zeros(0, np.int64)).shape == (0, 9)
    # a slice of a map and a plain array fall back to indexing
    np.testing.assert_array_equal(gather_rows(mapped[10:], [0, 5]), data[[10, 15]])
    np.testing.assert_array_equal(gather_rows(data, [3, 4]), data[[3, 4]])
    one = Column(tmp_path / "y", dtype)
    one.append(data[:, 0].copy())
    np.testing.assert_array_equal(gather_rows(one.read(300), [7, 8]), data[[7, 8], 0])
    with pytest.raises(IndexError):
        gather_rows(mapped, [300])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_gather_rows_does_not_map_the_rows(tmp_path: Path) -> None:
    from m3rag.index._files import Column, gather_rows

    def rss_file_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("RssFile:")[1].split()[0])

    col = Column(tmp_path / "big", np.float16, 1024)
    rows = 32_768  # 64 MiB
    for start in range(0, rows, 4096):
        col.append(np.full((4096, 1024), start % 7, np.float16))
    mapped = col.read(rows)
    keys = np.random.default_rng(0).choice(rows, 2000, replace=False)
    before = rss_file_kb()
    got = gather_rows(mapped, keys)
    assert rss_file_kb() - before < 4096  # indexing the map here maps tens of MB
    np.testing.assert_array_equal(got[:, 0], (keys // 4096 * 4096) % 7)


@pytest.mark.parametrize("n", [5, 1000, 70_000])
def test_top_values_are_the_k_largest_finite(n: int) -> None:
    from m3rag.index.stores import top_values

    rng = np.random.default_rng(n)
    scores = rng.standard_normal(n).astype(np.float32)
    scores[::3] = -np.inf
    finite = np.sort(scores[np.isfinite(scores)])[::-1]
    for k in (1, 3, 10, n):
        np.testing.assert_array_equal(np.sort(top_values(scores, k))[::-1], finite[:k])
    assert len(top_values(np.full(10, -np.inf, np.float32), 3)) == 0
    assert len(top_values(scores, 0)) == 0
    # NaN and +inf are not finite scores: they must not take a top-k slot
    odd = scores.copy()
    odd[1::7] = np.nan
    odd[2::11] = np.inf
    kept = np.sort(odd[np.isfinite(odd)])[::-1]
    for k in (1, 3, 10):
        np.testing.assert_array_equal(np.sort(top_values(odd, k))[::-1], kept[:k])
        want = np.lexsort((np.arange(n), -np.where(np.isfinite(odd), odd, -np.inf)))
        want = want[np.isfinite(odd[want])][:k]
        assert topk(odd, k).tolist() == want.tolist()
