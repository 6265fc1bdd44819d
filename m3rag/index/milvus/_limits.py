"""Milvus's limits and m3rag's stand-ins, shared by the MilvusStore modules."""

from __future__ import annotations

MAX_ID_BYTES = 512  # the primary key VARCHAR
MAX_TEXT_BYTES = 65_535  # Milvus's largest VARCHAR
MAX_LIMIT = 16_384  # Milvus's largest topk / query window
EMPTY_TOKEN = 2**32 - 2  # Milvus refuses an empty sparse vector: a zero-impact stand-in
EMPTY_WEIGHT = 1e-30
FETCH = 256  # ids per fetch query
PAGE = 1000  # rows per page of a full read (ids, ids_matching, metadata_values)
