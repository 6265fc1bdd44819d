"""What the index, the retriever and the ingestion need from an encoder: the `Encoder` protocol.

[`M3Encoder`][m3rag.M3Encoder] implements it; so does `m3rag.testing.FakeEncoder`, a
deterministic, torch-free stand-in that lets the retriever, the command line and the adapters be
tested without a model. Anything else that has these members (an encoder behind a server, say)
can be handed to [`Collection`][m3rag.Collection] and [`HybridRetriever`][m3rag.HybridRetriever].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from m3rag.types import Head, M3Output

__all__ = ["Encoder"]


@runtime_checkable
class Encoder(Protocol):
    """An encoder of queries and passages into BGE-M3's outputs.

    Attributes:
        heads: The outputs it can produce, from ``("dense", "sparse", "colbert")``.
        dim: Dense vector size.
        colbert_dim: ColBERT vector size, or ``None`` without that head.
        vocab_size: Token ids of lexical weights are below this.
        max_length: The longest input in tokens, specials included.
        tokenizer: A Hugging Face style tokenizer (the chunker cuts with it).
        model_name_or_path: What the encoder was loaded from (recorded in indexes).
    """

    @property
    def heads(self) -> tuple[Head, ...]:
        """The outputs it can produce."""
        ...

    @property
    def dim(self) -> int:
        """Dense vector size."""
        ...

    @property
    def colbert_dim(self) -> int | None:
        """ColBERT vector size, or ``None``."""
        ...

    @property
    def vocab_size(self) -> int:
        """Lexical token ids are below this."""
        ...

    @property
    def max_length(self) -> int:
        """The longest input in tokens, specials included."""
        ...

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face style tokenizer."""
        ...

    @property
    def model_name_or_path(self) -> str:
        """What the encoder was loaded from."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What an index must agree on: model, heads, dim, colbert_dim, tokenizer_sha256."""
        ...

    def encode_queries(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode queries."""
        ...

    def encode_corpus(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool | None = None,
        sparse: bool | None = None,
        colbert: bool | None = None,
    ) -> M3Output:
        """Encode passages."""
        ...
