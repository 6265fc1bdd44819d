"""The padding bound of a forward pass: its device default, its checks, and outputs it cannot change."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag import M3Encoder, Reranker
from m3rag._torchutil import CPU_MAX_PADDING

pytestmark = pytest.mark.model


def test_no_bound_by_default_and_none_is_the_device_choice(
    tiny_m3_path, tiny_reranker_path
) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu")
    assert enc.max_padding == 1.0  # offline encoding: no bound (see CPU_MAX_PADDING)
    enc.max_padding = None  # the device's choice for a server's small mixed batches
    assert enc.max_padding == CPU_MAX_PADDING
    enc.max_padding = 0
    assert enc.max_padding == 0.0
    assert M3Encoder(tiny_m3_path, device="cpu", max_padding=None).max_padding == CPU_MAX_PADDING
    assert Reranker(tiny_reranker_path, device="cpu").max_padding == 1.0


def test_the_server_bounds_its_encoders_padding(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag.cli._serve import serving_batches

    enc = serving_batches(M3Encoder(tiny_m3_path, device="cpu"), 2048)
    assert enc.max_batch_tokens == 2048
    assert enc.max_padding == CPU_MAX_PADDING


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_a_bad_bound_is_refused_before_loading(tiny_m3_path, tiny_reranker_path, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"max_padding must be a number in \[0, 1\] or None"):
        M3Encoder(tiny_m3_path, device="cpu", max_padding=bad)
    with pytest.raises(ValueError, match=r"max_padding must be a number in \[0, 1\] or None"):
        Reranker(tiny_reranker_path, device="cpu", max_padding=bad)
    enc = M3Encoder(tiny_m3_path, device="cpu", max_padding=0.5)
    with pytest.raises(ValueError, match="max_padding"):
        enc.max_padding = bad
    assert enc.max_padding == 0.5  # a refused value changes nothing


words = st.sampled_from(["alpha", "北京", "γάμμα", "data", "x", "the", "ColBERT", "é"])
texts = st.lists(st.lists(words, min_size=0, max_size=60).map(" ".join), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def encoders(tiny_m3_path) -> dict[float, M3Encoder]:  # type: ignore[no-untyped-def]
    return {
        bound: M3Encoder(tiny_m3_path, device="cpu", max_batch_tokens=512, max_padding=bound)
        for bound in (0.0, 0.1, 1.0)
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=texts)
def test_the_bound_changes_the_passes_not_the_outputs(
    encoders: dict[float, Any], batch: list[str]
) -> None:
    outs = {
        b: e.encode_corpus(batch, dense=True, sparse=True, colbert=True)
        for b, e in encoders.items()
    }
    ref = outs[1.0]
    for out in outs.values():
        np.testing.assert_allclose(out.dense_vecs, ref.dense_vecs, atol=1e-5)
        for a, b in zip(out.colbert_vecs, ref.colbert_vecs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for a, b in zip(out.lexical_weights, ref.lexical_weights, strict=True):
            assert a.keys() == b.keys()
            np.testing.assert_allclose(list(a.values()), [b[k] for k in a], atol=1e-5)


def test_reranker_scores_do_not_depend_on_the_bound(tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    pairs = [
        ("what is m3", "short"),
        ("what is m3", "a much longer passage " * 20),
        ("q", "mid " * 7),
    ]
    scores = [
        Reranker(tiny_reranker_path, device="cpu", max_padding=b).score(pairs).scores
        for b in (0.0, 0.1, 1.0)
    ]
    for s in scores:
        np.testing.assert_allclose(s, scores[-1], atol=1e-5)
