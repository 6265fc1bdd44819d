"""Fusion: hand-computed values and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m3rag.fusion import PATHS, FusionConfig, fuse, normalize, ranks, rrf, weighted_sum

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


def test_default_weights_are_the_bge_m3_combination() -> None:
    cfg = FusionConfig()
    assert dict(cfg.weights) == pytest.approx({"dense": 0.4, "lexical": 0.2, "colbert": 0.4})
    scores = {"dense": [0.6, 0.3], "lexical": [0.2, 0.0], "colbert": [0.7, 0.5]}
    # (0.4*d + 0.2*l + 0.4*c) / (0.4+0.2+0.4), as compute_score's colbert+sparse+dense
    want = [(0.4 * 0.6 + 0.2 * 0.2 + 0.4 * 0.7) / 1.0, (0.4 * 0.3 + 0.0 + 0.4 * 0.5) / 1.0]
    np.testing.assert_allclose(fuse(scores, cfg), want)


def test_hand_computed_minmax_and_zscore() -> None:
    np.testing.assert_allclose(normalize([1.0, 3.0, 2.0], "minmax"), [0.0, 1.0, 0.5])
    z = normalize([1.0, 2.0, 3.0], "zscore")
    np.testing.assert_allclose(z, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    cfg = FusionConfig(weights={"dense": 1, "bm25": 3}, normalization="minmax")
    out = fuse({"dense": [0.2, 0.4], "bm25": [10.0, 5.0]}, cfg)
    np.testing.assert_allclose(out, [(1 * 0 + 3 * 1) / 4, (1 * 1 + 3 * 0) / 4])


def test_hand_computed_weighted_rrf() -> None:
    cfg = FusionConfig(method="rrf", weights={"dense": 2, "lexical": 1}, rrf_k=10)
    out = fuse({"dense": [0.9, 0.1, 0.5], "lexical": [0.0, 0.3, 0.2]}, cfg)
    w_d, w_l = 2 / 3, 1 / 3
    want = [w_d / 11 + w_l / 13, w_d / 13 + w_l / 11, w_d / 12 + w_l / 12]
    np.testing.assert_allclose(out, want)


def test_rrf_ties_share_the_best_rank() -> None:
    np.testing.assert_array_equal(ranks([0.5, 0.9, 0.5, 0.1]), [2, 1, 2, 4])
    out = rrf({"dense": [0.5, 0.5, 0.1]}, {"dense": 1.0}, k=60)
    assert out[0] == out[1] == 1 / 61
    assert out[2] == 1 / 63


def test_missing_scores_and_empty_paths() -> None:
    assert fuse({}, FusionConfig()).shape == (0,)
    assert fuse({"dense": [], "lexical": []}, FusionConfig()).shape == (0,)
    out = weighted_sum({"dense": [0.5, np.nan]}, {"dense": 1.0})
    np.testing.assert_allclose(out, [0.5, 0.0])
    r = rrf({"dense": [np.nan, 0.2]}, {"dense": 1.0}, k=0)
    np.testing.assert_allclose(r, [0.0, 1.0])
    # a weighted path with no scores at all contributes nothing
    np.testing.assert_allclose(fuse({"dense": [0.3]}, FusionConfig()), [0.4 * 0.3])
    with pytest.raises(ValueError, match="same candidates"):
        fuse({"dense": [1.0], "lexical": [1.0, 2.0]}, FusionConfig())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": {"dense": 0.0, "lexical": 0.0}}, "all zero"),
        ({"weights": {"dense": -1.0}}, "non-negative"),
        ({"weights": {"dense": math.inf}}, "finite"),
        ({"weights": {"sparse": 1.0}}, "valid paths are"),
        ({"method": "borda"}, "method"),
        ({"normalization": "l2"}, "normalization"),
        ({"rrf_k": -1}, "rrf_k"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FusionConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_path_message_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        FusionConfig(weights={"splade": 1})
    for path in PATHS:
        assert path in str(err.value)


scores_st = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.fixed_dictionaries({p: st.lists(finite, min_size=n, max_size=n) for p in PATHS})
)
weights_st = st.dictionaries(
    st.sampled_from(PATHS), st.floats(min_value=0.01, max_value=10), min_size=1
)


@settings(max_examples=80, deadline=None)
@given(
    scores_st,
    weights_st,
    st.floats(min_value=0.01, max_value=100),
    st.sampled_from(["none", "minmax", "zscore"]),
)
def test_weights_invariant_under_scaling(scores, weights, factor, norm) -> None:  # type: ignore[no-untyped-def]
    a = FusionConfig(weights=weights, normalization=norm)
    b = FusionConfig(weights={p: w * factor for p, w in weights.items()}, normalization=norm)
    np.testing.assert_allclose(fuse(scores, a), fuse(scores, b), rtol=1e-9, atol=1e-9)
    ra = FusionConfig(method="rrf", weights=weights)
    rb = FusionConfig(method="rrf", weights={p: w * factor for p, w in weights.items()})
    np.testing.assert_allclose(fuse(scores, ra), fuse(scores, rb), rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=20), finite)
def test_constant_lists_normalise_to_fixed_values(n: int, c: float) -> None:
    assert (normalize([c] * n, "minmax") == 1.0).all()
    assert (normalize([c] * n, "zscore") == 0.0).all()
    assert (normalize([c] * n, "none") == c).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=30))
def test_normalisations_preserve_order(values: list[float]) -> None:
    base = np.asarray(values)
    for method in ("minmax", "zscore"):
        out = normalize(base, method)  # type: ignore[arg-type]
        i, j = np.argmax(base), np.argmin(base)
        assert out[i] >= out[j]
        mm = normalize(base, "minmax")
        assert mm.min() >= 0.0 and mm.max() <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=30))
def test_ranks_are_competition_ranks(values: list[float]) -> None:
    r = ranks(values)
    for i, v in enumerate(values):
        assert r[i] == 1 + sum(1 for w in values if w > v)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(PATHS),
        st.floats(min_value=1e300, max_value=1.7976931348623157e308),
        min_size=2,
    ),
    st.floats(min_value=1e-300, max_value=1e300),
)
def test_huge_weights_normalise_as_their_ratios(weights: dict[str, float], scale: float) -> None:
    """Finite weights whose sum overflows still normalise to their ratios (not to all 0)."""
    cfg = FusionConfig(weights=weights)
    top = max(weights.values())
    small = FusionConfig(weights={p: w / top * scale for p, w in weights.items()})
    assert math.fsum(cfg.weights.values()) == pytest.approx(1.0)
    assert dict(cfg.weights) == pytest.approx(dict(small.weights), rel=1e-12)
    scores = {p: [1.0, 2.0] for p in weights}
    np.testing.assert_allclose(fuse(scores, cfg), [1.0, 2.0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rrf_k": 10**400},
        {"rrf_k": -(10**400)},
        {"weights": {"dense": 10**400}},
        {"weights": {"dense": 1.0, "bm25": 10**5000}},
    ],
)
def test_ints_too_large_for_a_float_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="too large for a float"):
        FusionConfig(**kwargs)  # type: ignore[arg-type]
