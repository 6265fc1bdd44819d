"""The BGE-M3 encoder: dense, lexical and ColBERT heads from one forward pass.

Matches FlagEmbedding's ``BGEM3FlagModel`` (1.4.x, ``use_fp16=False``) numerically; the exact
semantics are written up in ``shared/reference/m3_reference_spec.md`` and summarised here:

* tokenise with right truncation at ``max_length`` (specials included), sort by length descending
  with ``np.argsort(-len)``, pad right with the pad id and an attention mask;
* ``H = XLMRobertaModel(ids, mask).last_hidden_state``;
* dense = ``normalize(H[:, 0])``;
* lexical = ``relu(sparse_linear(H))``, per text the maximum weight per token id, specials
  (``<s> </s> <pad> <unk>``) and zero weights dropped, keys in order of first occurrence;
* ColBERT = ``normalize(colbert_linear(H[:, 1:]) * mask[:, 1:])``, rows ``[: n_tokens - 1]``.

Where m3rag differs it is on purpose and does not change the numbers: batches are bounded by a
token budget instead of a fixed count (bit-identical to the reference with
``max_batch_tokens=None``), the pooler the reference computes and throws away is skipped, the
lexical dicts are built with vectorised numpy instead of a Python loop per token, and there is no
throw-away "batch-size probe" forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from m3rag._hub import resolve_model_dir
from m3rag._inputs import validate_pairs, validate_texts
from m3rag._modelfiles import check_weights, load_linear_head, load_pretrained, load_tokenizer
from m3rag._torchutil import BatchedModel, resolve_device, resolve_dtype
from m3rag.encoder._checkpoint import COLBERT_FILE, SPARSE_FILE, CheckpointInfo, inspect_checkpoint
from m3rag.errors import InputTooLongError, UnsupportedOutputError
from m3rag.scoring import colbert_score, lexical_matching_score
from m3rag.types import Head, M3Output

if TYPE_CHECKING:
    import torch

__all__ = [
    "M3Encoder",
    "PairScores",
    "check_length",
    "select_heads",
    "truncation_length",
    "validate_texts",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "BAAI/bge-m3"


_MODE_KEYS = {
    "dense": "dense",
    "sparse": "sparse",
    "colbert": "colbert",
    "sparse+dense": "sparse_dense",
    "colbert+sparse+dense": "colbert_sparse_dense",
}


@dataclass(frozen=True)
class PairScores:
    """Scores of ``(query, passage)`` pairs, one float32 array per mode, as FlagEmbedding returns.

    Index with FlagEmbedding's keys: ``scores["colbert+sparse+dense"]``.

    Attributes:
        dense: Dense inner products.
        sparse: Lexical matching scores.
        colbert: ColBERT MaxSim scores.
        sparse_dense: ``(w_sparse * sparse + w_dense * dense) / (w_sparse + w_dense)``.
        colbert_sparse_dense: ``(w_c * colbert + w_s * sparse + w_d * dense) / (w_d + w_s + w_c)``.
        weights: The ``(dense, sparse, colbert)`` weights used.
    """

    dense: npt.NDArray[np.float32]
    sparse: npt.NDArray[np.float32]
    colbert: npt.NDArray[np.float32]
    sparse_dense: npt.NDArray[np.float32]
    colbert_sparse_dense: npt.NDArray[np.float32]
    weights: tuple[float, float, float]

    def __getitem__(self, key: str) -> npt.NDArray[np.float32]:
        try:
            return getattr(self, _MODE_KEYS[key])  # type: ignore[no-any-return]
        except KeyError:
            msg = f"unknown score mode {key!r}; choose one of {list(_MODE_KEYS)}"
            raise KeyError(msg) from None

    def __len__(self) -> int:
        return len(self.dense)

    def as_dict(self) -> dict[str, list[float]]:
        """The FlagEmbedding-shaped dict of five lists of floats."""
        return {key: self[key].tolist() for key in _MODE_KEYS}


def _validate_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(w) for w in weights)
    if len(values) != 3:
        msg = f"weights must be 3 numbers (dense, sparse, colbert), got {len(values)}"
        raise ValueError(msg)
    if any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        msg = (
            f"weights must be finite, non-negative and not all zero, got {values}; "
            "e.g. (0.4, 0.2, 0.4) for (dense, sparse, colbert)"
        )
        raise ValueError(msg)
    return values[0], values[1], values[2]


def check_length(value: int, name: str) -> int:
    """``value`` if it is an int of at least 3 (``<s>``, one token, ``</s>``).

    Raises:
        ValueError: Anything else (the message names ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 3:
        msg = f"{name} must be an int >= 3 (specials included), got {value!r}"
        raise ValueError(msg)
    return value


def truncation_length(model: Any, max_length: int | None) -> int:
    """The truncation length a call on ``model`` (an encoder, in process or not) uses.

    Its ``passage_max_length`` when ``max_length`` is None, else ``max_length`` if it is an int
    from 3 to the model's own ``max_length``.

    Raises:
        ValueError: Not an int, or under 3.
        InputTooLongError: Over the model's ``max_length``.
    """
    if max_length is None:
        return int(model.passage_max_length)
    length = check_length(max_length, "max_length")
    if length > model.max_length:
        msg = (
            f"max_length={length} exceeds the {model.max_length} tokens "
            f"{str(model.model_name_or_path)!r} supports; lower it"
        )
        raise InputTooLongError(msg)
    return length


def select_heads(
    model: Any, *, dense: bool | None, sparse: bool | None, colbert: bool | None
) -> tuple[Head, ...]:
    """The heads a call on ``model`` (an encoder, real or fake) computes.

    ``None`` means "if the model has the head", ``True`` that it must.

    Raises:
        UnsupportedOutputError: A head the model lacks was asked for explicitly.
        ValueError: No head requested.
    """
    available = tuple(model.heads)
    chosen: list[Head] = []
    options: tuple[tuple[Head, bool | None], ...] = (
        ("dense", dense),
        ("sparse", sparse),
        ("colbert", colbert),
    )
    for head, flag in options:
        if flag is None:
            if head in available:
                chosen.append(head)
        elif flag:
            if head not in available:
                if available == ("dense",):
                    msg = (
                        f"{model.model_name_or_path!r} is a dense-only model and cannot produce "
                        f"{head} output; use a BGE-M3 checkpoint with {COLBERT_FILE} and "
                        f"{SPARSE_FILE}, or ask for dense only"
                    )
                else:
                    msg = (
                        f"{model.model_name_or_path!r} cannot produce {head} output (its heads: "
                        f"{', '.join(available)}); ask for those only"
                    )
                raise UnsupportedOutputError(msg)
            chosen.append(head)
    if not chosen:
        msg = "at least one of dense, sparse, colbert must be requested"
        raise ValueError(msg)
    return tuple(chosen)


def count_with(tokenize: Any, texts: list[str], max_length: int) -> npt.NDArray[np.int64]:
    """Tokens per text, specials included, cut at ``max_length``.

    ``tokenize`` is called as a Hugging Face tokenizer is.
    """
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = tokenize(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return np.array([len(row) for row in ids["input_ids"]], dtype=np.int64)


def head_outputs(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    heads: Sequence[Head],
    *,
    pooling: str,
    sparse_linear: torch.nn.Module | None,
    colbert_linear: torch.nn.Module | None,
) -> dict[str, torch.Tensor]:
    """The three heads on a backbone's last hidden state ``hidden`` [B, L, h].

    Shared by inference ([`M3Encoder`][]) and training (`m3rag.train`), so a fine-tuned model
    scores exactly as it was trained. Returns padded tensors: ``dense`` [B, d] (L2-normalised),
    ``sparse`` [B, L] token weights (``relu``, not yet keyed by token id), ``colbert``
    [B, L-1, d] (L2-normalised, zero rows at pads).
    """
    import torch
    import torch.nn.functional as F

    out: dict[str, torch.Tensor] = {}
    if "dense" in heads:
        if pooling == "cls":
            vec = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
        out["dense"] = F.normalize(vec, dim=-1)
    if "sparse" in heads:
        if sparse_linear is None:
            msg = "the sparse head was requested but the model has none"
            raise UnsupportedOutputError(msg)
        out["sparse"] = torch.relu(sparse_linear(hidden)).squeeze(-1)
    if "colbert" in heads:
        if colbert_linear is None:
            msg = "the colbert head was requested but the model has none"
            raise UnsupportedOutputError(msg)
        vecs = colbert_linear(hidden[:, 1:])
        # fp32 mask as the reference: in fp16 this promotes ColBERT to fp32 before the
        # normalisation, which keeps zero pad rows from turning into NaN.
        vecs = vecs * mask[:, 1:, None].float()
        out["colbert"] = F.normalize(vecs, dim=-1)
    return out


class M3Encoder(BatchedModel):
    """BGE-M3 encoder producing dense, lexical and ColBERT representations in one pass.

    Args:
        model_name_or_path: A hub id (default ``"BAAI/bge-m3"``, fetched through the hub cache,
            honouring ``HF_HUB_OFFLINE``) or a local folder. A dense-only sentence-transformers
            folder (e.g. all-MiniLM-L6-v2) loads too, with the pooling it declares.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (name or ``torch.dtype``); ``None`` is
            fp16 on CUDA and fp32 on CPU. Outputs are float32 whatever the compute dtype.
        batch_size: Maximum texts per forward pass.
        max_batch_tokens: Maximum padded tokens per forward pass (long texts get small batches);
            ``None`` batches by count alone, exactly as FlagEmbedding does.
        batch_overhead: With a token budget, the fixed cost of one forward pass in token slots:
            each call's sorted texts are then cut into the passes of least total cost
            (``batch_overhead + texts x longest`` each) instead of filled to the limits
            (``None``). ``"device"`` (the default) is a typical CPU figure (128) on a CPU, where
            padding costs as much as text, and ``None`` on GPUs; ``"auto"`` measures it on this
            model when first needed (on a CPU; ``None`` on GPUs), as `m3rag serve` does.
        query_max_length: Truncation length of [`encode_queries`][], specials included.
        passage_max_length: Truncation length of [`encode_corpus`][] and [`encode`][]; capped
            at what the model supports (8192 for BGE-M3).
        show_progress: Show a progress bar over batches.
        revision: Hub revision for hub ids.
        cache_dir: Hub cache folder.
        trust_remote_code: Allow custom modelling code from the checkpoint (off unless asked).

    Raises:
        ValueError: ``device`` is malformed or not available here, or ``dtype`` is unknown
            (checked before anything is loaded; the message lists the available devices).
        ModelLoadError: The model cannot be found or read: a missing or damaged file, a config
            of the wrong shape, a tokenizer that does not fit the model (the message names the
            file and says how to fix it).
        MissingHeadError: An M3 checkpoint lacks ``colbert_linear.pt`` or ``sparse_linear.pt``,
            or one is damaged or of the wrong shape.

    Example:
        ```python
        encoder = M3Encoder("BAAI/bge-m3")
        out = encoder.encode_corpus(["BGE M3 is an embedding model.", "北京是中国的首都。"])
        out.dense_vecs.shape, out.lexical_weights[0], out.colbert_vecs[0].shape
        ```
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | Any | None = None,
        dtype: str | Any | None = None,
        batch_size: int = 256,
        max_batch_tokens: int | None = 16384,
        batch_overhead: int | Literal["auto", "device"] | None = "device",
        query_max_length: int = 512,
        passage_max_length: int = 8192,
        show_progress: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self._init_batching(batch_size, max_batch_tokens, batch_overhead)
        check_length(query_max_length, "query_max_length")
        check_length(passage_max_length, "passage_max_length")

        self.model_name_or_path = (
            os.fspath(model_name_or_path)
            if isinstance(model_name_or_path, os.PathLike)
            else model_name_or_path
        )
        # device and dtype first: a bad one fails before any download or weights load
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        folder = resolve_model_dir(model_name_or_path, revision=revision, cache_dir=cache_dir)
        self._info: CheckpointInfo = inspect_checkpoint(folder)
        self.query_max_length = self._cap(query_max_length, "query_max_length")
        self.passage_max_length = self._cap(passage_max_length, "passage_max_length")
        self.show_progress = show_progress
        self._fingerprint: dict[str, Any] | None = None
        self._load(trust_remote_code=trust_remote_code)

    # -- loading ------------------------------------------------------------------------------

    def _cap(self, value: int, name: str) -> int:
        limit = self._info.max_length
        if value > limit:
            logger.info("%s=%d capped at the model's limit of %d tokens", name, value, limit)
            return limit
        return value

    def _load(self, *, trust_remote_code: bool) -> None:
        from transformers import AutoModel

        folder, config = self._info.folder, self._info.config
        # Cheap checks first (weights headers, head files, tokenizer), the backbone last, so a
        # damaged file fails fast and is named (see m3rag._modelfiles).
        weights = check_weights(folder, config)
        self._colbert: torch.nn.Linear | None = None
        self._sparse: torch.nn.Linear | None = None
        if self._info.kind == "m3":
            hidden = self._info.hidden_size
            # load_state_dict casts the stored (fp16) values to the compute dtype, as the
            # reference does: in fp32 the heads hold fp16-valued numbers.
            self._colbert = load_linear_head(folder / COLBERT_FILE, hidden, None, self.dtype)
            self._sparse = load_linear_head(folder / SPARSE_FILE, hidden, 1, self.dtype)
            self._colbert = self._colbert.to(self.device).eval()
            self._sparse = self._sparse.to(self.device).eval()
        self.tokenizer = load_tokenizer(
            folder, config, needs=("cls", "sep", "pad"), trust_remote_code=trust_remote_code
        )
        model = load_pretrained(
            AutoModel, folder, weights, dtype=self.dtype, trust_remote_code=trust_remote_code
        )
        # The reference computes the pooler (dense + tanh on CLS) on every batch and never uses
        # it; dropping it changes no output and saves a matmul per batch.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self._model = model.to(self.device).eval()
        self._special_ids = np.array(
            sorted(
                {
                    i
                    for i in (
                        self.tokenizer.cls_token_id,
                        self.tokenizer.eos_token_id,
                        self.tokenizer.pad_token_id,
                        self.tokenizer.unk_token_id,
                    )
                    if i is not None
                }
            ),
            dtype=np.int64,
        )
        pad = self.tokenizer.pad_token_id
        self._pad_id = 0 if pad is None else int(pad)

    # -- introspection ------------------------------------------------------------------------

    @property
    def heads(self) -> tuple[Head, ...]:
        """The heads this model can produce."""
        return ("dense", "sparse", "colbert") if self._info.kind == "m3" else ("dense",)

    @property
    def dim(self) -> int:
        """Dense vector dimension."""
        return self._info.hidden_size

    @property
    def colbert_dim(self) -> int | None:
        """ColBERT vector dimension, or ``None`` for dense-only models."""
        return None if self._colbert is None else int(self._colbert.out_features)

    @property
    def max_length(self) -> int:
        """The longest input, specials included, the model supports."""
        return self._info.max_length

    @property
    def pooling(self) -> str:
        """Dense pooling: ``"cls"`` (BGE-M3) or ``"mean"``."""
        return self._info.pooling

    @property
    def vocab_size(self) -> int:
        """Size of the tokenizer vocabulary (token ids are below this)."""
        return len(self.tokenizer)

    def fingerprint(self) -> dict[str, Any]:
        """What an index must agree on with this encoder: model, heads, sizes, tokenizer hash.

        The tokenizer hash is the SHA-256 of the sorted vocabulary, so two checkpoints with the
        same name but different tokenizers are told apart.
        """
        if self._fingerprint is None:
            vocab = sorted(self.tokenizer.get_vocab().items())
            digest = hashlib.sha256(
                json.dumps(vocab, ensure_ascii=False).encode("utf-8")
            ).hexdigest()
            self._fingerprint = {
                "model": self.model_name_or_path,
                "heads": list(self.heads),
                "dim": self.dim,
                "colbert_dim": self.colbert_dim,
                "tokenizer_sha256": digest,
            }
        return dict(self._fingerprint)

    def __repr__(self) -> str:
        return (
            f"M3Encoder({self.model_name_or_path!r}, heads={list(self.heads)}, dim={self.dim}, "
            f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})"
        )

    # -- encoding -----------------------------------------------------------------------------

    def encode_queries(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode queries, truncated at ``query_max_length``. See [`encode`][]."""
        return self.encode(
            texts, max_length=self.query_max_length, dense=dense, sparse=sparse, colbert=colbert
        )

    def encode_corpus(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode passages, truncated at ``passage_max_length``. See [`encode`][]."""
        return self.encode(
            texts, max_length=self.passage_max_length, dense=dense, sparse=sparse, colbert=colbert
        )

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        dense: bool | None = True,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode texts with the requested heads in one forward pass per batch.

        Args:
            texts: A string or a list of strings (empty strings are valid, as in the reference).
            max_length: Truncation length in tokens, specials included; default
                ``passage_max_length``. Texts cut at it are flagged in ``M3Output.truncated``.
            dense: Compute dense vectors. ``None`` means "if the model has the head".
            sparse: Compute lexical weights. ``None`` means "if the model has the head".
            colbert: Compute ColBERT vectors. ``None`` means "if the model has the head".

        Returns:
            An [`M3Output`][m3rag.M3Output] in input order; heads not requested are ``None``.

        Raises:
            TypeError: A text is not a string (the message names its index).
            ValueError: A text holds a lone surrogate (the message names its index and position).
            UnsupportedOutputError: A head the model lacks was asked for explicitly.
            InputTooLongError: ``max_length`` exceeds what the model supports.
            ValueError: No head requested, or ``max_length`` < 3.
        """
        items = validate_texts(texts)
        heads = self._select_heads(dense=dense, sparse=sparse, colbert=colbert)
        length = truncation_length(self, max_length)
        if not items:
            return self._empty(heads)
        ids, truncated = self._tokenize(items, length)
        return self._encode_ids(ids, truncated, heads)

    def count_tokens(
        self, texts: str | Sequence[str], *, max_length: int | None = None
    ) -> npt.NDArray[np.int64]:
        """How many tokens each text encodes to, specials included, without running the model.

        What [`encode`][] would report as ``M3Output.token_counts`` for the same texts: a
        tokenizer call only, to size chunks or refuse a request before encoding it.

        Args:
            texts: A string or a list of strings.
            max_length: Truncation length, as in [`encode`][] (default ``passage_max_length``;
                ``query_max_length`` for queries).

        Returns:
            One count per text, in input order.

        Raises:
            TypeError: A text is not a string.
            ValueError: A text holds a lone surrogate, or ``max_length`` < 3.
            InputTooLongError: ``max_length`` exceeds what the model supports.
        """
        items = validate_texts(texts)
        length = truncation_length(self, max_length)
        return count_with(
            lambda *args, **kw: self._tokenizer_call("__call__", *args, **kw), items, length
        )

    def _select_heads(
        self, *, dense: bool | None, sparse: bool | None, colbert: bool | None
    ) -> tuple[Head, ...]:
        return select_heads(self, dense=dense, sparse=sparse, colbert=colbert)

    def _empty(self, heads: tuple[Head, ...]) -> M3Output:
        return M3Output(
            np.zeros((0, self.dim), dtype=np.float32) if "dense" in heads else None,
            [] if "sparse" in heads else None,
            [] if "colbert" in heads else None,
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.bool_),
        )

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
        """Token ids with specials, right-truncated at ``max_length``, and the truncation flags.

        One extra token of room tells which texts were cut; those few are re-tokenised at
        ``max_length`` so their ids are exactly the tokenizer's own truncation.
        """
        probe = self._tokenizer_call(
            "__call__", texts, truncation=True, max_length=max_length + 1, add_special_tokens=True
        )["input_ids"]
        truncated = np.array([len(x) > max_length for x in probe], dtype=np.bool_)
        if truncated.any():
            cut = np.flatnonzero(truncated)
            again = self._tokenizer_call(
                "__call__", [texts[i] for i in cut], truncation=True, max_length=max_length
            )["input_ids"]
            for i, row in zip(cut, again, strict=False):
                probe[i] = row
        return [list(x) for x in probe], truncated

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, heads: tuple[Head, ...]
    ) -> dict[str, torch.Tensor]:
        """Run the backbone once and the requested heads on its last hidden state.

        Returns padded tensors: ``dense`` [B, d], ``sparse`` [B, L] token weights, ``colbert``
        [B, L-1, d] with zero rows at pads.
        """
        hidden = self._model(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        return head_outputs(
            hidden,
            mask,
            heads,
            pooling=self._info.pooling,
            sparse_linear=self._sparse,
            colbert_linear=self._colbert,
        )

    def _encode_ids(
        self, rows: list[list[int]], truncated: np.ndarray, heads: tuple[Head, ...]
    ) -> M3Output:
        import torch

        n = len(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        batches = self._plan(lengths)
        dense = np.zeros((n, self.dim), dtype=np.float32) if "dense" in heads else None
        lexical: list[dict[int, float]] | None = [{}] * n if "sparse" in heads else None
        colbert: list[np.ndarray] | None = (
            [np.empty((0, 0), np.float32)] * n if "colbert" in heads else None
        )
        progress = None
        if self.show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=n, desc="Encoding", unit="text")

        def run(part: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            ids, mask = self._pad([rows[i] for i in part])
            return self._forward(ids, mask, heads), ids

        with torch.inference_mode():
            for batch in batches:
                for part, (out, ids) in self._run_batches([batch], run):
                    if dense is not None:
                        dense[part] = out["dense"].float().cpu().numpy()
                    if lexical is not None:
                        weights = out["sparse"].float().cpu().numpy()
                        for i, d in zip(
                            part, self._lexical_dicts(ids.cpu().numpy(), weights), strict=False
                        ):
                            lexical[i] = d
                    if colbert is not None:
                        mats = out["colbert"].float().cpu().numpy()
                        for j, i in enumerate(part):
                            colbert[i] = np.ascontiguousarray(mats[j, : lengths[i] - 1])
                    if progress is not None:
                        progress.update(len(part))
        if progress is not None:
            progress.close()
        return M3Output(dense, lexical, colbert, lengths, truncated)

    def _encode_distinct(
        self, texts: list[str], max_length: int, heads: tuple[Head, ...]
    ) -> tuple[
        npt.NDArray[np.float32],
        list[dict[int, float]],
        list[npt.NDArray[np.float32]],
        npt.NDArray[np.int64],
        npt.NDArray[np.intp],
    ]:
        """All three heads of each distinct text, encoded once, as [`encode`][] encodes.

        Returns dense vectors, lexical weights, ColBERT vectors and token counts of the distinct
        texts, and where each of ``texts`` is among them.
        """
        distinct = list(dict.fromkeys(texts))
        position = {text: i for i, text in enumerate(distinct)}
        where = np.array([position[t] for t in texts], dtype=np.intp)
        if not distinct:
            return np.zeros((0, self.dim), np.float32), [], [], np.zeros(0, np.int64), where
        rows, truncated = self._tokenize(distinct, max_length)
        out = self._encode_ids(rows, truncated, heads)
        if out.dense_vecs is None or out.lexical_weights is None or out.colbert_vecs is None:
            msg = "compute_score needs the dense, sparse and colbert heads"
            raise UnsupportedOutputError(msg)
        return out.dense_vecs, out.lexical_weights, out.colbert_vecs, out.token_counts, where

    def _lexical_dicts(self, ids: np.ndarray, weights: np.ndarray) -> list[dict[int, float]]:
        """Per-row ``{token_id: max weight}``, specials and zeros dropped, first-occurrence order.

        Vectorised over the whole batch: keep positive non-special positions, key each by
        ``row * V + id``, take the max per key with ``np.maximum.at`` and order keys by their
        first position (row-major, so row by row, left to right).
        """
        keep = (weights > 0) & ~np.isin(ids, self._special_ids)
        rows, cols = np.nonzero(keep)
        out: list[dict[int, float]] = [{} for _ in range(ids.shape[0])]
        if rows.size == 0:
            return out
        token = ids[rows, cols]
        values = weights[rows, cols]
        span = int(max(ids.max(), self.vocab_size)) + 1
        keys = rows.astype(np.int64) * span + token
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        best = np.full(uniq.shape[0], -np.inf, dtype=np.float32)
        np.maximum.at(best, inverse.ravel(), values)
        order = np.argsort(first, kind="stable")
        uniq, best = uniq[order], best[order]
        owner = uniq // span
        bounds = np.searchsorted(owner, np.arange(ids.shape[0] + 1))
        tokens = (uniq % span).tolist()
        vals = best.tolist()
        for r in range(ids.shape[0]):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            if hi > lo:
                out[r] = dict(zip(tokens[lo:hi], vals[lo:hi], strict=False))
        return out

    # -- MCLS (long documents) ---------------------------------------------------------------

    def encode_mcls(
        self,
        texts: str | Sequence[str],
        *,
        window: int = 256,
        max_length: int | None = None,
    ) -> M3Output:
        """Dense vectors of long texts by MCLS, the BGE-M3 paper's multiple-CLS method.

        A ``<s>`` (CLS) token is inserted before every ``window`` tokens,
        ``<s> t1..t256 <s> t257..t512 ... </s>``, the sequence is encoded once, and the dense
        vector is the L2-normalised mean of the last hidden states at all CLS positions (paper,
        Appendix B.2: a CLS every 256 tokens improves long-document retrieval of models not
        fine-tuned on long text). No released library implements it; these choices are ours:
        the first CLS is the usual position-0 ``<s>``, inserted tokens count toward
        ``max_length`` (default ``passage_max_length``), positions stay contiguous. A text of at
        most ``window`` tokens gets exactly the ordinary CLS vector.

        Returns:
            An [`M3Output`][] with dense vectors only (``truncated`` flags texts cut to fit).

        Raises:
            UnsupportedOutputError: The model does not pool with CLS.
            ValueError: ``window`` < 1; [`InputTooLongError`][] for ``max_length``.
        """
        import torch
        import torch.nn.functional as F

        if self._info.pooling != "cls":
            msg = f"MCLS needs a CLS-pooling model; {self.model_name_or_path!r} pools by mean"
            raise UnsupportedOutputError(msg)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            msg = f"window must be a positive int, got {window!r}"
            raise ValueError(msg)
        items = validate_texts(texts)
        limit = (
            self.passage_max_length
            if max_length is None
            else check_length(max_length, "max_length")
        )
        if limit > self.max_length:
            msg = f"max_length={limit} exceeds the {self.max_length} tokens the model supports"
            raise InputTooLongError(msg)
        if not items:
            return self._empty(("dense",))
        cls_id, eos_id = int(self.tokenizer.cls_token_id), int(self.tokenizer.sep_token_id)
        body = self._tokenizer_call("__call__", items, add_special_tokens=False)["input_ids"]
        rows: list[list[int]] = []
        truncated = np.zeros(len(items), dtype=np.bool_)
        for i, ids in enumerate(body):
            # largest n with n + ceil(n / window) + 1 <= limit (the CLS tokens and </s>)
            n = len(ids)
            while n and n + -(-n // window) + 1 > limit:
                n -= 1
            truncated[i] = n < len(ids)
            row: list[int] = []
            for start in range(0, max(n, 1), window):
                row += [cls_id, *ids[start : min(start + window, n)]]
            rows.append([*row, eos_id])
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        dense = np.zeros((len(rows), self.dim), dtype=np.float32)

        def run(part: np.ndarray) -> torch.Tensor:
            ids, mask = self._pad([rows[i] for i in part])
            hidden = self._model(
                input_ids=ids, attention_mask=mask, return_dict=True
            ).last_hidden_state
            is_cls = ((ids == cls_id) & (mask == 1)).unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * is_cls).sum(1) / is_cls.sum(1)
            return F.normalize(mean, dim=-1)

        with torch.inference_mode():
            for part, vecs in self._run_batches(self._plan(lengths), run):
                dense[part] = vecs.float().cpu().numpy()
        return M3Output(dense, None, None, lengths, truncated)

    # -- scoring ------------------------------------------------------------------------------

    @staticmethod
    def dense_score(query_vec: npt.ArrayLike, passage_vec: npt.ArrayLike) -> float:
        """Inner product of two dense vectors (cosine, as they are normalised)."""
        return float(np.dot(np.asarray(query_vec, np.float32), np.asarray(passage_vec, np.float32)))

    @staticmethod
    def lexical_matching_score(
        query_weights: dict[int, float], passage_weights: dict[int, float]
    ) -> float:
        """BGE-M3 lexical matching score; see `m3rag.scoring.lexical_matching_score`."""
        return lexical_matching_score(query_weights, passage_weights)

    @staticmethod
    def colbert_score(query_vecs: npt.ArrayLike, passage_vecs: npt.ArrayLike) -> float:
        """ColBERT MaxSim / query length; see `m3rag.scoring.colbert_score`."""
        return colbert_score(query_vecs, passage_vecs)

    def compute_score(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        weights: Sequence[float] = (0.4, 0.2, 0.4),
        max_query_length: int | None = None,
        max_passage_length: int | None = None,
    ) -> PairScores:
        """Score ``(query, passage)`` pairs on all three heads and their weighted combinations.

        Reproduces ``BGEM3FlagModel.compute_score`` within 1e-5. The queries and the passages are
        encoded as [`encode`][] encodes (each distinct text once, in length-sorted batches under
        ``batch_size`` and ``max_batch_tokens``, halved on a CUDA out-of-memory error), then
        each pair is scored. The ColBERT score keeps the reference's zero rows for pads: the
        reference pads the passages of each input-order chunk of ``batch_size`` pairs to the
        chunk's longest, and a pad offers a 0 similarity to every query token, which matters
        when all real similarities of a query token are negative. ``weights`` are
        ``(dense, sparse, colbert)``.

        Returns:
            [`PairScores`][m3rag.PairScores], one float32 value per pair and mode.

        Raises:
            TypeError: A pair is not two strings (the message names its index).
            ValueError: Bad weights, or a lone surrogate in a text (index and position named).
            UnsupportedOutputError: The model is dense-only.
        """
        w_dense, w_sparse, w_colbert = _validate_weights(weights)
        queries, passages = validate_pairs(pairs)
        heads = self._select_heads(dense=True, sparse=True, colbert=True)
        q_len = (
            self.query_max_length
            if max_query_length is None
            else self._cap(check_length(max_query_length, "max_query_length"), "max_query_length")
        )
        p_len = (
            self.passage_max_length
            if max_passage_length is None
            else self._cap(
                check_length(max_passage_length, "max_passage_length"), "max_passage_length"
            )
        )
        n = len(queries)
        chunk = self.batch_size  # the reference's chunks, before any out-of-memory shrink
        q_dense, q_lex, q_col, _, q_of = self._encode_distinct(queries, q_len, heads)
        p_dense, p_lex, p_col, p_tokens, p_of = self._encode_distinct(passages, p_len, heads)
        dense = np.einsum("ij,ij->i", q_dense[q_of], p_dense[p_of], dtype=np.float32)
        sparse = np.array(
            [lexical_matching_score(q_lex[a], p_lex[b]) for a, b in zip(q_of, p_of, strict=True)],
            dtype=np.float32,
        )
        # the reference pads a passage shorter than the longest of its chunk
        p_tokens = p_tokens[p_of]
        padded = np.zeros(n, dtype=np.bool_)
        for start in range(0, n, chunk):
            part = p_tokens[start : start + chunk]
            padded[start : start + chunk] = part < part.max()
        colbert = np.zeros(n, dtype=np.float32)
        for i, (a, b) in enumerate(zip(q_of, p_of, strict=True)):
            q_vecs, p_vecs = q_col[a], p_col[b]
            best = (q_vecs @ p_vecs.T).max(axis=1)
            if padded[i]:
                best = np.maximum(best, np.float32(0))
            colbert[i] = best.sum(dtype=np.float32) / np.float32(q_vecs.shape[0])
        sparse_dense = (
            (w_sparse * sparse + w_dense * dense) / np.float32(w_sparse + w_dense)
            if (w_sparse + w_dense) > 0
            else np.zeros(n, dtype=np.float32)
        )
        total = w_dense + w_sparse + w_colbert
        all_three = (w_colbert * colbert + w_sparse * sparse + w_dense * dense) / np.float32(total)
        return PairScores(
            dense,
            sparse,
            colbert,
            np.asarray(sparse_dense, dtype=np.float32),
            np.asarray(all_three, dtype=np.float32),
            (w_dense, w_sparse, w_colbert),
        )
