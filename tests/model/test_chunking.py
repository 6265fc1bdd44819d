"""Chunking: token-exact windows, sentence-aware cuts for Latin and CJK, offsets, overlap."""

from __future__ import annotations

import itertools

import pytest

from m3rag.chunking import Chunker
from m3rag.testing import MULTILINGUAL_SAMPLES

pytestmark = pytest.mark.model

TEXT = " ".join(s for v in MULTILINGUAL_SAMPLES.values() for s in v) * 4
ZH = "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 30


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
@pytest.mark.parametrize("text", [TEXT, ZH, "word " * 2000])
def test_windows_fit_and_cover_the_text(tiny_encoder, text: str, max_tokens: int) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tiny_encoder.tokenizer, max_tokens=max_tokens, overlap=max_tokens // 8)
    chunks = chunker.split(text, parent_id="p")
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text.rstrip()) or chunks[-1].end == len(text)
    for i, c in enumerate(chunks):
        assert text[c.start : c.end] == c.text
        assert c.index == i and c.parent_id == "p" and c.id == f"p#{i}"
        # token-exact: the encoder never truncates a chunk
        n = len(tiny_encoder.tokenizer(c.text)["input_ids"])
        assert n <= max_tokens
        assert c.n_tokens == n - 2
    for a, b in itertools.pairwise(chunks):
        assert b.start > a.start
        assert b.start <= a.end or not text[a.end : b.start].strip()  # nothing but spaces skipped
    out = tiny_encoder.encode_corpus([c.text for c in chunks])
    assert not out.truncated.any()


def test_a_chinese_text_is_cut_at_sentence_ends(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tiny_encoder.tokenizer, max_tokens=64, overlap=30)
    chunks = chunker.split(ZH)
    assert len(chunks) > 3
    for c in chunks[:-1]:
        assert c.text.endswith("。")
    for c in chunks[1:]:
        assert c.text.startswith("北京")  # the overlap starts at a sentence start within reach


def test_latin_cuts_prefer_sentence_then_word_boundaries(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tiny_encoder.tokenizer, max_tokens=64, overlap=8)
    for c in chunker.split(TEXT)[:-1]:
        assert c.text[-1] in ".!?。！？；" or TEXT[c.end].isspace() or not TEXT[c.end].isalpha()


def test_short_and_blank_texts(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tiny_encoder.tokenizer, max_tokens=64, overlap=8)
    one = chunker.split("short text", parent_id="x")
    assert len(one) == 1 and one[0].text == "short text" and one[0].id == "x#0"
    assert chunker.split("   ") == []
    many = chunker.split_many(["a b", "北京"], parent_ids=["1", "2"])
    assert [c.id for c in many] == ["1#0", "2#0"]
    with pytest.raises(TypeError):
        chunker.split(None)  # type: ignore[arg-type]


def test_bad_sizes(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="max_tokens"):
        Chunker(tiny_encoder.tokenizer, max_tokens=2)
    with pytest.raises(ValueError, match="overlap"):
        Chunker(tiny_encoder.tokenizer, max_tokens=64, overlap=40)
