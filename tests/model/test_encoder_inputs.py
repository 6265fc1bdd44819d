"""Bad input, edge cases and head selection on the tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rag import InputTooLongError, M3Encoder, M3Output, UnsupportedOutputError

pytestmark = pytest.mark.model


def test_empty_list_gives_empty_output_of_the_right_shapes(tiny_encoder: M3Encoder) -> None:
    out = tiny_encoder.encode([])
    assert len(out) == 0
    assert out.dense_vecs is not None and out.dense_vecs.shape == (0, tiny_encoder.dim)
    assert out.lexical_weights == [] and out.colbert_vecs == []
    assert out.dense_vecs.dtype == np.float32


def test_single_string_is_one_text(tiny_encoder: M3Encoder) -> None:
    out = tiny_encoder.encode_queries("hello 世界")
    assert isinstance(out, M3Output) and len(out) == 1


def test_empty_string_behaves_as_reference(tiny_encoder: M3Encoder, reference_m3) -> None:  # type: ignore[no-untyped-def]
    out = tiny_encoder.encode(["", "x"])
    assert out.lexical_weights is not None and out.colbert_vecs is not None
    assert out.lexical_weights[0] == {}
    assert out.colbert_vecs[0].shape == (1, tiny_encoder.colbert_dim)
    ref = reference_m3.encode([""], return_sparse=True, return_colbert_vecs=True)
    assert dict(ref["lexical_weights"][0]) == {}
    np.testing.assert_allclose(out.colbert_vecs[0], ref["colbert_vecs"][0], atol=1e-6)


@pytest.mark.parametrize(
    ("texts", "where"),
    [
        (["ok", None], r"texts\[1\] must be a string, got NoneType"),
        (["ok", 3], r"texts\[1\] must be a string, got int"),
        ([["nested"]], r"texts\[0\].*nested lists"),
        (None, "got NoneType"),
        (b"bytes", "got bytes"),
        (42, "got int"),
    ],
)
def test_wrong_types_name_the_offending_index(
    tiny_encoder: M3Encoder, texts: object, where: str
) -> None:
    with pytest.raises(TypeError, match=where):
        tiny_encoder.encode(texts)  # type: ignore[arg-type]


def test_only_requested_heads_are_computed(
    tiny_encoder: M3Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"sparse": 0, "colbert": 0}
    sparse, colbert = tiny_encoder._sparse, tiny_encoder._colbert
    assert sparse is not None and colbert is not None

    def count(name, layer):  # type: ignore[no-untyped-def]
        def hook(*_args):  # type: ignore[no-untyped-def]
            calls[name] += 1

        return layer.register_forward_hook(hook)

    handles = [count("sparse", sparse), count("colbert", colbert)]
    try:
        # texts of one length: one forward pass, however passes are cut (no padding either way)
        out = tiny_encoder.encode(["a b c", "d e f"], dense=True, sparse=False, colbert=False)
        assert out.heads == ("dense",) and out.lexical_weights is None and out.colbert_vecs is None
        assert calls == {"sparse": 0, "colbert": 0}
        out = tiny_encoder.encode(["a b c", "d e f"], dense=False, sparse=True, colbert=False)
        assert out.heads == ("sparse",) and out.dense_vecs is None
        assert calls == {"sparse": 1, "colbert": 0}
    finally:
        for h in handles:
            h.remove()


def test_no_head_requested_is_an_error(tiny_encoder: M3Encoder) -> None:
    with pytest.raises(ValueError, match="at least one"):
        tiny_encoder.encode(["x"], dense=False, sparse=False, colbert=False)


def test_over_long_text_is_truncated_and_flagged(tiny_encoder: M3Encoder) -> None:
    long = "北京 " * 5000
    out = tiny_encoder.encode([long, "short"], max_length=128)
    assert out.truncated.tolist() == [True, False]
    assert out.token_counts[0] == 128
    assert out.colbert_vecs is not None and out.colbert_vecs[0].shape[0] == 127


def test_max_length_beyond_the_model_is_a_clear_error(tiny_encoder: M3Encoder) -> None:
    with pytest.raises(InputTooLongError, match="8192"):
        tiny_encoder.encode(["x"], max_length=9000)
    with pytest.raises(ValueError, match=">= 3"):
        tiny_encoder.encode(["x"], max_length=1)


def test_full_8192_token_input(tiny_encoder: M3Encoder) -> None:
    out = tiny_encoder.encode(["word " * 20000], max_length=8192)
    assert out.token_counts.tolist() == [8192]
    assert out.truncated.tolist() == [True]
    assert out.dense_vecs is not None and np.isfinite(out.dense_vecs).all()


def test_constructor_validates_options(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="batch_size"):
        M3Encoder(tiny_m3_path, batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        M3Encoder(tiny_m3_path, max_batch_tokens=-5)
    with pytest.raises(ValueError, match="dtype"):
        M3Encoder(tiny_m3_path, dtype="int4")
    with pytest.raises(ValueError, match="device"):
        M3Encoder(tiny_m3_path, device="warp-drive")


def test_compute_score_validates(tiny_encoder: M3Encoder) -> None:
    with pytest.raises(ValueError, match="3 numbers"):
        tiny_encoder.compute_score([("a", "b")], weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="not all zero"):
        tiny_encoder.compute_score([("a", "b")], weights=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="non-negative"):
        tiny_encoder.compute_score([("a", "b")], weights=(-1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        tiny_encoder.compute_score([("a", "b"), ("a", None)])  # type: ignore[list-item]
    assert len(tiny_encoder.compute_score([])) == 0


def test_bfloat16_runs_and_stays_close(tiny_m3_path, tiny_encoder: M3Encoder) -> None:  # type: ignore[no-untyped-def]
    fast = M3Encoder(tiny_m3_path, device="cpu", dtype="bfloat16")
    texts = ["hello world", "北京是中国的首都", ""]
    a, b = fast.encode(texts), tiny_encoder.encode(texts)
    assert a.dense_vecs is not None and b.dense_vecs is not None
    assert a.dense_vecs.dtype == np.float32
    cos = (a.dense_vecs * b.dense_vecs).sum(1)
    assert (cos > 0.98).all()


def test_oom_backoff_splits_the_batch(tiny_m3_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu", max_batch_tokens=None, batch_size=8)
    texts = [f"text number {i}" for i in range(8)]
    expected = enc.encode(texts)
    real = enc._forward
    seen: list[int] = []

    def flaky(ids, mask, heads):  # type: ignore[no-untyped-def]
        seen.append(ids.shape[0])
        if ids.shape[0] > 2:
            msg = "CUDA out of memory. Tried to allocate 2.00 GiB"
            raise RuntimeError(msg)
        return real(ids, mask, heads)

    monkeypatch.setattr(enc, "_forward", flaky)
    out = enc.encode(texts)
    assert seen[0] == 8 and max(seen[1:]) <= 8
    assert enc.batch_size <= 4
    assert out.dense_vecs is not None and expected.dense_vecs is not None
    np.testing.assert_allclose(out.dense_vecs, expected.dense_vecs, atol=1e-6)
    assert out.lexical_weights is not None and expected.lexical_weights is not None
    assert [list(d) for d in out.lexical_weights] == [list(d) for d in expected.lexical_weights]


def test_non_oom_errors_propagate(tiny_m3_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu")

    def broken(*_args):  # type: ignore[no-untyped-def]
        msg = "shape mismatch"
        raise RuntimeError(msg)

    monkeypatch.setattr(enc, "_forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        enc.encode(["a"])


def test_unsupported_head_on_dense_only_model(minilm_path) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(minilm_path, device="cpu")
    assert enc.heads == ("dense",)
    assert enc.encode(["x"]).heads == ("dense",)
    with pytest.raises(UnsupportedOutputError, match="dense-only"):
        enc.encode(["x"], sparse=True)
    with pytest.raises(UnsupportedOutputError, match="colbert"):
        enc.encode_queries(["x"], colbert=True)
    with pytest.raises(UnsupportedOutputError):
        enc.compute_score([("a", "b")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(
        st.text(st.characters(codec="utf-8"), max_size=300)
        | st.sampled_from(["", "ﷺ" * 40, "北京是中国的首都。", "word " * 3000]),
        max_size=6,
    ),
    max_length=st.sampled_from([None, 3, 16, 512]),
)
def test_count_tokens_is_what_encode_reports(
    tiny_encoder: M3Encoder, texts: list[str], max_length: int | None
) -> None:
    """The tokenizer's count, truncation included, without the model: encode's token_counts."""
    counts = tiny_encoder.count_tokens(texts, max_length=max_length)
    out = tiny_encoder.encode(texts, max_length=max_length, sparse=False, colbert=False)
    np.testing.assert_array_equal(counts, out.token_counts)
    assert counts.dtype == np.int64 and len(counts) == len(texts)


def test_count_tokens_refuses_what_encode_refuses(tiny_encoder: M3Encoder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny_encoder.count_tokens(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputTooLongError, match="max_length"):
        tiny_encoder.count_tokens(["ok"], max_length=tiny_encoder.max_length + 1)
    assert tiny_encoder.count_tokens("one text").shape == (1,)
