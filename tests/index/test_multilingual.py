"""BM25 over collections of several languages; the analysis recorded in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from m3rag import Collection, IndexFormatError
from m3rag.analysis import ANALYSIS_VERSION
from m3rag.errors import UnknownLanguageError

LEGACY = Path(__file__).parent / "data" / "legacy-bm25"
V1 = Path(__file__).parent / "data" / "analysis-v1"  # built by m3rag with analysis version 1

DOCS = {
    "zh-capital": ("北京是中华人民共和国的首都，也是全国的政治中心。", None),
    "zh-river": ("长江是中国最长的河流，流经上海。", None),
    "en-capital": ("Beijing (北京) is the capital of China; its runners were running.", None),
    "en-river": ("The Thames flows through London.", None),
    "ru-capital": ("Москва является столицей России.", None),
    "th-capital": ("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย", None),
    "ja-capital": ("東京は日本の首都である。", None),
    "de-houses": ("Die alten Häuser stehen am Fluss.", {"lang": "de"}),
}


def _mixed(path: Path, **kw: object) -> Collection:
    col = Collection.create(path, heads=(), **kw)  # type: ignore[arg-type]
    ids = list(DOCS)
    col.add([DOCS[i][0] for i in ids], ids=ids, metadata=[DOCS[i][1] for i in ids])
    col.commit()
    return col


def test_mixed_language_collection_answers_each_language(tmp_path: Path) -> None:
    col = _mixed(tmp_path / "c")
    assert col.analysis is not None
    assert col.analysis["version"] == ANALYSIS_VERSION
    assert col.analysis["families"] == ["de", "en", "generic", "ru"]
    assert col.search_bm25("首都", k=1).ids[0] in {"zh-capital", "ja-capital"}
    assert col.search_bm25("最长的河流", k=1).ids == ["zh-river"]
    assert col.search_bm25("river flowing through London", k=1).ids == ["en-river"]
    assert col.search_bm25("столица", k=1).ids == ["ru-capital"]  # stemmed: столицей
    assert col.search_bm25("เมืองหลวง", k=1).ids == ["th-capital"]
    assert col.search_bm25("Haus", k=1).ids == ["de-houses"]  # German stem of Häuser
    assert col.search_bm25("run", k=1).ids == ["en-capital"]  # English stem of running
    col.close()


def test_a_chinese_query_finds_chinese_and_english_documents(tmp_path: Path) -> None:
    col = _mixed(tmp_path / "c")
    found = set(col.search_bm25("北京", k=5).ids)
    assert {"zh-capital", "en-capital"} <= found
    # restricted to one language's analysis, only that family's documents match
    assert set(col.search_bm25("北京", k=5, lang="en").ids) == {"en-capital"}
    assert "en-capital" not in set(col.search_bm25("北京", k=5, lang="zh").ids)
    col.close()


def test_bm25_scores_follow_the_query_analysis(tmp_path: Path) -> None:
    col = _mixed(tmp_path / "c")
    hits = col.search_bm25("北京", k=5)
    keys = col._check_keys(list(range(len(DOCS))))
    scores = col.bm25_scores("北京", keys)
    by_id = dict(zip(col._ids_of(keys.tolist()), scores.tolist(), strict=True))
    for doc_id, score in hits:
        assert by_id[doc_id] == pytest.approx(score, rel=1e-6)
    assert by_id["ru-capital"] == 0.0
    col.close()


def test_terms_no_document_holds_are_left_out_and_scores_unchanged(tmp_path: Path) -> None:
    col = _mixed(tmp_path / "c")
    tantivy = col._tantivy
    families = col._query_families(None)
    queries = ["北京 capital running", "Москва столица", "alten Häusern", "xyzzy", "the a"]
    for text in queries:
        full = tantivy.bm25_query(text, families)  # every family's every term
        pruned = tantivy.bm25_query(text, families, col._terms)
        if pruned is None:  # no term is in any document
            assert len(tantivy.search(col._searcher, full, 10)[0]) == 0
            continue
        keys, scores = tantivy.search(col._searcher, full, 10)
        keys2, scores2 = tantivy.search(col._searcher, pruned, 10)
        assert keys.tolist() == keys2.tolist() and scores.tolist() == scores2.tolist()
    # 'xyzzy' is in no family: no search at all, no hits
    assert col.search_bm25("xyzzy", k=3).ids == []
    col.close()


def test_collection_lang_and_metadata_lang(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=(), lang="de")
    col.add(
        ["Die Häuser", "the houses were running"], ids=["a", "b"], metadata=[{}, {"lang": "en"}]
    )
    col.commit()
    assert col.analysis == {"version": ANALYSIS_VERSION, "lang": "de", "families": ["de", "en"]}
    assert col.search_bm25("Haus", k=2).ids == ["a"]
    assert col.search_bm25("run", k=2).ids == ["b"]
    # 'lang' is also a user's own metadata field: a value that is not a language code is left
    # to them, and the document is analysed in the collection's language
    col.add(["Die Mäuse", "the mice"], ids=["c", "d"], metadata=[{"lang": "x"}, {"lang": 3}])
    col.commit()
    assert col.analysis is not None and col.analysis["families"] == ["de", "en"]
    assert col.search_bm25("Maus", k=4).ids == ["c"]  # German stem of Mäuse
    assert col.search_bm25("mice", k=4, filter={"lang": "x"}).ids == []
    col.close()
    with pytest.raises(UnknownLanguageError, match="'english' is not a language code"):
        Collection.create(tmp_path / "d", heads=(), lang="english")
    assert not (tmp_path / "d").exists()


def test_analysis_survives_reopen_and_refresh(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=())
    col.add(["The river flows."], ids=["en"])
    col.commit()
    reader = Collection.open(tmp_path / "c", read_only=True)
    assert reader.search_bm25("Москва", k=1).ids == []
    col.add(["Москва является столицей России."], ids=["ru"])
    col.commit()
    assert reader.refresh()
    assert reader.search_bm25("Москва", k=1).ids == ["ru"]
    reader.close()
    col.close()
    again = Collection.open(tmp_path / "c", read_only=True)
    assert again.analysis is not None and again.analysis["families"] == ["en", "ru"]
    again.close()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": ANALYSIS_VERSION + 1}, "analysis version"),
        ({"families": ["en", "klingon"]}, "unknown to this m3rag"),
    ],
)
def test_another_analysis_configuration_is_refused(
    tmp_path: Path, change: dict[str, object], match: str
) -> None:
    _mixed(tmp_path / "c").close()
    path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["analysis"].update(change)
    path.write_text(json.dumps(manifest))
    for read_only in (True, False):
        with pytest.raises(IndexFormatError, match=f"{match}.*rebuild the collection"):
            Collection.open(tmp_path / "c", read_only=read_only)


def test_a_damaged_analysis_record_is_reported(tmp_path: Path) -> None:
    _mixed(tmp_path / "c").close()
    path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["analysis"] = {"version": 1, "lang": "auto", "families": "en"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="'analysis' must be null or a dict"):
        Collection.open(tmp_path / "c", read_only=True)


def test_old_collections_open_and_keep_their_analyzer(tmp_path: Path) -> None:
    """A collection written by m3rag before the analysis record (a committed fixture)."""
    shutil.copytree(LEGACY, tmp_path / "old")
    reader = Collection.open(tmp_path / "old", read_only=True)
    assert reader.analysis is None
    assert reader.search_bm25("京", k=1).ids == ["zh"]  # legacy: one token per Han character
    assert reader.search_bm25("run", k=1).ids == ["en"]
    assert reader.search_bm25("Москва", k=1).ids == ["ru"]
    reader.close()
    with Collection.open(tmp_path / "old") as col:  # and they take new documents
        col.add(["The runner ran to Tokyo, 東京."], ids=["new"])
    col = Collection.open(tmp_path / "old", read_only=True)
    assert col.search_bm25("東京", k=1).ids == ["new"]
    assert "analysis" not in col.manifest
    col.close()


def test_english_takes_the_snowball_stop_words(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "c", heads=(), lang="en")
    col.add(["Which of these rivers would flow through London?", "The cat sat"], ids=["a", "b"])
    col.commit()
    assert col.search_bm25("which would", k=2).ids == []  # Snowball's, not in Lucene's 33
    assert col.search_bm25("which rivers", k=2).ids == ["a"]
    col.close()


def test_version_1_collections_keep_their_analysis(tmp_path: Path) -> None:
    """A collection built with analysis version 1 (a committed fixture) is analysed as built."""
    shutil.copytree(V1, tmp_path / "v1")
    reader = Collection.open(tmp_path / "v1", read_only=True)
    assert reader.analysis is not None and reader.analysis["version"] == 1
    # version 1's English stop words are Lucene's 33: 'which' and 'would' are terms
    assert reader.search_bm25("which would", k=3).ids == ["en-which"]
    assert reader.search_bm25("Häuser", k=3).ids == ["de-houses"]
    reader.close()
    with Collection.open(tmp_path / "v1") as col:  # new documents get version 1 too
        col.add(["What about the river?"], ids=["new"], metadata={"lang": "en"})
    col = Collection.open(tmp_path / "v1", read_only=True)
    assert col.search_bm25("about", k=3).ids == ["new"]
    assert col.analysis is not None and col.analysis["version"] == 1
    col.close()


def test_legacy_analyzer_is_unchanged() -> None:
    from m3rag.index.lexical import build_analyzer

    tokens = build_analyzer().analyze("北京是中国的首都 Running models, 東京タワー")
    assert tokens[:8] == ["北", "京", "是", "中", "国", "的", "首", "都"]
    assert "run" in tokens and "model" in tokens
