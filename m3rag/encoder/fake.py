"""A deterministic, torch-free stand-in for [`M3Encoder`][m3rag.M3Encoder], for tests.

`FakeEncoder` has every member of the `m3rag.encoder.protocol.Encoder` protocol and produces all
three heads from a word-level tokenizer and seeded random token vectors: the same text always
gets the same outputs, texts that share words get similar ones, and nothing imports torch or
transformers. It exercises the index, the retriever, the ingestion, the command line and the
adapters in milliseconds; it measures nothing about retrieval quality.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from m3rag._inputs import check_positive_int, validate_texts
from m3rag.encoder.m3 import check_length, select_heads, truncation_length
from m3rag.types import Head, M3Output

__all__ = ["FakeEncoder", "FakeTokenizer"]

_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|\w+|[^\w\s]")
SPECIALS = 3  # ids 0, 1, 2: <s>, <pad>, </s>


class FakeTokenizer:
    """Words, single CJK characters and punctuation as tokens; ids from a stable hash.

    Enough of a Hugging Face tokenizer for [`Chunker`][m3rag.Chunker]: call it for ``input_ids``
    (and ``offset_mapping``), and ``num_special_tokens_to_add``.
    """

    def __init__(self, vocab_size: int = 1000) -> None:
        self.vocab_size = vocab_size

    def token_id(self, token: str) -> int:
        """The id of a token (case-folded), stable across processes."""
        digest = hashlib.blake2b(token.lower().encode("utf-8"), digest_size=8).digest()
        return SPECIALS + int.from_bytes(digest, "little") % (self.vocab_size - SPECIALS)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:  # noqa: FBT001, FBT002 - the HF signature
        """``<s>`` and ``</s>``."""
        return 4 if pair else 2

    def __call__(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        **_: Any,
    ) -> dict[str, Any]:
        """``{"input_ids": [...], "offset_mapping": [(start, end), ...]}`` like a fast tokenizer."""
        spans = [m.span() for m in _TOKEN.finditer(text)]
        ids = [self.token_id(text[a:b]) for a, b in spans]
        if add_special_tokens:
            ids = [0, *ids, 2]
            spans = [(0, 0), *spans, (0, 0)]
        out: dict[str, Any] = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


class FakeEncoder:
    """A deterministic encoder with all three heads and no model (see the module docstring).

    It refuses what [`M3Encoder`][m3rag.M3Encoder] refuses, with the same error types: no head
    requested, a head it lacks asked for, a bad or too large ``max_length``, bad texts.

    Args:
        dim: Dense vector size.
        colbert_dim: ColBERT vector size.
        vocab_size: Token ids are below this.
        max_length: Inputs are cut at this many tokens, specials included (at least 3).
        heads: The heads to offer: ``"dense"`` and any of ``"sparse"``, ``"colbert"``.

    Raises:
        ValueError: A size that is not a positive int, ``max_length`` under 3, or heads without
            ``"dense"`` or with an unknown name.
    """

    def __init__(
        self,
        *,
        dim: int = 16,
        colbert_dim: int = 8,
        vocab_size: int = 1000,
        max_length: int = 512,
        heads: Sequence[Head] = ("dense", "sparse", "colbert"),
    ) -> None:
        for name, value in (("dim", dim), ("colbert_dim", colbert_dim)):
            check_positive_int(value, name)
        if (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, int)
            or vocab_size <= SPECIALS
        ):
            msg = f"vocab_size must be an int > {SPECIALS} (the specials), got {vocab_size!r}"
            raise ValueError(msg)
        check_length(max_length, "max_length")
        offered = tuple(heads)
        if "dense" not in offered or not set(offered) <= {"dense", "sparse", "colbert"}:
            msg = (
                f"heads must hold 'dense' and any of 'sparse', 'colbert' (as a real model), "
                f"got {offered!r}"
            )
            raise ValueError(msg)
        self._dim = dim
        self._colbert_dim = colbert_dim if "colbert" in offered else None
        self._heads: tuple[Head, ...] = tuple(
            h for h in ("dense", "sparse", "colbert") if h in offered
        )
        self.tokenizer = FakeTokenizer(vocab_size)
        self.max_length = max_length
        self.query_max_length = max_length
        self.passage_max_length = max_length
        self.model_name_or_path = "m3rag-fake-encoder"

    @property
    def heads(self) -> tuple[Head, ...]:
        """The heads it produces."""
        return self._heads

    @property
    def dim(self) -> int:
        """Dense vector size."""
        return self._dim

    @property
    def colbert_dim(self) -> int | None:
        """ColBERT vector size."""
        return self._colbert_dim

    @property
    def vocab_size(self) -> int:
        """Token ids are below this."""
        return self.tokenizer.vocab_size

    def fingerprint(self) -> dict[str, Any]:
        """Model, heads and sizes, as an index records them."""
        return {
            "model": self.model_name_or_path,
            "heads": list(self.heads),
            "dim": self.dim,
            "colbert_dim": self.colbert_dim,
            "tokenizer_sha256": hashlib.sha256(
                f"fake-tokenizer-{self.vocab_size}".encode()
            ).hexdigest(),
        }

    def encode_queries(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode queries (the same as passages: the fake has no instruction)."""
        return self._encode(texts, dense=dense, sparse=sparse, colbert=colbert)

    def encode_corpus(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode passages."""
        return self._encode(texts, dense=dense, sparse=sparse, colbert=colbert)

    def count_tokens(
        self, texts: str | Sequence[str], *, max_length: int | None = None
    ) -> np.ndarray:
        """Tokens each text encodes to, specials included (``M3Output.token_counts``).

        Raises:
            TypeError: A text is not a string.
            ValueError: A text holds a lone surrogate, or ``max_length`` < 3.
            InputTooLongError: ``max_length`` exceeds ``self.max_length``.
        """
        items = validate_texts(texts)
        length = truncation_length(self, max_length)
        return np.array(
            [
                min(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) + 2, length)
                for t in items
            ],
            dtype=np.int64,
        )

    def _vector(self, token_id: int, size: int, salt: int) -> np.ndarray:
        rng = np.random.default_rng([token_id, salt])
        v = rng.standard_normal(size)
        out: np.ndarray = v / np.linalg.norm(v)
        return out

    def _encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None,
        sparse: bool | None,
        colbert: bool | None,
    ) -> M3Output:
        items = validate_texts(texts)
        chosen = select_heads(self, dense=dense, sparse=sparse, colbert=colbert)
        want = {head: head in chosen for head in ("dense", "sparse", "colbert")}
        dense_out, lexical_out, colbert_out, counts, cut = [], [], [], [], []
        for text in items:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            cut.append(len(ids) > self.max_length - 2)
            ids = ids[: self.max_length - 2]
            counts.append(len(ids) + 2)
            vecs = [self._vector(i, self.dim, 1) for i in ids] or [self._vector(0, self.dim, 1)]
            v = np.sum(vecs, axis=0)
            dense_out.append(v / np.linalg.norm(v))
            weights: dict[int, float] = {}
            for i in ids:
                w = 0.2 + 0.8 * ((i * 2654435761) % 1000) / 1000
                weights[i] = max(weights.get(i, 0.0), round(w, 4))
            lexical_out.append(weights)
            if self.colbert_dim is not None:
                rows = [self._vector(i, self.colbert_dim, 2) for i in [*ids, 2]]
                colbert_out.append(np.asarray(rows, dtype=np.float32))
        return M3Output(
            np.asarray(dense_out, dtype=np.float32).reshape(len(items), self.dim)
            if want["dense"]
            else None,
            lexical_out if want["sparse"] else None,
            colbert_out if want["colbert"] else None,
            np.asarray(counts, dtype=np.int64),
            np.asarray(cut, dtype=np.bool_),
        )
