"""Hard negatives mined from a `Collection`, written back in the training format.

For each query, the collection is searched with one path (``dense``, ``lexical``, ``colbert``,
``bm25``) or the fused ``hybrid`` score, exactly as `m3rag.eval` searches; the hits at ranks
``window[0]`` to ``window[1]`` (0-based, end excluded, e.g. 10-100) minus the query's positives
are the candidates, and ``negatives`` of them are drawn at random. Skipping the top ranks keeps
unjudged relevant documents (false negatives) out, as FlagEmbedding's ``hn_mine`` does with its
``range_for_sampling``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from m3rag.train.data import TrainExample

if TYPE_CHECKING:
    from m3rag.encoder import M3Encoder
    from m3rag.index import Collection

__all__ = ["mine_hard_negatives"]


def mine_hard_negatives(
    examples: Sequence[TrainExample],
    collection: Collection,
    *,
    encoder: M3Encoder | None = None,
    mode: str = "dense",
    window: tuple[int, int] = (10, 100),
    negatives: int = 15,
    seed: int = 0,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[TrainExample]:
    """New examples whose ``neg`` are hard negatives from ``collection``.

    Positives are skipped by document id (``extra["pos_ids"]``, set for BEIR data) and by text.
    The examples' teacher scores are dropped (they no longer match the negatives).

    Args:
        examples: The training examples (their queries are searched as written, no prompt).
        collection: An index of the corpus the negatives come from.
        encoder: The query encoder (``None``: BM25 only).
        mode: ``dense``, ``lexical``, ``colbert``, ``bm25`` or ``hybrid`` (the fused score).
        window: Ranks ``[start, end)`` to sample from.
        negatives: How many to keep per query (fewer when the window has fewer candidates).
        seed: The random draw.
        batch_size: Queries per search batch.
        on_progress: ``on_progress(done, total)`` per batch.

    Raises:
        ValueError: A bad window or count, or a mode the collection and encoder cannot serve.
    """
    from m3rag.eval import check_modes, mode_config
    from m3rag.fusion import FusionConfig
    from m3rag.retriever import HybridRetriever, available_paths

    start, end = window
    if not 0 <= start < end:
        msg = f"window must be (start, end) with 0 <= start < end, got {window!r}"
        raise ValueError(msg)
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        msg = f"negatives must be a positive int, got {negatives!r}"
        raise ValueError(msg)
    available = available_paths(collection, encoder)
    check_modes([mode], available, reranker=False)
    recall, weights = mode_config(mode, available)
    fusion = (
        FusionConfig(weights=weights, normalization="zscore")
        if mode == "hybrid"
        else FusionConfig(weights=weights)
    )
    retriever = HybridRetriever(
        collection,
        encoder=encoder,
        fusion=fusion,
        recall=recall,
        recall_k=max(100, end),
        rollup=None,
    )
    rng = np.random.default_rng(seed)
    out: list[TrainExample] = []
    for lo in range(0, len(examples), batch_size):
        part = examples[lo : lo + batch_size]
        results = retriever.retrieve_batch([ex.query for ex in part], k=end)
        for ex, hits in zip(part, results, strict=True):
            pos_ids = set(ex.extra.get("pos_ids", ()))
            pos_texts = {p.strip() for p in ex.pos}
            pool = [
                h.text
                for h in list(hits)[start:end]
                if h.id not in pos_ids and h.text.strip() not in pos_texts
            ]
            if len(pool) > negatives:
                pick = sorted(rng.choice(len(pool), size=negatives, replace=False))
                pool = [pool[int(i)] for i in pick]
            out.append(replace(ex, neg=tuple(pool), pos_scores=None, neg_scores=None))
        if on_progress is not None:
            on_progress(min(lo + batch_size, len(examples)), len(examples))
    return out
