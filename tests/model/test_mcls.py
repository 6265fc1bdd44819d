"""MCLS: multiple CLS tokens for long inputs (opt-in dense encoding)."""

from __future__ import annotations

import numpy as np
import pytest

from m3rag import M3Encoder, UnsupportedOutputError

pytestmark = pytest.mark.model


def test_short_texts_get_the_ordinary_cls_vector(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    enc = M3Encoder(tiny_m3_path, device="cpu", max_batch_tokens=None)
    texts = ["short text", "北京是中国的首都", ""]
    plain = enc.encode_corpus(texts, sparse=False, colbert=False)
    mcls = enc.encode_mcls(texts, window=256)
    assert mcls.heads == ("dense",)
    np.testing.assert_allclose(mcls.dense_vecs, plain.dense_vecs, atol=1e-6)


def test_long_texts_average_every_cls(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    import torch

    text = "word " * 40 + "北京 " * 40
    out = tiny_encoder.encode_mcls([text], window=16)
    ids = tiny_encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_cls = -(-len(ids) // 16)
    assert out.token_counts[0] == len(ids) + n_cls + 1
    # recompute by hand: hidden states at the inserted CLS positions, averaged
    row: list[int] = []
    for s in range(0, len(ids), 16):
        row += [0, *ids[s : s + 16]]
    row.append(2)
    with torch.inference_mode():
        hidden = tiny_encoder._model(
            input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long)
        ).last_hidden_state[0]
    positions = [i for i, t in enumerate(row) if t == 0]
    assert len(positions) == n_cls
    want = hidden[positions].mean(0)
    want = (want / want.norm()).numpy()
    np.testing.assert_allclose(out.dense_vecs[0], want, atol=1e-5)
    # differs from the single-CLS vector of the same text
    single = tiny_encoder.encode_corpus([text], sparse=False, colbert=False).dense_vecs[0]
    assert float(single @ out.dense_vecs[0]) < 0.9999


def test_limits_and_errors(tiny_encoder, minilm_path) -> None:  # type: ignore[no-untyped-def]
    out = tiny_encoder.encode_mcls(["word " * 5000], window=256, max_length=512)
    assert out.truncated.tolist() == [True]
    assert out.token_counts[0] <= 512
    with pytest.raises(ValueError, match="window"):
        tiny_encoder.encode_mcls(["x"], window=0)
    with pytest.raises(TypeError):
        tiny_encoder.encode_mcls([None])  # type: ignore[list-item]
    assert len(tiny_encoder.encode_mcls([])) == 0
    with pytest.raises(UnsupportedOutputError, match="CLS"):
        M3Encoder(minilm_path, device="cpu").encode_mcls(["x"])
