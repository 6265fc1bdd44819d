"""The tantivy side of a collection: BGE-M3 lexical weights as bit-plane terms, and BM25 text.

**Lexical weights.** tantivy has no per-term impact field, so each document token's weight is
quantised to ``BITS``-bit integers of ``STEP`` and written as one term per set bit,
``"{token}_{bit}"``. A query becomes a boolean of ``const_score_query`` clauses weighted
``q_weight * 2**bit * STEP``: tantivy's sum over matched clauses is then exactly
``sum_t q_t * quantised(d_t)``, the BGE-M3 lexical score on quantised document weights. Every
positive weight is quantised to at least 1, so every document sharing a token with the query
matches. The retrieval is made exact by rescoring candidates with the full-precision weights
(kept in the column store) and widening the candidate set until the quantisation error bound
proves nothing outside it can reach the top ``k`` (see `LexicalIndex.candidates`).

**BM25.** Each analysis family (`m3rag.analysis`) has its own text field, ``bm25_{family}``,
whose tantivy analyzer is the family's tokenizer, stop words and Snowball stemmer; a document's
text is prepared in Python (normalisation, no-space scripts to bigrams) and written to the field
of its language's family, where tantivy analyses it (in Rust) as it indexes. A query is analysed
once per family the collection holds and matched against that family's field, so each document
is scored against the query analysed as it was. tantivy scores with BM25 (k1 = 1.2, b = 0.75).
Collections made before m3rag recorded its analysis (no ``analysis`` in the manifest) keep the
*legacy* analyzer they were built with: one token per Han/kana character, words elsewhere,
English stop words and stemmer, run inside tantivy.

Every document also carries its integer ``key`` (the row of the column stores) and the commit
generation ``gen`` that wrote it, so documents written by an interrupted commit can be found and
purged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag._optional import require
from m3rag.analysis import ANALYSIS_VERSION, FAMILIES, Pipeline, QueryWords, pipeline, query_terms
from m3rag.errors import IndexFormatError, M3RagError

__all__ = ["BITS", "STEP", "LexicalIndex", "is_panic", "quantize_weights"]

logger = logging.getLogger(__name__)

STEP = 2.0**-10
"""Quantisation step of document lexical weights."""
BITS = 12
"""Bit planes per token: weights up to ``(2**BITS - 1) * STEP`` (about 4.0) are exact to STEP."""
_QMAX = 2**BITS - 1

ANALYZER = "m3rag_multilingual"
"""The tokenizer name of the legacy analyzer (collections without an ``analysis`` record)."""


def family_field(family: str) -> str:
    """The text field of an analysis family."""
    return f"bm25_{family}"


def _family_tokenizer(family: str) -> str:
    return f"m3rag_{family}"


# Legacy: one token per Han / Hiragana / Katakana character, else runs of letters and digits.
TOKEN_PATTERN = r"[\p{Han}\p{Hiragana}\p{Katakana}]|[\p{L}\p{M}\p{N}]+"  # noqa: S105 - a regex


def quantize_weights(weights: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int64]:
    """Quantise positive weights to integers in ``[1, 2**BITS - 1]`` steps of `STEP`."""
    q = np.rint(np.asarray(weights, dtype=np.float64) / STEP)
    return np.clip(q, 1, _QMAX).astype(np.int64)


def quantization_error(weights: npt.NDArray[np.floating[Any]]) -> float:
    """Largest ``|w - quantised(w)|`` over ``weights`` (0.0 for none)."""
    if len(weights) == 0:
        return 0.0
    q = quantize_weights(weights)
    return float(np.abs(np.asarray(weights, np.float64) - q * STEP).max())


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic surfaced by pyo3 (a ``BaseException``, not ``Exception``)."""
    return type(exc).__name__ == "PanicException"


@contextlib.contextmanager
def tantivy_errors(folder: Path, doing: str) -> Iterator[None]:
    """Report a failure of tantivy (an error, or a Rust panic) as an ``IndexFormatError``.

    pyo3 raises a Rust panic as ``PanicException``, which derives from ``BaseException``, so
    ``except Exception`` in callers would not see it; here it becomes an m3rag error naming
    the folder.
    """
    try:
        yield
    except M3RagError:
        raise
    except BaseException as exc:
        if not (isinstance(exc, Exception) or is_panic(exc)):
            raise
        msg = (
            f"tantivy failed to {doing} in {folder}: {exc}; the index may be damaged: restore the "
            "collection from a backup or rebuild it"
        )
        raise IndexFormatError(msg) from exc


def build_analyzer() -> Any:
    """The legacy BM25 analyzer (a tantivy ``TextAnalyzer``): collections without analysis."""
    tantivy = require("tantivy", purpose="the m3rag index")
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _schema(*, legacy: bool) -> Any:
    tantivy = require("tantivy", purpose="the m3rag index")
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("key", stored=False, indexed=True, fast=True)
    builder.add_unsigned_field("gen", stored=False, indexed=True, fast=False)
    builder.add_text_field("lex", stored=False, tokenizer_name="whitespace", index_option="basic")
    if legacy:
        builder.add_text_field("text", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    else:  # a field per family: its own analyzer, its own BM25 length statistics
        for family in sorted(FAMILIES):
            builder.add_text_field(
                family_field(family),
                stored=False,
                tokenizer_name=_family_tokenizer(family),
                index_option="freq",
            )
    return builder.build()


class LexicalIndex:
    """A tantivy index holding lexical weights and BM25 text, keyed by document ``key``.

    Args:
        folder: The tantivy folder (created if missing).
        writable: Open an index writer (one per collection, guarded by the collection lock).
        legacy: The ``text`` field uses the legacy in-tantivy analyzer (collections without an
            ``analysis`` record); else a field per family holds its pipeline's terms.
        version: The analysis version (`m3rag.analysis.ANALYSIS_VERSIONS`) the pipelines
            follow: the one the collection was built with.
    """

    def __init__(
        self,
        folder: Path,
        *,
        writable: bool,
        legacy: bool = False,
        version: int = ANALYSIS_VERSION,
    ) -> None:
        self._tantivy = require("tantivy", purpose="the m3rag index")
        self.folder = folder
        self._writer: Any = None
        if writable:
            folder.mkdir(parents=True, exist_ok=True)
        self.legacy = legacy
        self.version = version
        self.schema = _schema(legacy=legacy)
        with tantivy_errors(folder, "open the index"):
            if writable:
                self.index = self._tantivy.Index(self.schema, path=str(folder), reuse=True)
            else:  # a reader never creates anything
                self.index = self._tantivy.Index.open(str(folder))
            if legacy:
                self.analyzer = build_analyzer()
                self.index.register_tokenizer(ANALYZER, self.analyzer)
            else:
                for family in sorted(FAMILIES):
                    analyzer = self.pipeline(family).analyzer()
                    self.index.register_tokenizer(_family_tokenizer(family), analyzer)
            if writable:
                self._writer = self.index.writer(heap_size=64_000_000, num_threads=1)

    def pipeline(self, family: str) -> Pipeline:
        """The pipeline of ``family`` in this index's analysis version."""
        return pipeline(family, self.version)

    # -- writing ------------------------------------------------------------------------------

    @staticmethod
    def lex_terms(weights: Mapping[int, float]) -> str:
        """The bit-plane terms of one document's lexical weights, space separated."""
        if not weights:
            return ""
        ids = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        q = quantize_weights(np.fromiter(weights.values(), dtype=np.float64, count=len(weights)))
        terms = [
            f"{t}_{b}"
            for t, v in zip(ids.tolist(), q.tolist(), strict=True)
            for b in range(BITS)
            if v >> b & 1
        ]
        return " ".join(terms)

    def add(
        self,
        keys: Sequence[int],
        gen: int,
        lexical: Sequence[Mapping[int, float]] | None,
        texts: Sequence[str],
        families: Sequence[str] | None = None,
    ) -> None:
        """Stage documents; they become visible to tantivy at `commit`.

        ``families`` (one analysis family per text) is required unless the index is legacy.
        """
        doc_class = self._tantivy.Document
        for i, key in enumerate(keys):
            doc = doc_class()
            doc.add_unsigned("key", int(key))
            doc.add_unsigned("gen", int(gen))
            if lexical is not None:
                doc.add_text("lex", self.lex_terms(lexical[i]))
            if self.legacy:
                doc.add_text("text", texts[i])
            else:
                if families is None:  # pragma: no cover - a programming error
                    msg = "families are required by an analysed (non-legacy) index"
                    raise ValueError(msg)
                family = families[i]
                doc.add_text(family_field(family), self.pipeline(family).prepare(texts[i]))
            self._writer.add_document(doc)

    def delete_keys(self, keys: Sequence[int]) -> None:
        """Stage deletion of documents by key."""
        for key in keys:
            self._writer.delete_documents_by_term("key", int(key))

    def purge_after(self, gen: int) -> None:
        """Delete every document written by a generation after ``gen``, and commit.

        Raises:
            IndexFormatError: tantivy fails (a damaged segment): never a raw tantivy error.
        """
        with tantivy_errors(self.folder, "remove the documents of an interrupted commit"):
            query = self._tantivy.Query.range_query(
                self.schema,
                "gen",
                self._tantivy.FieldType.Unsigned,
                lower_bound=gen + 1,
                upper_bound=None,
                include_lower=True,
            )
            self._writer.delete_documents_by_query(query)
            self._writer.commit()

    def commit(self) -> None:
        """Persist staged changes (tantivy's own atomic commit)."""
        self._writer.commit()

    def rollback(self) -> None:
        """Drop staged changes."""
        self._writer.rollback()

    def close(self) -> None:
        """Release the tantivy writer."""
        if self._writer is not None:
            self._writer.wait_merging_threads()
            self._writer = None

    # -- reading ------------------------------------------------------------------------------

    def searcher(self) -> Any:
        """A point-in-time searcher (holds its segments while alive)."""
        with tantivy_errors(self.folder, "open a searcher"):
            self.index.reload()
            return self.index.searcher()

    def analyze(self, text: str, families: Sequence[str] = ()) -> list[str]:
        """The distinct BM25 terms of a query ``text``: legacy tokens, or ``family:term``."""
        if self.legacy:
            return list(dict.fromkeys(self.analyzer.analyze(text)))
        pairs = query_terms(text, families, self.version)
        return [f"{family}:{term}" for family, term in pairs]

    def _keys(self, searcher: Any, hits: Sequence[tuple[float, Any]]) -> npt.NDArray[np.int64]:
        if not hits:
            return np.zeros(0, dtype=np.int64)
        values = searcher.fast_field_values("key", [addr for _, addr in hits])
        return np.asarray(values, dtype=np.int64)

    def _restrict(self, query: Any, allowed: npt.NDArray[np.int64] | None) -> Any:
        if allowed is None:
            return query
        q = self._tantivy.Query
        occur = self._tantivy.Occur
        keys = q.term_set_query(self.schema, "key", [int(k) for k in allowed])
        # the key set only filters: scored 0, it leaves the query's scores as they are (a
        # plain term-set clause adds 1.0 to every hit)
        return q.boolean_query([(occur.Must, query), (occur.Must, q.const_score_query(keys, 0.0))])

    def lexical_query(self, weights: Mapping[int, float], max_bit: int = BITS - 1) -> Any:
        """The bit-plane query for query weights (``None`` if the query has no positive weight)."""
        q = self._tantivy.Query
        occur = self._tantivy.Occur
        clauses = []
        for token, weight in weights.items():
            if weight <= 0:
                continue
            for bit in range(max_bit + 1):
                term = q.term_query(self.schema, "lex", f"{int(token)}_{bit}")
                clauses.append(
                    (occur.Should, q.const_score_query(term, float(weight) * (2**bit) * STEP))
                )
        return q.boolean_query(clauses) if clauses else None

    def terms(self, searcher: Any) -> TermQueries:
        """The BM25 term queries of ``searcher``'s snapshot (see `TermQueries`)."""
        return TermQueries(self, searcher)

    def bm25_query(
        self, text: str, families: Sequence[str] = (), terms: TermQueries | None = None
    ) -> Any:
        """A disjunction of the query's terms in every family, scored by BM25 (``None``: none).

        With ``terms`` (the snapshot's `TermQueries`), terms no document of the snapshot holds
        are left out: they match nothing and add nothing to any score, so the ranking is the
        same, and a family none of whose terms occur costs nothing at search time.
        """
        q = self._tantivy.Query
        occur = self._tantivy.Occur
        if self.legacy:
            fields = [("text", t) for t in self.analyze(text)]
        elif terms is not None:
            clauses = [(occur.Should, query) for query in terms.queries(text, families)]
            return q.boolean_query(clauses) if clauses else None
        else:
            pairs = query_terms(text, families, self.version)
            fields = [(family_field(f), t) for f, t in pairs]
        if not fields:
            return None
        return q.boolean_query(
            [(occur.Should, q.term_query(self.schema, field, t)) for field, t in fields]
        )

    def search(
        self,
        searcher: Any,
        query: Any,
        limit: int,
        allowed: npt.NDArray[np.int64] | None = None,
        *,
        num_docs: int | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top ``limit`` documents of a query: ``(keys, scores)``, best first.

        ``num_docs`` is ``searcher.num_docs`` when the caller knows it (one call less).
        """
        # tantivy allocates ``limit`` result slots up front (k=10**9 is 32 GB, and sys.maxsize
        # panics): never ask for more than the index holds
        limit = min(limit, int(searcher.num_docs) if num_docs is None else num_docs)
        if query is None or limit <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is not None:
            query = self._restrict(query, allowed)
        try:  # as tantivy_errors(), inline: this is every BM25 and lexical query's path
            hits = searcher.search(query, limit=limit, count=False).hits
            keys = self._keys(searcher, hits)
        except BaseException as exc:
            if not (isinstance(exc, Exception) or is_panic(exc)):
                raise
            with tantivy_errors(self.folder, "search"):
                raise
        scores = np.array([score for score, _ in hits], dtype=np.float32)
        return keys, scores


class TermQueries:
    """The BM25 term queries of one searcher's snapshot: a query's words to term queries.

    A query is analysed once per family a collection holds, but a family usually holds few of
    the query's terms (the one German abstract among English ones): a term whose document
    frequency is zero in the snapshot matches nothing and adds nothing to any score, so it is
    left out of the query, and the ranking is the same. Each ``(family, word)`` is analysed and
    looked up once per snapshot (`Pipeline.term`, then tantivy's ``doc_freq``, a term
    dictionary lookup) and its term query kept, in a bounded cache cleared when full.

    Args:
        index: The lexical index.
        searcher: The snapshot's searcher; the answers hold for it alone.
    """

    _LIMIT = 262_144

    def __init__(self, index: LexicalIndex, searcher: Any) -> None:
        self._schema = index.schema
        self._pipeline = index.pipeline
        self._term_query = index._tantivy.Query.term_query
        self._folder = index.folder
        self._searcher = searcher
        # (family, word) -> ((field, term), term query), or None: a stop word, or no document
        # holds the term
        self._words: dict[tuple[str, str], Any] = {}

    def queries(self, text: str, families: Sequence[str]) -> list[Any]:
        """The distinct term queries of ``text`` analysed by each family, in the snapshot."""
        words = QueryWords(text)
        cache = self._words
        out: dict[tuple[str, str], Any] = {}  # one clause per term (words with one stem)
        for family in families:
            pipe = self._pipeline(family)
            for word in words.of(pipe):
                found = cache.get((family, word), _MISSING)
                if found is _MISSING:
                    found = self._lookup(family, pipe.term(word))
                    if len(cache) >= self._LIMIT:
                        cache.clear()
                    cache[family, word] = found
                if found is not None:
                    out[found[0]] = found[1]
        return list(out.values())

    def _lookup(self, family: str, term: str | None) -> tuple[tuple[str, str], Any] | None:
        """``((field, term), term query)`` if a document holds the term, else ``None``."""
        if term is None:
            return None
        field = family_field(family)
        # once per word and snapshot (cached): a damaged segment fails here first
        with tantivy_errors(self._folder, "look up a term"):
            if self._searcher.doc_freq(field, term) == 0:
                return None
        return (field, term), self._term_query(self._schema, field, term)


_MISSING: Any = object()
