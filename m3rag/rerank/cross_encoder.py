"""The bge-reranker cross-encoder: the final precision stage, with FlagReranker's semantics.

For each ``(query, passage)`` pair (``shared/reference/m3_reference_spec.md`` section 7):

1. query ids = the query tokenised without specials, truncated at ``query_max_length``
   (default ``3/4 * max_length``, at most ``max_length - 5``), so the passage always keeps
   room;
   passage ids = the passage tokenised without specials, truncated at ``max_length``;
2. the model input is ``<s> q </s></s> p </s>`` with only the passage cut so that the whole
   pair fits ``max_length`` (``[cls] + q + [sep, sep] + p[:room] + [sep]``);
3. pairs are sorted by length, longest first (``np.argsort(-len)``), batched, right-padded;
4. the score is the single logit of ``XLMRobertaForSequenceClassification``; ``normalize``
   applies a float64 sigmoid, as the reference does.

Step 2 is the id-level construction of FlagReranker under transformers 4. FlagEmbedding 1.4.2 on
transformers 5 instead decodes the truncated ids back to text and re-tokenises the pair, which
can re-segment the cut-off word at the end of a truncated passage; ``pairing="text"`` reproduces
that variant exactly, wherever it succeeds (a re-tokenised query that grows to leave the passage
no room makes FlagReranker fail; m3rag cuts it again at ``query_max_length``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from m3rag._hub import resolve_model_dir
from m3rag._inputs import check_rerank_inputs, validate_pairs
from m3rag._modelfiles import check_weights, load_pretrained, load_tokenizer, read_model_config
from m3rag._torchutil import BatchedModel, resolve_device, resolve_dtype
from m3rag.errors import InputTooLongError, ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = ["RankedPassage", "RerankResult", "RerankScores", "Reranker"]

logger = logging.getLogger(__name__)

DEFAULT_RERANKER = "BAAI/bge-reranker-v2-m3"
Pairing = Literal["ids", "text"]


@dataclass(frozen=True)
class RerankScores:
    """Scores of pairs in input order, and which pairs were truncated to fit ``max_length``.

    Attributes:
        scores: float32 ``[n]`` logits (or sigmoid probabilities with ``normalize=True``).
        truncated: bool ``[n]``: the query was cut at ``query_max_length`` or the passage did not
            fit whole.
    """

    scores: npt.NDArray[np.float32]
    truncated: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class RankedPassage:
    """One reranked passage.

    Attributes:
        index: Position of the passage in the caller's list.
        score: Reranker score (logit, or probability with ``normalize=True``).
        passage: The passage text.
        truncated: Whether the pair was cut to fit ``max_length``.
    """

    index: int
    score: float
    passage: str
    truncated: bool


@dataclass(frozen=True)
class RerankResult(Sequence[RankedPassage]):
    """Passages ranked by reranker score, best first; iterate, index or slice it.

    Attributes:
        query: The query.
        ranked: The ranked passages.
    """

    query: str
    ranked: tuple[RankedPassage, ...]

    def __len__(self) -> int:
        return len(self.ranked)

    def __getitem__(self, i: Any) -> Any:
        return self.ranked[i]

    def __iter__(self) -> Iterator[RankedPassage]:
        return iter(self.ranked)

    @property
    def indices(self) -> list[int]:
        """Caller's indices in ranked order."""
        return [r.index for r in self.ranked]

    @property
    def scores(self) -> list[float]:
        """Scores in ranked order."""
        return [r.score for r in self.ranked]

    @property
    def truncated_indices(self) -> list[int]:
        """Caller's indices of the passages whose pair was truncated."""
        return sorted(r.index for r in self.ranked if r.truncated)

    def __repr__(self) -> str:
        lines = [f"RerankResult(query={self.query!r:.60}, n={len(self)})"]
        for rank, r in enumerate(self.ranked[:10], 1):
            cut = " (truncated)" if r.truncated else ""
            lines.append(f"  {rank:>2}. #{r.index:<4} {r.score:+.4f}  {r.passage!r:.60}{cut}")
        if len(self) > 10:
            lines.append(f"  ... {len(self) - 10} more")
        return "\n".join(lines)


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # float64 as the reference (1 / (1 + np.exp(-x)) per score), then back to float32
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def rank_passages(
    query: str,
    docs: Sequence[str],
    result: RerankScores,
    *,
    top_n: int | None = None,
    normalize: bool = False,
) -> RerankResult:
    """``docs`` ranked by their raw scores in ``result``, best first (ties keep input order)."""
    # order by the logits: the float32 sigmoid can round two distinct logits to one
    # probability, which must not reorder the passages
    order = np.argsort(-result.scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    shown = _sigmoid(result.scores) if normalize else result.scores
    ranked = tuple(
        RankedPassage(int(i), float(shown[i]), docs[i], bool(result.truncated[i])) for i in order
    )
    return RerankResult(query, ranked)


class Reranker(BatchedModel):
    """A bge-reranker cross-encoder (v2-m3, base, large) scoring ``(query, passage)`` pairs.

    Args:
        model_name_or_path: Hub id (default ``"BAAI/bge-reranker-v2-m3"``) or local folder of an
            ``XLMRobertaForSequenceClassification``-style checkpoint with one label.
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
        dtype: ``float32`` / ``float16`` / ``bfloat16``; ``None`` is fp16 on CUDA, fp32 on CPU.
        batch_size: Maximum pairs per forward pass.
        max_batch_tokens: Maximum padded tokens per forward pass; ``None`` batches by count
            alone, as FlagReranker does.
        batch_overhead: As for [`M3Encoder`][m3rag.M3Encoder], over pairs: the fixed cost of
            one forward pass in token slots, by which each call's length-sorted pairs are cut
            into the passes of least total cost; ``"device"`` (the default) is 128 on a CPU and
            ``None`` (fill each pass) on GPUs, and ``"auto"`` measures it on this model on a CPU
            (``None`` on GPUs).
        max_length: Pair length in tokens, specials included; up to the model's limit (8192 for
            v2-m3, 512 for base/large).
        query_max_length: Query length cap; default ``3/4 * max_length`` as FlagReranker
            (``max_length - 5`` below 20, where 3/4 would leave the passage no room).
        show_progress: Show a progress bar over batches.
        pairing: ``"ids"`` (default) builds the pair from token ids; ``"text"`` reproduces
            FlagEmbedding 1.4.2 on transformers 5 (decode and re-tokenise the truncated pair).
        revision: Hub revision for hub ids.
        cache_dir: Hub cache folder.
        trust_remote_code: Allow custom modelling code (off unless asked).

    Raises:
        ValueError: ``device`` is malformed or not available here, or ``dtype`` is unknown
            (checked before anything is loaded; the message lists the available devices).
        ModelLoadError: The model cannot be found or read (a missing or damaged file, a config
            of the wrong shape, a tokenizer that does not fit the model; the message names the
            file), or it has more than one label.
        InputTooLongError: ``max_length`` exceeds what the model supports.

    Example:
        ```python
        reranker = Reranker("BAAI/bge-reranker-v2-m3")
        result = reranker.rerank("what is panda?", ["hi", "The giant panda is a bear."], top_n=1)
        result[0].index, result[0].score
        ```
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] = DEFAULT_RERANKER,
        *,
        device: str | Any | None = None,
        dtype: str | Any | None = None,
        batch_size: int = 128,
        max_batch_tokens: int | None = 16384,
        batch_overhead: int | Literal["auto", "device"] | None = "device",
        max_length: int = 512,
        query_max_length: int | None = None,
        show_progress: bool = False,
        pairing: Pairing = "ids",
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self._init_batching(batch_size, max_batch_tokens, batch_overhead)
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            msg = f"max_length must be an int, got {max_length!r}"
            raise ValueError(msg)
        if pairing not in ("ids", "text"):
            msg = f"pairing must be 'ids' or 'text', got {pairing!r}"
            raise ValueError(msg)
        if max_length < 6:
            msg = f"max_length must be at least 6 (4 special tokens included), got {max_length}"
            raise ValueError(msg)
        # FlagReranker's default, 3/4 of max_length, leaves the passage no room under 20
        q_max = (
            min(max_length * 3 // 4, max_length - 5)
            if query_max_length is None
            else query_max_length
        )
        if (
            isinstance(q_max, bool)
            or not isinstance(q_max, int)
            or not 1 <= q_max <= max_length - 5
        ):
            msg = (
                f"query_max_length must be an int between 1 and max_length - 5 = "
                f"{max_length - 5} (room for the specials and the passage), got {q_max!r}"
            )
            raise ValueError(msg)

        self.model_name_or_path = (
            os.fspath(model_name_or_path)
            if isinstance(model_name_or_path, os.PathLike)
            else model_name_or_path
        )
        # device and dtype first: a bad one fails before any download or weights load
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._folder = resolve_model_dir(model_name_or_path, revision=revision, cache_dir=cache_dir)
        self._config = read_model_config(self._folder)
        self.model_max_length = self._config.usable_positions
        if max_length > self.model_max_length:
            msg = (
                f"max_length={max_length} exceeds the {self.model_max_length} tokens "
                f"{self.model_name_or_path!r} supports; lower it"
            )
            raise InputTooLongError(msg)
        self.max_length = max_length
        self.query_max_length = q_max
        self.show_progress = show_progress
        self.pairing: Pairing = pairing
        self._load(trust_remote_code=trust_remote_code)

    def _load(self, *, trust_remote_code: bool) -> None:
        from transformers import AutoModelForSequenceClassification

        folder = self._folder
        weights = check_weights(folder, self._config)
        self.tokenizer = load_tokenizer(
            folder, self._config, needs=("cls", "sep"), trust_remote_code=trust_remote_code
        )
        model = load_pretrained(
            AutoModelForSequenceClassification,
            folder,
            weights,
            dtype=self.dtype,
            trust_remote_code=trust_remote_code,
        )
        if int(model.config.num_labels) != 1:
            msg = (
                f"{folder} has {model.config.num_labels} labels; a bge-reranker style "
                "cross-encoder has exactly one relevance logit"
            )
            raise ModelLoadError(msg)
        self._model = model.to(self.device).eval()
        self._cls = int(self.tokenizer.cls_token_id)
        self._sep = int(self.tokenizer.sep_token_id)
        pad_id = self.tokenizer.pad_token_id
        self._pad_id = 0 if pad_id is None else int(pad_id)

    def __repr__(self) -> str:
        return (
            f"Reranker({self.model_name_or_path!r}, max_length={self.max_length}, "
            f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})"
        )

    # -- tokenisation -------------------------------------------------------------------------

    def _pair_ids(
        self, queries: list[str], passages: list[str]
    ) -> tuple[list[list[int]], npt.NDArray[np.bool_]]:
        """Model inputs ``<s> q </s></s> p </s>`` and which pairs were truncated."""

        def ids(texts: list[str], limit: int) -> list[list[int]]:  # one more: was it cut?
            out = self._tokenizer_call(
                "__call__", texts, add_special_tokens=False, truncation=True, max_length=limit + 1
            )
            return list(out["input_ids"])

        q_full = ids(queries, self.query_max_length)
        p_full = ids(passages, self.max_length)
        rows: list[list[int]] = []
        truncated = np.zeros(len(queries), dtype=np.bool_)
        retokenised: dict[str, list[int]] = {}
        for i, (q, p) in enumerate(zip(q_full, p_full, strict=True)):
            q_ids = list(q[: self.query_max_length])
            p_ids = list(p[: self.max_length])
            room = self.max_length - 4 - len(q_ids)
            truncated[i] = len(q) > self.query_max_length or len(p) > room
            if self.pairing == "ids":
                rows.append([self._cls, *q_ids, self._sep, self._sep, *p_ids[:room], self._sep])
            else:
                row, recapped = self._text_roundtrip(q_ids, p_ids, retokenised)
                rows.append(row)
                truncated[i] |= recapped
        return rows, truncated

    def _decode(self, ids: list[int]) -> str:
        return str(
            self._tokenizer_call(
                "decode", ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def _text_roundtrip(
        self, q_ids: list[int], p_ids: list[int], retokenised: dict[str, list[int]]
    ) -> tuple[list[int], bool]:
        """FlagEmbedding 1.4.2 + transformers 5: decode the truncated ids and re-tokenise.

        Returns the row and whether the query had to be cut again. Re-tokenised, a query cut
        at ``query_max_length`` can come back a token or two longer (a cut word segments
        differently); where it leaves the passage no room, cutting only the passage cannot fit
        the pair and FlagReranker fails ("Sequence to truncate too short"). The re-tokenised
        query is then cut at ``query_max_length`` and the passage fills the rest. Every pair
        FlagReranker can build is built exactly as it does. ``retokenised`` caches the decoded
        queries' ids over one call (a query is usually scored against many passages).
        """
        query, passage = self._decode(q_ids), self._decode(p_ids)
        if query not in retokenised:
            retokenised[query] = self._tokenize_plain(query)
        q_again = retokenised[query]
        # An empty passage string is no pair at all: <s> q </s>. Otherwise <s> q </s></s> p </s>,
        # and only_second truncation must leave the passage a token, unless the pair fits whole.
        p_again: list[int] | None = None
        if not passage:
            fits = len(q_again) + 2 <= self.max_length
        elif len(q_again) + 4 < self.max_length:
            fits = True
        else:
            p_again = self._tokenize_plain(passage)
            fits = len(q_again) + 4 == self.max_length and not p_again
        if fits:
            encoded = self._tokenizer_call(
                "__call__",
                query,
                passage,
                truncation="only_second",
                max_length=self.max_length,
                padding=False,
            )
            return list(encoded["input_ids"]), False
        q_cut = q_again[: self.query_max_length]
        if not passage:
            return [self._cls, *q_cut, self._sep], True
        if p_again is None:
            p_again = self._tokenize_plain(passage)
        room = self.max_length - 4 - len(q_cut)
        return [self._cls, *q_cut, self._sep, self._sep, *p_again[:room], self._sep], True

    def _tokenize_plain(self, text: str) -> list[int]:
        return list(self._tokenizer_call("__call__", text, add_special_tokens=False)["input_ids"])

    # -- scoring ------------------------------------------------------------------------------

    def score(
        self, pairs: Sequence[tuple[str, str]] | tuple[str, str], *, normalize: bool = False
    ) -> RerankScores:
        """Score pairs, reporting which were truncated.

        Args:
            pairs: ``(query, passage)`` tuples, or one tuple.
            normalize: Apply the sigmoid (probabilities in ``(0, 1)``), as the reference does.

        Returns:
            `RerankScores` in input order.

        Raises:
            TypeError: A pair is not two strings (the message names its index).
            ValueError: A text holds a lone surrogate (the message names the pair and position).
        """
        queries, passages = validate_pairs(pairs)
        if not queries:
            return RerankScores(np.zeros(0, np.float32), np.zeros(0, np.bool_))
        rows, truncated = self._pair_ids(queries, passages)
        scores = self._run(rows)
        if normalize:
            scores = _sigmoid(scores)
        return RerankScores(scores, truncated)

    def compute_score(
        self, pairs: Sequence[tuple[str, str]] | tuple[str, str], *, normalize: bool = False
    ) -> npt.NDArray[np.float32]:
        """Scores of ``(query, passage)`` pairs as a float32 array (see [`score`][])."""
        return self.score(pairs, normalize=normalize).scores

    def _run(self, rows: list[list[int]]) -> npt.NDArray[np.float32]:
        import torch

        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        batches = self._plan(lengths)
        scores = np.zeros(len(rows), dtype=np.float32)

        def forward(part: npt.NDArray[np.intp]) -> torch.Tensor:
            ids, mask = self._pad([rows[i] for i in part])
            logits: torch.Tensor = self._model(
                input_ids=ids, attention_mask=mask, return_dict=True
            ).logits
            return logits.view(-1).float()

        progress = None
        if self.show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(rows), desc="Reranking", unit="pair")
        with torch.inference_mode():
            for part, out in self._run_batches(batches, forward):
                scores[part] = out.cpu().numpy()
                if progress is not None:
                    progress.update(len(part))
        if progress is not None:
            progress.close()
        return scores

    # -- reranking ----------------------------------------------------------------------------

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> RerankResult:
        """Rank ``passages`` for ``query`` by cross-encoder score, best first.

        The caller's list is never modified; each result keeps the passage's original index.
        Ties keep the caller's order.

        Args:
            query: The query.
            passages: Candidate passages (an empty list gives an empty result).
            top_n: Keep only the best ``top_n``; ``None`` keeps all.
            normalize: Report sigmoid probabilities instead of logits.

        Returns:
            [`RerankResult`][m3rag.RerankResult].

        Raises:
            TypeError: ``query`` or a passage is not a string (the message names its index).
            ValueError: ``top_n`` is not a positive int, or a text holds a lone surrogate (the
                message names its index and position).
        """
        docs = check_rerank_inputs(query, passages, top_n)
        if not docs:
            return RerankResult(query, ())
        result = self.score([(query, p) for p in docs])
        return rank_passages(query, docs, result, top_n=top_n, normalize=normalize)

    async def arerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> RerankResult:
        """[`rerank`][m3rag.Reranker.rerank] in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(
            self.rerank, query, passages, top_n=top_n, normalize=normalize
        )
