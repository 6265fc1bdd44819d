"""The multilingual BM25 analysis: no sentence is one token, Snowball stems per language."""

from __future__ import annotations

import time

import pytest

from m3rag.analysis import (
    AUTO,
    SNOWBALL,
    analyse_query,
    detect_language,
    family_of,
    pipeline,
    query_terms,
)
from m3rag.errors import UnknownLanguageError

# One sentence per script written without spaces between words (and Korean, whose spaced
# words are long agglutinated runs).
SENTENCES = {
    "zh": "北京是中华人民共和国的首都和政治中心",
    "ja": "東京タワーは東京都港区芝公園にある総合電波塔です",
    "ko": "서울특별시는대한민국의수도이자최대도시이다",
    "th": "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "lo": "ນະຄອນຫຼວງວຽງຈັນເປັນເມືອງຫຼວງຂອງປະເທດລາວ",
    "km": "ភ្នំពេញជារាជធានីនៃព្រះរាជាណាចក្រកម្ពុជា",
    "my": "နေပြည်တော်သည်မြန်မာနိုင်ငံ၏မြို့တော်ဖြစ်သည်",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_a_sentence_without_spaces_is_never_one_token(lang: str) -> None:
    sentence = SENTENCES[lang]
    tokens = pipeline(lang).tokens(sentence)
    assert sentence not in tokens
    assert len(tokens) >= len(sentence) // 4
    # every token is short (a bigram of characters, or of a letter with its vowel/tone marks)
    assert max(len(t) for t in tokens) <= 10
    # a word of the sentence is found by the query that is that word
    word = sentence[:4]
    assert set(pipeline(lang).tokens(word)) <= set(tokens)


def test_thai_bigrams_keep_vowel_and_tone_marks_with_their_letter() -> None:
    tokens = pipeline("th").tokens("เขียน")  # 'write': เ ข ี ย น
    assert "เขี" in tokens and "ขีย" in tokens
    assert not any(t[0] in "\u0e35\u0e48" for t in tokens)  # never a token starting with a mark


def test_cjk_run_in_latin_text_and_latin_in_cjk_text() -> None:
    assert pipeline("en").tokens("BGE-M3 北京 models") == ["bge", "m3", "北京", "model"]
    assert pipeline("zh").tokens("北京 iPhone") == ["北京", "iphone"]


# Known Snowball pairs, one per language (the Snowball project's sample vocabularies).
STEMS = {
    "ar": ("المكتبات", "مكتب"),
    "da": ("undersøgelserne", "undersøg"),
    "de": ("Häuser", "haus"),
    "el": ("ανθρώπους", "ανθρωπ"),
    "en": ("running", "run"),
    "es": ("corriendo", "corr"),
    "fi": ("taloissa", "talo"),
    "fr": ("continuellement", "continuel"),
    "hu": ("házakban", "ház"),
    "it": ("correndo", "corr"),
    "nl": ("lopende", "loop"),
    "no": ("bilene", "bil"),
    "pt": ("correndo", "corr"),
    "ro": ("frumoasele", "frumoas"),
    "ru": ("бегущими", "бегущ"),
    "sv": ("bilarna", "bil"),
    "ta": ("வீடுகளில்", "வீடு"),
    "tr": ("evlerinden", "ev"),
}


def test_every_snowball_language_has_a_known_pair() -> None:
    assert set(STEMS) == set(SNOWBALL)


@pytest.mark.parametrize("lang", sorted(STEMS))
def test_stemming_per_language(lang: str) -> None:
    word, stem = STEMS[lang]
    assert pipeline(lang).tokens(word) == [stem]


@pytest.mark.parametrize("lang", sorted(STEMS))
def test_stems_agree_with_pystemmer(lang: str) -> None:
    """tantivy's Snowball stemmers against PyStemmer's (the Snowball C code) on a few words."""
    stemmer_mod = pytest.importorskip("Stemmer")
    stemmer = stemmer_mod.Stemmer(SNOWBALL[lang])
    word = STEMS[lang][0].casefold()
    assert pipeline(lang).tokens(word) == [stemmer.stemWord(word)]


def test_the_language_decides_the_stem() -> None:
    assert pipeline("de").tokens("Häuser") == ["haus"]
    assert pipeline("en").tokens("Häuser") == ["häuser"]
    assert pipeline("ru").tokens("бегущими") == ["бегущ"]
    assert pipeline("zh").tokens("бегущими running") == ["бегущими", "running"]


def test_stop_words_where_tantivy_has_them() -> None:
    assert pipeline("en").tokens("the cat and the hat") == ["cat", "hat"]
    assert pipeline("de").tokens("der Hund und die Katze") == ["hund", "katz"]
    assert pipeline("ru").tokens("кошка и собака") == ["кошк", "собак"]


def test_normalisation_nfkc_casefold_arabic_persian() -> None:
    assert pipeline("en").tokens("ＦＵＬＬ") == ["full"]  # full-width forms
    assert pipeline("de").tokens("STRASSE") == pipeline("de").tokens("Straße")
    # harakat and tatweel do not change an Arabic term
    assert pipeline("ar").tokens("كَتَبَ") == pipeline("ar").tokens("كتب")
    assert pipeline("ar").tokens("كـتـب") == pipeline("ar").tokens("كتب")
    # Persian: Arabic yeh and kaf are the Persian letters
    assert pipeline("fa").tokens("كتابي") == pipeline("fa").tokens("کتابی")


def test_families() -> None:
    assert family_of("pt-BR") == "pt"
    assert family_of("zh_Hant") == "generic"
    assert family_of("nb") == "no"
    assert family_of("ur") == "fa"
    assert {family_of(x) for x in ("zh", "ja", "ko", "th", "lo", "km", "my", "vi")} == {"generic"}
    for bad in ("", "english", "e1", "x", 3):
        with pytest.raises(UnknownLanguageError, match="language code"):
            family_of(bad)  # type: ignore[arg-type]
    assert AUTO == "auto"


def test_query_terms_per_family_are_prefixed_and_distinct() -> None:
    terms = query_terms("running runs 北京", ["en", "generic"])
    assert terms == [
        ("en", "run"),
        ("en", "北京"),
        ("generic", "running"),
        ("generic", "runs"),
        ("generic", "北京"),
    ]


def test_query_analysis_equals_each_pipeline_on_the_sentence() -> None:
    """Tokenised once and mapped word by word (cached), a query gets each pipeline's terms."""
    texts = [
        "The runners were running; the runner's runs. Die Häuser, Москва, 北京是首都",
        "كَتَبَ الطالب كتابي  كتاب",
        "ภาษาไทยเขียนติดกัน ＦＵＬＬ width STRASSE Straße and the AND",
    ]
    families = ["ar", "de", "en", "fa", "generic", "ru"]
    for text in texts * 2:  # the second time from the word cache
        expected = [(f, list(dict.fromkeys(pipeline(f).tokens(text)))) for f in families]
        assert analyse_query(text, families) == expected
    assert pipeline("en").term("the") is None and pipeline("en").term("running") == "run"


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("北京是中国的首都", "zh"),
        ("東京タワーは高い", "ja"),
        ("서울은 한국의 수도입니다", "ko"),
        ("กรุงเทพมหานคร", "th"),
        ("ນະຄອນຫຼວງວຽງຈັນ", "lo"),
        ("ភ្នំពេញ", "km"),
        ("နေပြည်တော်", "my"),
        ("Москва — столица России", "ru"),
        ("القاهرة عاصمة مصر", "ar"),
        ("تهران پایتخت ایران است", "fa"),
        ("Η Αθήνα είναι η πρωτεύουσα", "el"),
        ("Who wrote the Iliad? Homer (Ὅμηρος)", "en"),
        ("Beijing (北京) is the capital of the People's Republic of China.", "en"),
        # a Thai text full of Latin names is Thai
        ("ทีมกีฬาอาชีพในแคลิฟอเนียใต้ประกอบด้วยทีมจาก NFL (Los Angeles Rams, San Diego) NBA", "th"),
    ],
)
def test_detection_by_script(text: str, lang: str) -> None:
    assert detect_language(text) == lang


def test_detection_of_latin_languages_with_py3langid() -> None:
    pytest.importorskip("py3langid")
    cases = {
        "en": "Which river flows through the capital of the country?",
        "de": "Welcher Fluss fließt durch die Hauptstadt des Landes?",
        "fr": "Quel fleuve traverse la capitale du pays ?",
        "es": "¿Qué río atraviesa la capital del país?",
        "it": "Quale fiume attraversa la capitale del paese?",
        "pt": "Qual rio atravessa a capital do país?",
        "nl": "Welke rivier stroomt door de hoofdstad van het land?",
    }
    assert {lang: detect_language(text) for lang, text in cases.items()} == {
        lang: lang for lang in cases
    }
    start = time.perf_counter()
    for _ in range(20):
        for text in cases.values():
            detect_language(text)
    # a short query is classified in well under a millisecond
    assert (time.perf_counter() - start) / (20 * len(cases)) < 2e-3


def test_detection_without_a_detector_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import m3rag.analysis as analysis

    monkeypatch.setattr(analysis, "_latin_identifier", lambda: None)
    assert detect_language("Welcher Fluss fließt durch die Hauptstadt?") == "en"
    assert detect_language("Welcher Fluss?", fallback="de") == "de"
    assert detect_language("北京是中国的首都") == "zh"  # scripts need no detector
