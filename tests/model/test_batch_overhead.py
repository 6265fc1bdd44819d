"""The cut of forward passes by cost: its measured default, its checks, and outputs it cannot change."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag import M3Encoder, Reranker

pytestmark = pytest.mark.model


def test_a_cpu_cuts_by_a_typical_cost_by_default_and_auto_is_measured_once(
    tiny_m3_path, tiny_reranker_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from m3rag._torchutil import CPU_BATCH_OVERHEAD

    enc = M3Encoder(tiny_m3_path, device="cpu")
    measured = []
    monkeypatch.setattr(enc, "_measure_batch_overhead", lambda: measured.append(1) or 5)
    # the default ("device"): a typical CPU figure, never measured
    assert enc.batch_overhead == CPU_BATCH_OVERHEAD == 128 and not measured
    monkeypatch.undo()
    measured = []
    real = enc._measure_batch_overhead
    monkeypatch.setattr(enc, "_measure_batch_overhead", lambda: measured.append(real()) or 7)
    enc.batch_overhead = "auto"  # the device's choice for a server's small mixed batches
    assert enc.batch_overhead == 7 and enc.batch_overhead == 7
    assert len(measured) == 1 and isinstance(measured[0], int) and measured[0] >= 0
    enc.batch_overhead = 0
    assert enc.batch_overhead == 0
    enc.batch_overhead = "auto"
    assert enc.batch_overhead == 7 and len(measured) == 1  # kept from the first measurement
    assert Reranker(tiny_reranker_path, device="cpu").batch_overhead == CPU_BATCH_OVERHEAD
    enc.batch_overhead = None  # each pass filled to the limits
    assert enc.batch_overhead is None
    rr = Reranker(tiny_reranker_path, device="cpu", batch_overhead="auto")
    assert isinstance(rr.batch_overhead, int)
    assert Reranker(tiny_reranker_path, device="cpu", batch_overhead=7).batch_overhead == 7


def test_the_default_pads_a_mixed_call_far_less_than_filled_passes(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    """A call of a hundred texts of 5-120 words: filled to the default budget it goes in two
    passes padded to 2.5x its tokens (BGE-M3's shape ran 2.3x slower so on 2 cores)."""
    from m3rag.testing import multilingual_corpus

    enc = M3Encoder(tiny_m3_path, device="cpu")
    texts = multilingual_corpus(96, seed=11, min_words=5, max_words=120)
    lengths = np.array([len(ids) for ids in enc.tokenizer(texts)["input_ids"]])

    def padding() -> float:
        plan = enc._plan(lengths)
        return float(sum(len(b) * lengths[b].max() for b in plan) / lengths.sum())

    cut = padding()
    enc.batch_overhead = None
    assert cut < 1.2 < 2 < padding()


@pytest.mark.parametrize("mode", ["auto", "device"])
def test_auto_and_the_default_are_no_cut_on_a_gpu(mode, tiny_m3_path, tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    for model in (
        M3Encoder(tiny_m3_path, device="cpu", batch_overhead=mode),
        Reranker(tiny_reranker_path, device="cpu", batch_overhead=mode),
    ):
        model.device = torch.device("cuda")  # only the device's kind is read: nothing runs
        assert model.batch_overhead is None


class _AffineModel(torch.nn.Module):
    """A forward pass that takes ``fixed + per_token x slots`` seconds."""

    def __init__(self, fixed: float, per_token: float) -> None:
        super().__init__()
        self.fixed, self.per_token = fixed, per_token

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        time.sleep(self.fixed + self.per_token * input_ids.numel())


@pytest.mark.parametrize(("fixed", "per_token", "expected"), [(0.03, 5e-5, 600), (0.0, 5e-5, 0)])
def test_the_measurement_is_the_fixed_cost_in_token_slots(
    tiny_m3_path, fixed, per_token, expected
) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu", batch_overhead="auto")
    enc._model = _AffineModel(fixed, per_token)
    # the fixed cost over the time of one slot; sleep overshoots a little, each pass alike
    assert enc.batch_overhead == pytest.approx(expected, abs=max(0.1 * expected, 12))


def test_the_server_cuts_its_models_passes_by_cost(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    from m3rag.cli._serve import serving_batches

    enc = M3Encoder(tiny_m3_path, device="cpu")
    measured = []
    enc._measure_batch_overhead = lambda: measured.append(1) or 42  # type: ignore[method-assign]
    assert serving_batches(enc, 2048) is enc
    assert measured == [1]  # at start-up, not at the first request
    assert enc.max_batch_tokens == 2048
    assert enc.batch_overhead == 42
    assert serving_batches(enc, 1024, None).batch_overhead is None


@pytest.mark.parametrize("bad", [-1, 1.5, float("nan"), True, "100", "AUTO", 10.0])
def test_a_bad_overhead_is_refused_before_loading(tiny_m3_path, tiny_reranker_path, bad) -> None:  # type: ignore[no-untyped-def]
    message = r'batch_overhead must be a non-negative int, "auto", "device" or None'
    with pytest.raises(ValueError, match=message):
        M3Encoder(tiny_m3_path, device="cpu", batch_overhead=bad)
    with pytest.raises(ValueError, match=message):
        Reranker(tiny_reranker_path, device="cpu", batch_overhead=bad)
    enc = M3Encoder(tiny_m3_path, device="cpu", batch_overhead=50)
    with pytest.raises(ValueError, match="batch_overhead"):
        enc.batch_overhead = bad
    assert enc.batch_overhead == 50  # a refused value changes nothing


words = st.sampled_from(["alpha", "北京", "γάμμα", "data", "x", "the", "ColBERT", "é"])
texts = st.lists(st.lists(words, min_size=0, max_size=60).map(" ".join), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def encoders(tiny_m3_path) -> dict[int | None, M3Encoder]:  # type: ignore[no-untyped-def]
    return {
        overhead: M3Encoder(
            tiny_m3_path, device="cpu", max_batch_tokens=512, batch_overhead=overhead
        )
        for overhead in (0, 100, None)
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=texts)
def test_the_cut_changes_the_passes_not_the_outputs(
    encoders: dict[int | None, Any], batch: list[str]
) -> None:
    outs = {
        o: e.encode_corpus(batch, dense=True, sparse=True, colbert=True)
        for o, e in encoders.items()
    }
    ref = outs[None]
    for out in outs.values():
        np.testing.assert_allclose(out.dense_vecs, ref.dense_vecs, atol=1e-5)
        for a, b in zip(out.colbert_vecs, ref.colbert_vecs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for a, b in zip(out.lexical_weights, ref.lexical_weights, strict=True):
            assert a.keys() == b.keys()
            np.testing.assert_allclose(list(a.values()), [b[k] for k in a], atol=1e-5)


def test_reranker_scores_do_not_depend_on_the_cut(tiny_reranker_path) -> None:  # type: ignore[no-untyped-def]
    pairs = [
        ("what is m3", "short"),
        ("what is m3", "a much longer passage " * 20),
        ("q", "mid " * 7),
    ]
    scores = [
        Reranker(tiny_reranker_path, device="cpu", batch_overhead=o).score(pairs).scores
        for o in (0, 100, None)
    ]
    for s in scores:
        np.testing.assert_allclose(s, scores[-1], atol=1e-5)
