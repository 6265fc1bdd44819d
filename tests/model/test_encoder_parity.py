"""Parity with FlagEmbedding's BGEM3FlagModel (use_fp16=False, CPU) on the same tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from m3rag import M3Encoder
from m3rag.testing import MULTILINGUAL_SAMPLES, multilingual_corpus

pytestmark = pytest.mark.model

TEXTS = [
    *[s for sentences in MULTILINGUAL_SAMPLES.values() for s in sentences],
    *multilingual_corpus(40, seed=7, max_words=120),
    "",
    "短",
    "🎉",
    "a " * 300,  # repeated token: the lexical max must be taken over occurrences
]


def _assert_same(ref: dict, out, *, exact: bool) -> None:  # type: ignore[no-untyped-def]
    dense = np.asarray(ref["dense_vecs"])
    if exact:
        np.testing.assert_array_equal(out.dense_vecs, dense)
    else:
        np.testing.assert_allclose(out.dense_vecs, dense, atol=1e-5, rtol=0)
    assert len(out.lexical_weights) == len(ref["lexical_weights"])
    for ours, theirs in zip(out.lexical_weights, ref["lexical_weights"], strict=False):
        # same keys in the same (first-occurrence) order, same weights
        assert list(ours) == [int(k) for k in theirs]
        got = np.array(list(ours.values()), np.float32)
        want = np.array([float(v) for v in theirs.values()], np.float32)
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for ours, theirs in zip(out.colbert_vecs, ref["colbert_vecs"], strict=False):
        assert ours.shape == theirs.shape
        if exact:
            np.testing.assert_array_equal(ours, theirs)
        else:
            np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_length", [24, 64, 8192])
def test_bit_identical_when_batching_matches(tiny_m3_path, reference_m3, max_length: int) -> None:  # type: ignore[no-untyped-def]
    ours = M3Encoder(tiny_m3_path, device="cpu", batch_size=16, max_batch_tokens=None)
    ref = reference_m3.encode(
        TEXTS,
        batch_size=16,
        max_length=max_length,
        return_dense=True,
        return_sparse=True,
        return_colbert_vecs=True,
    )
    out = ours.encode(TEXTS, max_length=max_length)
    _assert_same(ref, out, exact=True)
    if max_length == 24:
        assert out.truncated.any()
        lengths = [len(x) for x in ours.tokenizer(TEXTS)["input_ids"]]
        assert out.truncated.tolist() == [n > 24 for n in lengths]
        assert out.token_counts.max() == 24


def test_within_tolerance_with_token_budget_batching(tiny_encoder, reference_m3) -> None:  # type: ignore[no-untyped-def]
    ref = reference_m3.encode(
        TEXTS, max_length=48, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    out = tiny_encoder.encode(TEXTS, max_length=48)
    _assert_same(ref, out, exact=False)


def test_queries_and_corpus_use_their_lengths(tiny_m3_path, reference_m3) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(
        tiny_m3_path,
        device="cpu",
        query_max_length=16,
        passage_max_length=40,
        max_batch_tokens=None,
    )
    q = enc.encode_queries(TEXTS)
    ref_q = reference_m3.encode_queries(
        TEXTS, max_length=16, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    _assert_same(ref_q, q, exact=True)
    p = enc.encode_corpus(TEXTS)
    ref_p = reference_m3.encode_corpus(
        TEXTS, max_length=40, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    _assert_same(ref_p, p, exact=True)


def test_scoring_helpers_match_reference(tiny_encoder, reference_m3) -> None:  # type: ignore[no-untyped-def]
    q = tiny_encoder.encode_queries(TEXTS[:6])
    p = tiny_encoder.encode_corpus(TEXTS[6:12])
    ref_q = reference_m3.encode(
        TEXTS[:6], max_length=512, return_sparse=True, return_colbert_vecs=True
    )
    ref_p = reference_m3.encode(
        TEXTS[6:12], max_length=8192, return_sparse=True, return_colbert_vecs=True
    )
    for i in range(6):
        for j in range(6):
            lex_ref = reference_m3.compute_lexical_matching_score(
                ref_q["lexical_weights"][i], ref_p["lexical_weights"][j]
            )
            assert (
                abs(
                    tiny_encoder.lexical_matching_score(q.lexical_weights[i], p.lexical_weights[j])
                    - float(lex_ref)
                )
                < 1e-6
            )
            col_ref = float(
                reference_m3.colbert_score(ref_q["colbert_vecs"][i], ref_p["colbert_vecs"][j])
            )
            assert (
                abs(tiny_encoder.colbert_score(q.colbert_vecs[i], p.colbert_vecs[j]) - col_ref)
                < 1e-6
            )
            dense_ref = float(ref_q["dense_vecs"][i] @ ref_p["dense_vecs"][j])
            assert (
                abs(tiny_encoder.dense_score(q.dense_vecs[i], p.dense_vecs[j]) - dense_ref) < 1e-6
            )


@pytest.mark.parametrize("weights", [(0.4, 0.2, 0.4), (1.0, 1.0, 1.0), (0.0, 1.0, 0.5)])
def test_compute_score_combinations(tiny_m3_path, reference_m3, weights) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu", batch_size=8)
    pairs = list(zip(TEXTS[:20], TEXTS[20:40], strict=False))
    ours = enc.compute_score(pairs, weights=weights, max_query_length=32, max_passage_length=48)
    ref = reference_m3.compute_score(
        pairs,
        batch_size=8,
        max_query_length=32,
        max_passage_length=48,
        weights_for_different_modes=list(weights),
    )
    for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
        np.testing.assert_allclose(ours[key], np.array(ref[key], np.float32), atol=1e-5, rtol=0)
    assert ours.as_dict().keys() == ref.keys()
    single = enc.compute_score(
        pairs[0], weights=weights, max_query_length=32, max_passage_length=48
    )
    assert len(single) == 1


def _assert_scores_match(ours, ref) -> None:  # type: ignore[no-untyped-def]
    for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
        np.testing.assert_allclose(ours[key], np.array(ref[key], np.float32), atol=1e-5, rtol=0)


# Short passages beside long ones: the reference pads them to their chunk's longest, and one
# ColBERT row ("" has only </s>) often has a negative best similarity that the pad's 0 replaces.
SCORE_PAIRS = [
    *zip(TEXTS[:24], ["", "短", "x", *TEXTS[30:51]], strict=True),
    *[(TEXTS[i], "word " * 200) for i in range(4)],
    ("q", ""),
    ("q", ""),
]


@pytest.mark.parametrize(
    ("batch_size", "max_batch_tokens"), [(8, None), (8, 64), (5, 256), (64, 1024)]
)
def test_compute_score_is_planned_under_the_token_budget(
    tiny_m3_path, reference_m3, batch_size: int, max_batch_tokens: int | None
) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(
        tiny_m3_path, device="cpu", batch_size=batch_size, max_batch_tokens=max_batch_tokens
    )
    real = enc._forward
    passes: list[tuple[int, int]] = []

    def spy(ids, mask, heads):  # type: ignore[no-untyped-def]
        passes.append(tuple(ids.shape))
        return real(ids, mask, heads)

    enc._forward = spy  # type: ignore[method-assign]
    ours = enc.compute_score(SCORE_PAIRS, max_query_length=32, max_passage_length=512)
    ref = reference_m3.compute_score(
        SCORE_PAIRS,
        batch_size=batch_size,
        max_query_length=32,
        max_passage_length=512,
        weights_for_different_modes=[0.4, 0.2, 0.4],
    )
    _assert_scores_match(ours, ref)
    # every pass within batch_size and the budget (a text longer than the budget goes alone)
    for texts, longest in passes:
        assert texts <= batch_size
        assert max_batch_tokens is None or texts == 1 or texts * longest <= max_batch_tokens


def test_compute_score_recovers_from_out_of_memory(tiny_m3_path, reference_m3) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu", batch_size=64, max_batch_tokens=None)
    real = enc._forward
    passes: list[int] = []

    def flaky(ids, mask, heads):  # type: ignore[no-untyped-def]
        passes.append(ids.shape[0])
        if ids.shape[0] > 4:
            msg = "CUDA out of memory. Tried to allocate 20.00 GiB"
            raise RuntimeError(msg)
        return real(ids, mask, heads)

    enc._forward = flaky  # type: ignore[method-assign]
    ours = enc.compute_score(SCORE_PAIRS, max_query_length=32, max_passage_length=512)
    ref = reference_m3.compute_score(
        SCORE_PAIRS,
        batch_size=64,
        max_query_length=32,
        max_passage_length=512,
        weights_for_different_modes=[0.4, 0.2, 0.4],
    )
    _assert_scores_match(ours, ref)
    assert passes[0] > 4 and enc.batch_size <= 4
