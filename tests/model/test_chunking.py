"""Chunking: token-exact windows, sentence-aware cuts for Latin and CJK, offsets, overlap."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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


def test_bad_texts_are_refused_with_their_index(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker(tiny_encoder.tokenizer, max_tokens=64, overlap=8)
    with pytest.raises(ValueError, match=r"text has a lone surrogate '\\ud800' at position 1"):
        chunker.split("a\ud800b")
    with pytest.raises(ValueError, match=r"texts\[1\] has a lone surrogate"):
        chunker.split_many(["fine", "a\ud800b"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, got NoneType"):
        chunker.split_many(["fine", None])  # type: ignore[list-item]
    # a bare string is not a list of one-character documents
    with pytest.raises(TypeError, match="texts must be a list of strings, got a single str"):
        chunker.split_many("abc")
    with pytest.raises(TypeError, match="parent_ids must be a list"):
        chunker.split_many(["a", "b"], parent_ids="ab")


# Words that exercise sentencepiece's word-start "▁" token (mapped onto the next token's first
# character), CJK, combining marks, an unknown character and a special token written as text.
CHUNK_WORDS = [
    "la", "de", "peuplée", "peuplée.", "hello", "world", "x", "北京是中国的首都。", "ภาษาไทย",
    "e\u0301cole", "don't", "🎉", "，", "<mask>", "supercalifragilistic", "a", "Straße", "123",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.lists(st.sampled_from(CHUNK_WORDS), min_size=1, max_size=40).map(" ".join),
        st.text(max_size=120),
    ),
    max_tokens=st.integers(4, 12) | st.sampled_from([16, 32, 64]),
)
@example(text="la de peuplée", max_tokens=4)  # the "u" was in no chunk
def test_chunks_without_overlap_cover_the_text_at_every_size(
    tiny_encoder, text: str, max_tokens: int
) -> None:  # type: ignore[no-untyped-def]
    chunks = Chunker(tiny_encoder.tokenizer, max_tokens=max_tokens, overlap=0).split(text)
    covered = [False] * len(text)
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.n_tokens <= max_tokens - 2
        covered[c.start : c.end] = [True] * (c.end - c.start)
    lost = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert not lost, (lost, [(c.start, c.end) for c in chunks])
    for a, b in itertools.pairwise(chunks):
        assert b.start >= a.end  # no overlap was asked for
