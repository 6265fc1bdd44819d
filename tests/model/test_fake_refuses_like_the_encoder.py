"""FakeEncoder refuses what M3Encoder refuses, with the same error types, call for call."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from m3rag import M3Encoder
from m3rag.testing import FakeEncoder

pytestmark = pytest.mark.model

FLAGS = [None, True, False]
TEXTS: list[Any] = ["x", ["a", "b c"], [], "", ["a", 3], [None], "a\ud800b", 5, b"bytes"]
LENGTHS: list[Any] = [None, -5, 0, 2, 3, 16, 2.5, "8", True]


def _outcome(call: Callable[[], Any]) -> tuple[str, tuple[bool, ...] | None]:
    """The error type a call raises, or which heads its output holds."""
    try:
        out = call()
    except Exception as exc:  # the type is what is compared
        return type(exc).__name__, None
    if hasattr(out, "dense_vecs"):
        heads = (out.dense_vecs, out.lexical_weights, out.colbert_vecs)
        return "ok", tuple(h is not None for h in heads)
    return "ok", None


@pytest.fixture(scope="module")
def pairs(tiny_encoder: M3Encoder, minilm_path) -> list[tuple[Any, Any]]:  # type: ignore[no-untyped-def]
    dense_only = M3Encoder(minilm_path, device="cpu")
    return [
        (tiny_encoder, FakeEncoder(max_length=tiny_encoder.max_length)),
        (dense_only, FakeEncoder(heads=("dense",), max_length=dense_only.max_length)),
    ]


def test_head_selection(pairs: list[tuple[Any, Any]]) -> None:
    for real, fake in pairs:
        for method, flags in itertools.product(
            ("encode_queries", "encode_corpus"), itertools.product(FLAGS, repeat=3)
        ):
            options = dict(zip(("dense", "sparse", "colbert"), flags, strict=True))
            got = _outcome(lambda e=fake, m=method, o=options: getattr(e, m)(["x"], **o))
            want = _outcome(lambda e=real, m=method, o=options: getattr(e, m)(["x"], **o))
            assert got == want, (real.heads, method, options)


def test_texts_and_lengths(pairs: list[tuple[Any, Any]]) -> None:
    for real, fake in pairs:
        for texts in TEXTS:
            for method in ("encode_queries", "encode_corpus", "count_tokens"):
                got = _outcome(lambda e=fake, m=method, t=texts: getattr(e, m)(t))
                want = _outcome(lambda e=real, m=method, t=texts: getattr(e, m)(t))
                assert got == want, (method, texts)
        for length in [*LENGTHS, real.max_length, real.max_length + 1]:
            got = _outcome(lambda e=fake, n=length: e.count_tokens(["a b"], max_length=n))
            want = _outcome(lambda e=real, n=length: e.count_tokens(["a b"], max_length=n))
            assert got == want, length


@pytest.mark.parametrize("max_length", [0, 2, -1, True, 2.5, "512"])
def test_a_bad_max_length_is_refused_as_the_encoder_refuses_it(
    tiny_m3_path, max_length: Any
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="max_length must be an int >= 3"):
        FakeEncoder(max_length=max_length)
    with pytest.raises(ValueError, match="passage_max_length must be an int >= 3"):
        M3Encoder(tiny_m3_path, device="cpu", passage_max_length=max_length)


@pytest.mark.parametrize(
    "kwargs", [{"heads": ()}, {"heads": ("sparse",)}, {"heads": ("dense", "bm25")}, {"dim": 0}]
)
def test_a_fake_no_real_model_could_be_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"heads|dim"):
        FakeEncoder(**kwargs)
