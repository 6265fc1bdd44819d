"""Multilingual lexical analysis for the BM25 path: one pipeline per language family.

A pipeline turns text into BM25 terms in four steps:

1. **Normalise** in Python: Unicode NFKC (full-width forms, ligatures, compatibility
   characters), full case folding (``ß`` -> ``ss``, final sigma), and for Arabic-script
   languages diacritics (harakat) and tatweel removed; Persian, Urdu and Pashto also get
   Lucene's ``PersianNormalizer`` (Arabic kaf and yeh to the Persian letters, alef variants
   to bare alef, teh marbuta to heh).
2. **Tokenise** in tantivy (Rust): runs of a script written without spaces (Han, Hiragana,
   Katakana, Hangul, Thai, Lao, Khmer, Myanmar) are one raw token, and runs of letters, marks
   and digits of any other script are words.
3. **Stop words and stemming** in tantivy: its Snowball stemmers (``rust-stemmers``) and
   the Snowball project's stop-word lists for the languages that have them (`SNOWBALL`,
   `STOPWORDS`; tantivy's own English list is Lucene's 33 words, so English uses
   `ENGLISH_STOPWORDS`, Snowball's, since analysis version 2).
4. **Split the no-space runs** in Python into overlapping character bigrams, as Lucene's
   ``CJKBigramFilter`` does (a lone character stays a unigram). Bigrams need no dictionary, are
   right for Chinese, Japanese and Korean alike, and for Thai, Lao, Khmer and Myanmar they are
   what a dictionary-free analyser can do: on XQuAD-th they score as well as a Thai word
   segmenter (see ``docs/evaluation.md``). A sentence never becomes one token.

Languages that share a pipeline share a **family** (``zh``, ``ja``, ``ko``, ``th`` ... are all
``generic``). A collection writes every term as ``family:term`` (one tantivy field holding one
term space per family), records the families it holds in its manifest, and analyses a query
once per family: each document is then scored by BM25 against the query analysed the way that
document was, so a Chinese query over Chinese and English documents finds both kinds.

**Language choice** per document: the ``lang`` metadata field, else the collection's ``lang``,
else `detect_language`: the dominant script decides (Han with kana is Japanese, Hangul Korean,
Thai, Cyrillic Russian, Arabic ...); Latin-script text goes to ``py3langid`` (``pip install
"m3rag[multilingual]"``, a 4.5 MB pure-Python model, ~50 µs per short query) restricted to the
Latin-script languages with a stemmer, and to English without it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from m3rag._optional import require
from m3rag.errors import UnknownLanguageError

__all__ = [
    "ANALYSIS_VERSION",
    "ANALYSIS_VERSIONS",
    "AUTO",
    "ENGLISH_STOPWORDS",
    "SNOWBALL",
    "STOPWORDS",
    "Pipeline",
    "QueryWords",
    "UnknownLanguageError",
    "analyse_query",
    "detect_language",
    "family_of",
    "pipeline",
]

ANALYSIS_VERSION = 2
"""Version of the pipelines' definitions that new collections are built with.

1: the first multilingual pipelines. 2: English takes the Snowball project's stop words
(`ENGLISH_STOPWORDS`) instead of tantivy's (Lucene's 33), as every other language with a
list has; SciFact nDCG@10 0.6859 -> 0.6900, XQuAD-en 0.9660 -> 0.9675 (``docs/benchmarks.md``).
"""

ANALYSIS_VERSIONS = frozenset({1, 2})
"""Versions this m3rag reproduces: a collection keeps the version it was built with."""

AUTO = "auto"
"""The ``lang`` value that asks for detection per document."""

SNOWBALL: dict[str, str] = {
    "ar": "arabic",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "fi": "finnish",
    "fr": "french",
    "hu": "hungarian",
    "it": "italian",
    "nl": "dutch",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
}
"""Languages with a tantivy (Snowball) stemmer: ISO 639-1 code -> tantivy language name."""

STOPWORDS = frozenset(
    {"da", "de", "en", "es", "fi", "fr", "hu", "it", "nl", "no", "pt", "ru", "sv"}
)
"""Languages with a stop-word list (tantivy's, which are Snowball's but for English)."""

_SNOWBALL_ENGLISH_WORDS = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves what which who whom this that
these those am is are was were be been being have has had having do does did doing would should
could ought a an the and but if or because as until while of at by for with about against
between into through during before after above below to from up down in out on off over under
again further then once here there when where why how all any both each few more most other some
such no nor not only own same so than too very cannot
"""
ENGLISH_STOPWORDS = tuple(_SNOWBALL_ENGLISH_WORDS.split())
"""The Snowball project's English stop words (``english/stop.txt``), less its contractions.

The contractions (``don't``, ``it's`` ...) can never be one token: the tokenizer splits words
at the apostrophe, and their halves (``don``, ``t``, ``s``) stay terms. tantivy's English list
is Lucene's 33 words; its lists for the other languages are Snowball's, and so is this one.
"""
_SNOWBALL_ENGLISH = "snowball-english"

_ALIASES = {"nb": "no", "nn": "no", "iw": "he", "in": "id", "zh-hans": "zh", "zh-hant": "zh"}
_PERSIAN = frozenset({"fa", "ur", "ps"})
GENERIC = "generic"

TOKEN_PATTERN = r"[\p{L}\p{M}\p{N}]+"  # noqa: S105 - a regex
"""tantivy's tokenizer of every family: runs of letters, combining marks and digits."""
# Scripts written without spaces between words (the stdlib ``re`` has no \p{...}): a run of
# them is split into bigrams before tantivy sees the text.
_NOSPACE_RANGES = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1100-\u11ff"  # Hangul Jamo
    "\u1780-\u17ff\u19e0-\u19ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3005-\u3007\u3021-\u3029\u3038-\u303b"  # ideographic marks
    "\u3040-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK ideographs
    "\ua960-\ua97f\uaa60-\uaa7f\uac00-\ud7ff"  # Hangul, Myanmar extended
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-G
)
_NOSPACE = re.compile(f"[{_NOSPACE_RANGES}]")
_RUN = re.compile(f"[{_NOSPACE_RANGES}]+")
# Combining marks of the no-space scripts (Thai, Lao, Khmer and Myanmar vowel signs and tone
# marks): a base letter and its marks are one unit of a bigram, as a reader sees them.
_MARK_RANGES = (
    "\u0e31\u0e34-\u0e3a\u0e47-\u0e4e"  # Thai
    "\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd"  # Lao
    "\u102b-\u103e\u1056-\u1059\u105e-\u1060\u1062-\u1064\u1067-\u106d"  # Myanmar
    "\u1071-\u1074\u1082-\u108d\u108f\u109a-\u109d"
    "\u17b4-\u17d3\u17dd"  # Khmer
)
_MARKS = re.compile(f"[{_MARK_RANGES}]")
_UNITS = re.compile(f"[^{_MARK_RANGES}][{_MARK_RANGES}]*|[{_MARK_RANGES}]+")

# Arabic: harakat and tatweel removed; the Snowball stemmer unifies the alef forms itself and
# needs teh marbuta and alef maksura as written to strip suffixes (Lucene's ArabicNormalizer,
# which also maps those, scored 0.933 and 0.934 on XQuAD-ar against 0.934 for this).
_ARABIC_DROP = dict.fromkeys([0x0640, *range(0x064B, 0x0653), 0x0670])
_ARABIC = str.maketrans(_ARABIC_DROP)
# Lucene PersianNormalizer: Arabic yeh and kaf to the Persian letters, heh with yeh to heh.
_PERSIAN_MAP = str.maketrans(
    {**_ARABIC_DROP, "\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9", "\u06c0": "\u0647"}
    | {"\u0623": "\u0627", "\u0625": "\u0627", "\u0622": "\u0627", "\u0629": "\u0647"}
)


def family_of(lang: str) -> str:
    """The pipeline family of a language code (``"en"``, ``"pt-BR"``, ``"zh-Hant"``).

    Languages with a Snowball stemmer are their own family; Persian, Urdu and Pashto share
    ``"fa"``; every other language (Chinese, Japanese, Korean, Thai, Vietnamese, Hindi ...)
    is ``"generic"``: normalised, case folded, no-space scripts in bigrams, no stemming.

    Raises:
        UnknownLanguageError: ``lang`` is not an ISO 639 code (two or three letters, an
            optional ``-`` region or script).
    """
    if not isinstance(lang, str):
        msg = f"lang must be a language code string such as 'en' or 'zh', got {lang!r}"
        raise UnknownLanguageError(msg)
    code = lang.strip().lower().replace("_", "-")
    code = _ALIASES.get(code, code)
    primary = code.split("-", 1)[0]
    if not (2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha()):
        msg = (
            f"lang {lang!r} is not a language code; use an ISO 639-1 code such as 'en', 'zh', "
            f"'th' or 'pt-BR', or {AUTO!r} to detect it"
        )
        raise UnknownLanguageError(msg)
    primary = _ALIASES.get(primary, primary)
    if primary in SNOWBALL:
        return primary
    if primary in _PERSIAN:
        return "fa"
    return GENERIC


FAMILIES = frozenset({*SNOWBALL, "fa", GENERIC})
"""Every pipeline family."""


@dataclass(frozen=True)
class Pipeline:
    """The analysis of one family: normalise, tokenise, stop words, stem, split no-space runs.

    Attributes:
        family: The family name, also the prefix of its terms in a collection.
        stemmer: The tantivy stemmer language, if any.
        stopwords: The stop-word list, if any: a tantivy language name, or
            ``"snowball-english"`` (`ENGLISH_STOPWORDS`).
    """

    family: str
    stemmer: str | None
    stopwords: str | None

    def __repr__(self) -> str:
        return f"Pipeline({self.family!r}, stemmer={self.stemmer}, stopwords={self.stopwords})"

    def describe(self) -> str:
        """One line: what this pipeline does."""
        steps = ["NFKC", "casefold"]
        if self.family == "ar":
            steps.append("Arabic normalisation")
        if self.family == "fa":
            steps.append("Persian normalisation")
        steps.append("words + CJK/Thai/Lao/Khmer/Myanmar bigrams")
        if self.stopwords == _SNOWBALL_ENGLISH:
            steps.append("Snowball english stop words")
        elif self.stopwords:
            steps.append(f"{self.stopwords} stop words")
        if self.stemmer:
            steps.append(f"{self.stemmer} Snowball stemmer")
        return ", ".join(steps)

    def analyzer(self) -> Any:
        """The tantivy ``TextAnalyzer`` of the family: tokenizer, stop words, stemmer.

        It runs on `prepare`'s output: a collection registers it for the family's field, so
        documents are analysed inside tantivy (Rust) as they are indexed.
        """
        return _tantivy_analyzer(self.stemmer, self.stopwords)

    @property
    def preparation(self) -> str:
        """Which `prepare` this family uses: pipelines with the same one prepare alike."""
        return self.family if self.family in ("ar", "fa") else ""

    def prepare(self, text: str) -> str:
        """The Python half: NFKC, case folding, script normalisation, no-space runs to bigrams.

        The bigrams are written space-separated, so tantivy's tokenizer sees each as a word.
        """
        text = unicodedata.normalize("NFKC", text).casefold()
        if self.family == "ar":
            text = text.translate(_ARABIC)
        elif self.family == "fa":
            text = text.translate(_PERSIAN_MAP)
        if _NOSPACE.search(text):
            text = _RUN.sub(_bigrams, text)
        return text

    def term(self, word: str) -> str | None:
        """The term of one word (a token of `TOKEN_PATTERN`), ``None`` for a stop word.

        Stop words and stemming act on one word at a time, so a word analyses alone exactly as
        it does in a sentence; the answers are cached (a query's words are Zipfian).
        """
        return _term(self, word)

    def tokens(self, text: str) -> list[str]:
        """The BM25 terms of ``text``, in order, repeats kept."""
        tokens: list[str] = self.analyzer().analyze(self.prepare(text))
        return tokens


def _bigrams(match: re.Match[str]) -> str:
    """A run of a no-space script as its overlapping bigrams (a lone unit as itself)."""
    run = match.group()
    units: Sequence[str] = _UNITS.findall(run) if _MARKS.search(run) else run
    if len(units) == 1:
        return f" {run} "
    return " " + " ".join([units[i] + units[i + 1] for i in range(len(units) - 1)]) + " "


@cache
def _tantivy_analyzer(stemmer: str | None, stopwords: str | None) -> Any:
    tantivy = require("tantivy", purpose="the m3rag index")
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN))
    if stopwords == _SNOWBALL_ENGLISH:
        builder = builder.filter(tantivy.Filter.custom_stopword(list(ENGLISH_STOPWORDS)))
    elif stopwords:
        builder = builder.filter(tantivy.Filter.stopword(stopwords))
    if stemmer:
        builder = builder.filter(tantivy.Filter.stemmer(stemmer))
    return builder.build()


@cache
def pipeline(lang_or_family: str, version: int = ANALYSIS_VERSION) -> Pipeline:
    """The pipeline of a language code or family name, as analysis ``version`` defines it.

    Raises:
        UnknownLanguageError: Not a language code.
        ValueError: A version not in `ANALYSIS_VERSIONS`.
    """
    if version not in ANALYSIS_VERSIONS:
        msg = f"analysis version {version!r} is not one of {sorted(ANALYSIS_VERSIONS)}"
        raise ValueError(msg)
    family = lang_or_family if lang_or_family in FAMILIES else family_of(lang_or_family)
    if family in SNOWBALL:
        name = SNOWBALL[family]
        stopwords = name if family in STOPWORDS else None
        if family == "en" and version >= 2:
            stopwords = _SNOWBALL_ENGLISH
        return Pipeline(family, name, stopwords)
    return Pipeline(family, None, None)


# -- detection --------------------------------------------------------------------------------

# Unicode blocks -> the language their script most likely writes (scripts of one language, or
# whose languages share a pipeline family, so the guess cannot pick a wrong stemmer).
_SCRIPT_BLOCKS: tuple[tuple[int, int, str], ...] = (
    (0x0370, 0x03FF, "el"),
    (0x0400, 0x052F, "ru"),
    (0x0590, 0x05FF, "he"),
    (0x0600, 0x06FF, "ar"),
    (0x0750, 0x077F, "ar"),
    (0x0900, 0x097F, "hi"),
    (0x0980, 0x09FF, "bn"),
    (0x0B80, 0x0BFF, "ta"),
    (0x0E00, 0x0E7F, "th"),
    (0x0E80, 0x0EFF, "lo"),
    (0x1000, 0x109F, "my"),
    (0x10A0, 0x10FF, "ka"),
    (0x1100, 0x11FF, "ko"),
    (0x1780, 0x17FF, "km"),
    (0x3040, 0x30FF, "ja"),
    (0x3130, 0x318F, "ko"),
    (0x3400, 0x9FFF, "zh"),
    (0xAC00, 0xD7AF, "ko"),
    (0xF900, 0xFAFF, "zh"),
    (0x20000, 0x3134F, "zh"),
)
_LATIN_DETECTABLE = (
    *("da", "de", "en", "es", "fi", "fr", "hu", "it", "nl", "no", "pt", "ro", "sv", "tr"),
    *("id", "vi", "pl", "cs", "ca", "hr", "sk", "sl", "et", "lv", "lt"),
)
_SAMPLE = 1000  # characters whose script decides: enough for a document, and fast
_LATIN_SAMPLE = 160  # characters py3langid reads (its time grows with the text; a query's worth)
# py3langid's wrong guesses on SciFact abstracts score 0.1-0.3, and 0.55 on an English XQuAD
# paragraph that opens with the Portuguese, Spanish and French names of the Amazon
_MIN_PROBABILITY = 0.8
_PERSIAN_LETTERS = re.compile("[\u067e\u0686\u0698\u06af\u06a9\u06cc]")
_NONLATIN = re.compile("[\u0370-\U0003134f]")
_LATIN_LETTER = re.compile("[A-Za-z\u00c0-\u024f]")


def _block_patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    ranges: dict[str, list[str]] = {}
    for low, high, lang in _SCRIPT_BLOCKS:
        ranges.setdefault(lang, []).append(f"{chr(low)}-{chr(high)}")
    return tuple((lang, re.compile(f"[{''.join(r)}]")) for lang, r in ranges.items())


_BLOCKS = _block_patterns()


def _script_language(sample: str) -> str | None:
    """The language of the dominant non-Latin script of ``sample``; ``None`` if Latin wins."""
    if sample.isascii() or not _NONLATIN.search(sample):
        return None
    counts = {lang: n for lang, pattern in _BLOCKS if (n := len(pattern.findall(sample)))}
    if not counts:
        return None
    if "ja" in counts and "zh" in counts:  # kanji with kana: Japanese
        counts["ja"] += counts.pop("zh")
    lang, n = max(counts.items(), key=lambda kv: kv[1])
    # A text in another script is full of Latin names and codes (a Thai paragraph on the NFL
    # teams of California is 70% Latin letters), an English one rarely quotes other scripts:
    # the script wins from a quarter of the Latin letters. CJK characters carry a word each,
    # an alphabet letter a fraction of one.
    weight = 3 if lang in ("zh", "ja", "ko") else 1
    if 4 * n * weight < len(_LATIN_LETTER.findall(sample)):
        return None
    if lang == "ar" and _PERSIAN_LETTERS.search(sample):
        return "fa"
    return lang


@cache
def _latin_identifier() -> Any:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(_LATIN_DETECTABLE))
    return identifier


def detect_language(text: str, *, fallback: str = "en") -> str:
    """The language of ``text``, for choosing its analysis pipeline.

    The dominant script decides for non-Latin text (Han with kana is ``ja``, Hangul ``ko``,
    Cyrillic ``ru``, Arabic ``ar``, or ``fa`` with Persian letters ...). Latin-script text is
    classified by ``py3langid`` among Latin-script languages when ``m3rag[multilingual]`` is
    installed, else it is ``fallback``; a guess under 80% probability is ``fallback`` too.
    Only the first 1,000 characters are read, and py3langid (whose time grows with the text)
    reads 160 of them unless unsure (then 1,000).

    Example:
        >>> detect_language("北京是中国的首都"), detect_language("東京タワーは高い")
        ('zh', 'ja')
        >>> detect_language("ภาษาไทยเขียนติดกัน"), detect_language("Москва — столица")
        ('th', 'ru')
    """
    sample = text[:_SAMPLE]
    lang = _script_language(sample)
    if lang is not None:
        return lang
    identifier = _latin_identifier()
    if identifier is None:
        return fallback
    found, probability = identifier.classify(sample[:_LATIN_SAMPLE])
    if probability < _MIN_PROBABILITY and len(sample) > _LATIN_SAMPLE:
        found, probability = identifier.classify(sample)  # unsure: read more
    # an unsure guess would put a document in a family of its own (another stemmer, and one
    # more analysis of every query): the fallback is the better bet
    return str(found) if probability >= _MIN_PROBABILITY else fallback


def detector_name() -> str:
    """What `detect_language` uses here: ``"script+py3langid"`` or ``"script"``."""
    return "script+py3langid" if _latin_identifier() is not None else "script"


def query_terms(
    text: str, families: Iterable[str], version: int = ANALYSIS_VERSION
) -> list[tuple[str, str]]:
    """The distinct ``(family, term)`` pairs of a query analysed with every family given."""
    pairs = analyse_query(text, families, version)
    return [(family, t) for family, terms in pairs for t in terms]


_TOKEN_CACHE = 65_536  # words per family; cleared when full (a query's words are Zipfian)
_MISSING: Any = object()


def analyse_query(
    text: str, families: Iterable[str], version: int = ANALYSIS_VERSION
) -> list[tuple[str, list[str]]]:
    """Each family given with the distinct terms of ``text`` analysed by its pipeline.

    The same terms as `Pipeline.tokens` (deduplicated), computed for many families at once:
    see `QueryWords` and `Pipeline.term`.
    """
    words = QueryWords(text)
    out = []
    for family in families:
        pipe = pipeline(family, version)
        terms = (pipe.term(word) for word in words.of(pipe))
        out.append((family, list(dict.fromkeys(t for t in terms if t is not None))))
    return out


class QueryWords:
    """A query's distinct words (tokenised, before stop words and stemming), per preparation.

    The text is prepared once per distinct `Pipeline.preparation` (only Arabic and Persian
    differ) and tokenised once in tantivy, however many families analyse it; each family then
    maps the words to its terms with `Pipeline.term`.
    """

    __slots__ = ("_text", "_words")

    def __init__(self, text: str) -> None:
        self._text = text
        self._words: dict[str, list[str]] = {}

    def of(self, pipe: Pipeline) -> list[str]:
        """The distinct words of the text prepared for ``pipe``, in order."""
        kind = pipe.preparation
        words = self._words.get(kind)
        if words is None:
            words = list(dict.fromkeys(_tokenizer().analyze(pipe.prepare(self._text))))
            self._words[kind] = words
        return words


@cache
def _tokenizer() -> Any:
    """The tokenizer of every family alone (tantivy): the words before stop words and stems."""
    tantivy = require("tantivy", purpose="the m3rag index")
    return tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN)).build()


@cache
def _word_cache(stemmer: str | None, stopwords: str | None) -> dict[str, str | None]:
    """Word -> term (``None``: a stop word) of the filters ``stemmer`` and ``stopwords``."""
    return {}


def _term(pipe: Pipeline, word: str) -> str | None:
    cache = _word_cache(pipe.stemmer, pipe.stopwords)
    term = cache.get(word, _MISSING)
    if term is _MISSING:
        found = pipe.analyzer().analyze(word)
        term = found[0] if found else None
        if len(cache) >= _TOKEN_CACHE:
            cache.clear()
        cache[word] = term
    return term  # type: ignore[no-any-return]
