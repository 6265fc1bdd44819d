"""Request bodies (pydantic), in the shapes of the APIs the server imitates."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DeleteRequest",
    "DocumentIn",
    "DocumentsRequest",
    "EmbedAllRequest",
    "EmbedRequest",
    "EmbedSparseRequest",
    "OpenAIEmbeddingsRequest",
    "RerankRequest",
    "SearchRequest",
]


class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="allow")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbedRequest(BaseModel):
    """text-embeddings-inference ``POST /embed``."""

    model_config = ConfigDict(extra="allow")

    inputs: str | list[str]
    normalize: bool | None = True
    truncate: bool | None = False
    truncation_direction: Literal["right", "Right"] | None = "right"
    prompt_name: str | None = None
    dimensions: int | None = None


class EmbedSparseRequest(BaseModel):
    """text-embeddings-inference ``POST /embed_sparse``."""

    model_config = ConfigDict(extra="allow")

    inputs: str | list[str]
    truncate: bool | None = False
    truncation_direction: Literal["right", "Right"] | None = "right"
    prompt_name: str | None = None


class RerankRequest(BaseModel):
    """text-embeddings-inference ``POST /rerank``."""

    model_config = ConfigDict(extra="allow")

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = False
    truncation_direction: Literal["right", "Right"] | None = "right"


class EmbedAllRequest(BaseModel):
    """m3rag ``POST /embed_all``: every head of BGE-M3 in one pass."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str]
    kind: Literal["query", "passage"] = Field(
        "passage", description="query: truncate at query_max_length; passage: passage_max_length"
    )
    dense: bool = True
    sparse: bool = True
    colbert: bool = True
    colbert_format: Literal["json", "base64"] = Field(
        "json", description="base64: little-endian float32 bytes with the matrix shape"
    )


class SearchRequest(BaseModel):
    """m3rag ``POST /search``."""

    model_config = ConfigDict(extra="forbid")

    query: str
    k: int = Field(10, gt=0)
    filter: dict[str, Any] | None = None
    rerank: bool | None = Field(None, description="default: when the server has a reranker")
    fusion: dict[str, Any] | None = Field(
        None, description="FusionConfig fields: method, weights, normalization, rrf_k"
    )
    recall_k: int | None = Field(None, gt=0)
    min_score: float | None = Field(
        None, description="drop hits below it: the reranker's probability, else the fused score"
    )
    highlight: bool = True


class DocumentIn(BaseModel):
    """One document to write."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsRequest(BaseModel):
    """m3rag ``POST /documents``: add or upsert."""

    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn]
    mode: Literal["add", "upsert"] = "upsert"


class DeleteRequest(BaseModel):
    """m3rag ``POST /documents/delete``."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str]
