"""Highlighting in the command line: whole words, CJK substrings, and never markup."""

from __future__ import annotations

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from m3rag.cli._output import highlight
from m3rag.highlight import match_spans, query_terms


def test_whole_words_only() -> None:
    text = "This misses the island; is it?"
    spans = [text[a:b] for a, b in match_spans(text, "is")]
    assert spans == ["is"]  # not inside "This", "misses" or "island"
    assert text[match_spans(text, "island")[0][0] :].startswith("island")


def test_case_insensitive_and_longest_first() -> None:
    text = "Hybrid search: HYBRID ranking"
    assert [text[a:b] for a, b in match_spans(text, "hybrid search")] == [
        "Hybrid",
        "search",
        "HYBRID",
    ]


def test_cjk_matches_inside_runs() -> None:
    text = "北京是中华人民共和国的首都。"
    assert [text[a:b] for a, b in match_spans(text, "首都在哪里 北京")] == ["北京"]
    assert query_terms("北京 capital") == ["capital", "北京"]
    text = "東京は日本の首都です"
    assert [text[a:b] for a, b in match_spans(text, "日本")] == ["日本"]


def test_markup_in_queries_and_texts_is_printed_as_text() -> None:
    console = Console(width=200, record=True)
    console.print(highlight("A [bold] tag and [/] a closing one, [link=x]", "[bold] [/]"))
    assert "[bold] tag and [/] a closing one, [link=x]" in console.export_text()


_WORDS = st.text(alphabet="abcdefgh XYZ[]/.,é北京日本", min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(text=_WORDS, query=_WORDS)
def test_spans_are_terms_on_word_boundaries(text: str, query: str) -> None:
    terms = set(query_terms(query))
    last = 0
    for a, b in match_spans(text, query):
        assert last <= a < b
        last = b
        piece = text[a:b].lower()
        assert piece in terms
        if not re.fullmatch(r"[北京日本]+", piece):
            assert a == 0 or not text[a - 1].isalnum()
            assert b == len(text) or not text[b].isalnum()
    # rendering never raises, whatever the brackets
    Console(width=80, file=io.StringIO()).print(highlight(text, query))


def _one_alternation(query: str) -> re.Pattern[str] | None:
    """The pattern before the split into CJK and word groups: the oracle of the one below."""
    parts = [
        re.escape(t)
        if re.fullmatch(
            r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
            r"\uac00-\ud7af]+",
            t,
        )
        else rf"(?<!\w){re.escape(t)}(?!\w)"
        for t in query_terms(query)
    ]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


# letters whose case folding is unusual (Kelvin sign, dotted and dotless i, sharp s, final
# sigma), digits, the underscore, accents, CJK and Hangul, and separators
_MIXED = st.text(
    alphabet="abkKİıiIßsSσςΣéÉ1_ 北京日本한국어-.'\u212a\u0301", min_size=0, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(text=_MIXED, query=_MIXED)
def test_same_spans_as_one_longest_first_alternation(text: str, query: str) -> None:
    oracle = _one_alternation(query)
    expected = [] if oracle is None else [m.span() for m in oracle.finditer(text)]
    assert match_spans(text, query) == expected
