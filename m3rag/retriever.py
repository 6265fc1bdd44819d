"""The hybrid retriever: multi-path recall, exact scoring on every path, fusion, reranking.

For a query:

1. the query is encoded once, all heads it needs in one forward pass;
2. **recall**: dense top-``recall_k``, lexical top-``recall_k`` and BM25 top-``recall_k`` (each
   switchable), merged into one candidate set;
3. every candidate is scored **exactly on every path** the collection has -- dense inner
   product, lexical matching score, ColBERT MaxSim from the stored vectors, BM25 -- not only on
   the path that recalled it;
4. **fusion** (`m3rag.fusion`) gives one score per candidate;
5. chunks can be **rolled up** to their parent documents (``max`` or ``max + alpha * mean`` of
   the chunk scores), the best chunk being the evidence;
6. the fused top ``rerank_top_n`` go to the **reranker**, whose order is final; every hit keeps
   its retrieval scores.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from m3rag._inputs import check_min_score, check_positive_int
from m3rag.analysis import family_of
from m3rag.errors import UnsupportedOutputError
from m3rag.fusion import PATHS, FusionConfig, fuse, normalize, ranks
from m3rag.highlight import match_spans
from m3rag.results import Hit, PathScore, SearchResults
from m3rag.rollup import CHUNK_INDEX, END, PARENT_ID, START, Rollup, merge_neighbours, roll_up
from m3rag.types import M3Output

if TYPE_CHECKING:
    from m3rag.encoder import Encoder
    from m3rag.index import Filter, Hits, Store
    from m3rag.rerank import RerankerLike

__all__ = [
    "HybridRetriever",
    "available_paths",
    "default_fusion",
    "holds_chunks",
    "paths_of_heads",
]

logger = logging.getLogger(__name__)

RECALL_PATHS = ("dense", "lexical", "bm25")
_HEAD_OF = {"dense": "dense", "lexical": "sparse", "colbert": "colbert"}


def paths_of_heads(heads: Iterable[str]) -> tuple[str, ...]:
    """The retrieval paths these heads serve, in `PATHS` order (BM25 always)."""
    have = set(heads)
    return tuple(p for p in PATHS if p == "bm25" or _HEAD_OF[p] in have)


def available_paths(collection: Store, encoder: Encoder | None) -> tuple[str, ...]:
    """Paths the collection stores and the encoder computes for queries (BM25 always)."""
    return paths_of_heads(
        set(collection.heads) & (set(encoder.heads) if encoder is not None else set())
    )


def default_fusion(paths: Sequence[str]) -> FusionConfig:
    """The fusion m3rag uses unless told otherwise: every path weighted 1, z-score normalised.

    The retriever, ``m3rag search``/``ask`` and ``m3rag eval``'s hybrid mode all use it. Z-scores
    put BM25's unbounded scores and the heads' bounded ones on one scale; on SciFact and QMSum
    this beat raw BGE-M3 weights and min-max (docs/evaluation.md). For BGE-M3's own
    ``compute_score`` formula pass ``FusionConfig()`` (dense 0.4, lexical 0.2, ColBERT 0.4, raw).
    """
    return FusionConfig(weights=dict.fromkeys(paths, 1.0), normalization="zscore")


def holds_chunks(collection: Store) -> bool:
    """Whether the collection holds chunks (documents with ``parent_id`` metadata)."""
    return collection.has_metadata(PARENT_ID)


class HybridRetriever:
    """Recall on several paths, score every candidate on every path, fuse, rerank.

    Args:
        collection: The [`Collection`][m3rag.Collection] to search, or any other store that
            implements `m3rag.index.Store`.
        encoder: The query encoder; default ``collection.encoder``.
        reranker: An optional [`Reranker`][m3rag.Reranker] (or any `m3rag.rerank.RerankerLike`)
            for the final order.
        fusion: How path scores are combined (default: `default_fusion`, every available
            path weighted 1, z-score normalised; ``FusionConfig()`` is BGE-M3's
            ``compute_score`` formula).
        recall_k: Candidates each recall path contributes.
        rerank_top_n: How many fused candidates the reranker sees.
        recall: Recall paths, a subset of ``("dense", "lexical", "bm25")`` (default: those of
            them the collection and encoder provide).
        rollup: ``"auto"`` (default) rolls chunks up with ``"max"`` when the collection holds
            chunks (``parent_id`` metadata, see `m3rag.rollup`) and returns documents as
            indexed otherwise; ``None`` always returns chunks as indexed; ``"max"`` or
            ``"max_mean"`` group candidates by ``metadata["parent_id"]`` and score each parent
            by its best chunk (plus ``rollup_alpha`` times the mean chunk score), the best chunk
            as evidence.
        rollup_alpha: The ``alpha`` of ``"max_mean"``.
        colbert_precision: ``"float32"`` (default, exact on the stored vectors) or
            ``"bfloat16"`` (each similarity within 0.012 for unit vectors, several times
            faster on CPUs with bfloat16 dot products); see
            [`Collection.colbert_scores`][m3rag.Collection.colbert_scores].
        mmr_lambda: Diversify the final hits by maximal marginal relevance (Carbonell and
            Goldstein, 1998) on the stored dense vectors: ``1.0`` is the plain order, lower
            values trade relevance for novelty. ``None`` (default) is off.
        expand: With chunks, give each hit's ``context`` its ``expand`` neighbouring chunks on
            each side (small-to-big retrieval); ``0`` (default) is off.
        exact_dense: Dense recall from the collection's HNSW graph when it has one
            (``None``, the default; candidates approximate, scores exact) or always by the
            exact scan (``True``).
        lang: Analyse BM25 queries as this language only (an ISO 639-1 code; only documents
            of its analysis family match on the BM25 path); default ``None``: with every
            analysis family the collection holds (see `m3rag.analysis`).

    Raises:
        ValueError: Bad sizes, unknown recall paths (the message lists the valid ones), a
            negative or non-finite ``rollup_alpha``.
        UnsupportedOutputError: A recall path or fusion weight needs a head the collection does
            not store or the encoder cannot produce.

    Example:
        ```python
        retriever = HybridRetriever(collection, reranker=Reranker("BAAI/bge-reranker-v2-m3"))
        results = retriever.retrieve("what is the capital of China?", k=5)
        print(results)              # a table with per-path scores
        results[0].explain()
        ```
    """

    def __init__(
        self,
        collection: Store,
        *,
        encoder: Encoder | None = None,
        reranker: RerankerLike | None = None,
        fusion: FusionConfig | None = None,
        recall_k: int = 100,
        rerank_top_n: int = 50,
        recall: Sequence[str] | None = None,
        rollup: Rollup | Literal["auto"] | None = "auto",
        rollup_alpha: float = 0.3,
        colbert_precision: str = "float32",
        exact_dense: bool | None = None,
        mmr_lambda: float | None = None,
        expand: int = 0,
        lang: str | None = None,
    ) -> None:
        self.collection = collection
        if lang is not None:
            family_of(lang)  # raises UnknownLanguageError naming the value
        self.lang = lang
        self.encoder = encoder if encoder is not None else collection.encoder
        self.reranker = reranker
        check_positive_int(recall_k, "recall_k")
        check_positive_int(rerank_top_n, "rerank_top_n")
        self.recall_k = recall_k
        self.rerank_top_n = rerank_top_n
        if recall is None:
            recall = [p for p in RECALL_PATHS if p in self.available_paths]
        elif isinstance(recall, str):
            msg = f"recall must be a list of paths, e.g. [{recall!r}]"
            raise TypeError(msg)
        unknown = [p for p in recall if p not in RECALL_PATHS]
        if unknown or not recall:
            msg = f"recall must be a non-empty subset of {list(RECALL_PATHS)}, got {list(recall)}"
            raise ValueError(msg)
        self.recall = tuple(dict.fromkeys(recall))
        if rollup not in ("auto", None, "max", "max_mean"):
            msg = f"rollup must be 'auto', None, 'max' or 'max_mean', got {rollup!r}"
            raise ValueError(msg)
        self.rollup: Rollup | None = (
            ("max" if holds_chunks(collection) else None) if rollup == "auto" else rollup
        )
        if (
            isinstance(rollup_alpha, bool)
            or not isinstance(rollup_alpha, (int, float))
            or not math.isfinite(rollup_alpha)
            or rollup_alpha < 0
        ):
            msg = f"rollup_alpha must be a finite non-negative number, got {rollup_alpha!r}"
            raise ValueError(msg)
        self.rollup_alpha = float(rollup_alpha)
        if colbert_precision not in ("float32", "bfloat16"):
            msg = f"colbert_precision must be 'float32' or 'bfloat16', got {colbert_precision!r}"
            raise ValueError(msg)
        self.colbert_precision = colbert_precision
        if exact_dense not in (None, True):
            msg = f"exact_dense must be None or True, got {exact_dense!r}"
            raise ValueError(msg)
        self.exact_dense = exact_dense
        if mmr_lambda is not None and (
            isinstance(mmr_lambda, bool)
            or not isinstance(mmr_lambda, (int, float))
            or not 0.0 <= float(mmr_lambda) <= 1.0
        ):
            msg = f"mmr_lambda must be None or a number in [0, 1], got {mmr_lambda!r}"
            raise ValueError(msg)
        self.mmr_lambda = None if mmr_lambda is None else float(mmr_lambda)
        if isinstance(expand, bool) or not isinstance(expand, int) or expand < 0:
            msg = (
                f"expand must be a non-negative int (neighbouring chunks per side), got {expand!r}"
            )
            raise ValueError(msg)
        self.expand = expand
        available = self.available_paths
        self.fusion = fusion if fusion is not None else default_fusion(available)
        needed = set(self.recall) | set(self.fusion.paths)
        missing = sorted(p for p in needed if p not in available)
        if missing:
            msg = (
                f"the paths {missing} are not available: this collection and encoder provide "
                f"{list(available)}. Remove them from recall/fusion weights, or index with a "
                "model that produces them."
            )
            raise UnsupportedOutputError(msg)
        if self.mmr_lambda is not None and "dense" not in self.collection.heads:
            msg = "mmr_lambda needs the dense vectors, which this collection does not store"
            raise UnsupportedOutputError(msg)
        self._query_heads = {
            _HEAD_OF[p] for p in needed | {"colbert"} if p in _HEAD_OF and p in available
        }

    @property
    def available_paths(self) -> tuple[str, ...]:
        """Paths both the collection stores and the encoder can compute for queries."""
        return available_paths(self.collection, self.encoder)

    # -- public API ---------------------------------------------------------------------------

    def retrieve(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        query_embeddings: M3Output | None = None,
        min_score: float | None = None,
    ) -> SearchResults:
        """The top ``k`` hits for ``query``.

        Args:
            query: The query text (used for BM25 and the reranker).
            k: How many hits.
            filter: A metadata filter, applied inside every path.
            query_embeddings: The query already encoded (one text, e.g. on a GPU machine);
                default: encoded here.
            min_score: A relevance cutoff: hits scoring below it are dropped. With a reranker
                it applies to the reranker's probability (the sigmoid of its score, in
                ``(0, 1)``) and hits the reranker did not see are dropped; without one, to the
                fused score. ``None`` (default) keeps every hit.

        Raises:
            ValueError: Empty query, ``k`` not a positive int, ``min_score`` not finite, or
                ``query_embeddings`` that are not one finite query of the collection's sizes and
                vocabulary (see
                [`Collection.search_dense`][m3rag.Collection.search_dense],
                [`Collection.search_lexical`][m3rag.Collection.search_lexical]).
            CollectionClosedError: The collection is closed.
        """
        return self.retrieve_batch(
            [query], k=k, filter=filter, query_embeddings=query_embeddings, min_score=min_score
        )[0]

    async def aretrieve(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        min_score: float | None = None,
    ) -> SearchResults:
        """[`retrieve`][] in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(
            self.retrieve, query, k=k, filter=filter, min_score=min_score
        )

    def retrieve_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        query_embeddings: M3Output | None = None,
        min_score: float | None = None,
    ) -> list[SearchResults]:
        """[`retrieve`][] for many queries; the queries are encoded in one batched call."""
        if isinstance(queries, str):
            msg = "retrieve_batch takes a list of queries; use retrieve() for one"
            raise TypeError(msg)
        items = list(queries)
        for i, q in enumerate(items):
            if not isinstance(q, str):
                msg = f"queries[{i}] must be a string, got {type(q).__name__}"
                raise TypeError(msg)
            if not q.strip():
                msg = f"queries[{i}] is empty; a query needs at least one non-space character"
                raise ValueError(msg)
        check_positive_int(k, "k")
        check_min_score(min_score)
        if not items:
            return []
        if query_embeddings is not None:
            if not isinstance(query_embeddings, M3Output) or len(query_embeddings) != len(items):
                msg = (
                    f"query_embeddings must be an M3Output with one entry per query ({len(items)})"
                )
                raise ValueError(msg)
            needed = {
                _HEAD_OF[p]
                for p in set(self.recall) | set(self.fusion.paths)
                if p in _HEAD_OF and p in self.available_paths
            }
            missing = sorted(needed - set(query_embeddings.heads))
            if missing:
                msg = (
                    f"query_embeddings lack the head(s) {missing} that this retriever's recall "
                    "and fusion use; encode the queries with them, e.g. "
                    "encoder.encode_queries(queries)"
                )
                raise ValueError(msg)
            encoded: M3Output | None = query_embeddings
        else:
            encoded = self._encode(items)
        return [
            self._one(q, None if encoded is None else encoded[i], k, filter, min_score)
            for i, q in enumerate(items)
        ]

    # -- internals ----------------------------------------------------------------------------

    def _encode(self, queries: list[str]) -> M3Output | None:
        needs_model = bool(self._query_heads)
        if not needs_model:
            return None
        if self.encoder is None:  # pragma: no cover - prevented in __init__
            msg = "this retriever needs an encoder for its dense/lexical/ColBERT paths"
            raise ValueError(msg)
        return self.encoder.encode_queries(
            queries,
            dense="dense" in self._query_heads,
            sparse="sparse" in self._query_heads,
            colbert="colbert" in self._query_heads,
        )

    def _one(
        self,
        query: str,
        enc: M3Output | None,
        k: int,
        filter: Mapping[str, Any] | Filter | None,
        min_score: float | None = None,
    ) -> SearchResults:
        recalled = self._recall(query, enc, max(self.recall_k, k), filter)
        keys = np.array(
            list(dict.fromkeys(int(x) for v in recalled.values() for x in v.tolist())),
            dtype=np.int64,
        )
        if len(keys) == 0:
            return SearchResults(query, (), self._display_paths(), 0)
        raw = self._score_all(query, enc, keys)
        fused = fuse(raw, self.fusion)
        order = np.lexsort((keys, -fused))
        if self.rollup is None:
            # only the hits that can be returned (or reranked) are loaded and built
            order = order[
                : max(k, self.rerank_top_n if self.reranker is not None else k, self._mmr_pool(k))
            ]
        ranked = self._hits(keys, order, raw, fused, recalled)
        if self.rollup is not None:
            ranked = roll_up(ranked, self.rollup, alpha=self.rollup_alpha)
        ranked = self._rerank(query, ranked, k)
        if min_score is not None:
            ranked = [
                h for h in ranked if _relevance(h, reranked=self.reranker is not None) >= min_score
            ]
        if self.mmr_lambda is not None:
            ranked = self._mmr(ranked, k)
        top = ranked[:k]
        if self.expand:
            top = [self._expand(h) for h in top]
        top = [replace(h, spans=tuple(match_spans(h.text, query))) for h in top]
        return SearchResults(query, tuple(top), self._display_paths(), len(keys))

    def _mmr_pool(self, k: int) -> int:
        """How many fused candidates MMR chooses from."""
        return max(4 * k, 20) if self.mmr_lambda is not None else k

    def _mmr(self, ranked: list[Hit], k: int) -> list[Hit]:
        """Maximal marginal relevance over the best candidates, on the stored dense vectors.

        Relevance is each hit's score, min-max scaled over the pool; similarity the cosine of
        two hits' dense vectors (the evidence chunk's for a rolled-up hit).
        """
        pool = ranked[: self._mmr_pool(k)]
        if len(pool) <= 1:
            return ranked
        assert self.mmr_lambda is not None  # noqa: S101 - only called when set
        vecs = self.collection.dense_vecs(np.array([h.key for h in pool], dtype=np.int64))
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sim = vecs @ vecs.T
        scores = np.array([h.score for h in pool], dtype=np.float64)
        spread = scores.max() - scores.min()
        rel = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
        lam = self.mmr_lambda
        chosen: list[int] = []
        left = list(range(len(pool)))
        while left and len(chosen) < k:
            if chosen:
                redundancy = sim[np.ix_(left, chosen)].max(axis=1)
                gain = lam * rel[left] - (1 - lam) * redundancy
            else:
                gain = rel[left]
            best = left[int(np.argmax(gain))]  # ties: the better-ranked candidate
            chosen.append(best)
            left.remove(best)
        return [pool[i] for i in chosen] + [pool[i] for i in left] + ranked[len(pool) :]

    def _expand(self, hit: Hit) -> Hit:
        """The hit with ``context``: its chunk and ``expand`` neighbours on each side, merged."""
        meta = hit.metadata
        parent, index = meta.get(PARENT_ID), meta.get(CHUNK_INDEX)
        if parent is None or not isinstance(index, int) or hit.start is None:
            return replace(hit, context=hit.text)
        wanted = {
            f"{parent}#{index + d}"
            for d in range(-self.expand, self.expand + 1)
            if d and index + d >= 0
        }
        present = [i for i in self.collection.ids_matching({PARENT_ID: parent}) if i in wanted]
        pieces = [
            (hit.start, hit.end if hit.end is not None else hit.start + len(hit.text), hit.text)
        ]
        for doc in self.collection.get(present) if present else []:
            start, end = doc.metadata.get(START), doc.metadata.get(END)
            if isinstance(start, int) and isinstance(end, int):
                pieces.append((start, end, doc.text))
        return replace(hit, context=merge_neighbours(pieces))

    def _recall(
        self,
        query: str,
        enc: M3Output | None,
        depth: int,
        filter: Mapping[str, Any] | Filter | None,
    ) -> dict[str, npt.NDArray[np.int64]]:
        """Each recall path's top ``depth`` keys, in path order.

        A store whose ``concurrent_reads`` is true (a remote one, e.g. `MilvusStore`) gets the
        searches together, one thread each, so a query waits for the slowest round trip
        rather than for their sum; an embedded `Collection` runs them one after another.
        """
        col = self.collection
        calls: dict[str, Callable[[], Hits]] = {}
        if "dense" in self.recall and enc is not None and enc.dense_vecs is not None:
            vec = enc.dense_vecs[0]
            calls["dense"] = lambda: col.search_dense(
                vec, k=depth, filter=filter, exact=self.exact_dense
            )
        if "lexical" in self.recall and enc is not None and enc.lexical_weights is not None:
            weights = enc.lexical_weights[0]
            calls["lexical"] = lambda: col.search_lexical(weights, k=depth, filter=filter)
        if "bm25" in self.recall:
            calls["bm25"] = lambda: col.search_bm25(query, k=depth, filter=filter, lang=self.lang)
        if len(calls) > 1 and getattr(col, "concurrent_reads", False) is True:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(calls), thread_name_prefix="m3rag-recall") as pool:
                futures = {path: pool.submit(call) for path, call in calls.items()}
                return {path: f.result().keys for path, f in futures.items()}
        return {path: call().keys for path, call in calls.items()}

    def _display_paths(self) -> tuple[str, ...]:
        return self.available_paths

    def _score_all(
        self, query: str, enc: M3Output | None, keys: npt.NDArray[np.int64]
    ) -> dict[str, npt.NDArray[np.float64]]:
        col = self.collection
        paths = self.available_paths
        raw: dict[str, npt.NDArray[np.float64]] = {}
        if enc is not None:
            if "dense" in paths and enc.dense_vecs is not None:
                raw["dense"] = col.dense_scores(enc.dense_vecs[0], keys).astype(np.float64)
            if "lexical" in paths and enc.lexical_weights is not None:
                raw["lexical"] = col.lexical_scores(enc.lexical_weights[0], keys).astype(np.float64)
            if "colbert" in paths and enc.colbert_vecs is not None:
                raw["colbert"] = col.colbert_scores(
                    enc.colbert_vecs[0], keys, precision=self.colbert_precision
                ).astype(np.float64)
        raw["bm25"] = col.bm25_scores(query, keys, lang=self.lang).astype(np.float64)
        return raw

    def _hits(
        self,
        keys: npt.NDArray[np.int64],
        order: npt.NDArray[np.int64],
        raw: Mapping[str, npt.NDArray[np.float64]],
        fused: npt.NDArray[np.float64],
        recalled: Mapping[str, npt.NDArray[np.int64]],
    ) -> list[Hit]:
        """Hits for the candidates ``order`` (positions in ``keys``), in that order.

        Normalised scores and ranks are over every candidate, whichever are built.
        """
        norm_method = self.fusion.normalization if self.fusion.method == "weighted" else "none"
        normed = {p: normalize(s, norm_method) for p, s in raw.items()}
        rank = {p: ranks(s) for p, s in raw.items()}
        recalled_sets = {p: set(v.tolist()) for p, v in recalled.items()}
        docs = self.collection.documents(keys[order])
        hits = []
        for doc, i in zip(docs, order.tolist(), strict=True):
            key = int(keys[i])
            paths = {
                p: PathScore(
                    float(raw[p][i]),
                    float(normed[p][i]),
                    int(rank[p][i]),
                    key in recalled_sets.get(p, set()),
                )
                for p in raw
            }
            meta = dict(doc.metadata)
            parent = meta.get(PARENT_ID)
            hits.append(
                Hit(
                    id=str(doc.id),
                    text=doc.text,
                    metadata=meta,
                    score=float(fused[i]),
                    fused_score=float(fused[i]),
                    rerank_score=None,
                    paths=paths,
                    parent_id=None if parent is None else str(parent),
                    key=key,
                )
            )
        return hits

    def _rerank(self, query: str, ranked: list[Hit], k: int) -> list[Hit]:
        if self.reranker is None or not ranked:
            return ranked
        head, tail = ranked[: self.rerank_top_n], ranked[self.rerank_top_n :]
        result = self.reranker.rerank(query, [h.text for h in head])
        reranked = [
            Hit(
                id=head[r.index].id,
                text=head[r.index].text,
                metadata=head[r.index].metadata,
                score=r.score,
                fused_score=head[r.index].fused_score,
                rerank_score=r.score,
                paths=head[r.index].paths,
                parent_id=head[r.index].parent_id,
                chunk_id=head[r.index].chunk_id,
                chunks=head[r.index].chunks,
                key=head[r.index].key,
            )
            for r in result
        ]
        if k > len(reranked) and tail:
            logger.debug(
                "k=%d exceeds rerank_top_n=%d; the rest keep the fused order", k, len(head)
            )
        return reranked + tail


def _relevance(hit: Hit, *, reranked: bool) -> float:
    """What ``min_score`` compares: the reranker's probability, or the fused score."""
    if not reranked:
        return hit.fused_score
    if hit.rerank_score is None:
        return -math.inf  # the reranker did not see it: not judged relevant
    return 1.0 / (1.0 + math.exp(-hit.rerank_score))
