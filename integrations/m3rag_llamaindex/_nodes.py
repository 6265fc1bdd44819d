"""Stored documents back into LlamaIndex nodes: one decoding for the store and the retriever.

`M3VectorStore` writes each node with LlamaIndex's ``node_to_metadata_dict`` (the node's JSON
under ``_node_content``, its type, and its document id under three keys), plus its id under
``NODE_ID`` so that queries can be restricted to nodes by filter. Reading a hit back decodes
that, so the node has its own metadata, relationships (``ref_doc_id``) and excluded keys, as
LlamaIndex's own stores give it; documents written by anything else become plain ``TextNode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.schema import BaseNode, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from m3rag.rollup import CHUNK_FIELDS

__all__ = ["INTERNAL_METADATA", "NODE_ID", "hide_metadata", "stored_node"]

INTERNAL_METADATA = (*CHUNK_FIELDS, "source")
"""Metadata keys kept out of the LLM's and the embedding model's view of a node by default."""

NODE_ID = "_node_id"
"""The metadata key `M3VectorStore` keeps each node's id under (filters cannot read ids)."""


def stored_node(node_id: str, text: str, metadata: Mapping[str, Any]) -> BaseNode:
    """The node a stored document holds, with m3rag's internal metadata hidden."""
    meta = dict(metadata)
    try:
        node = metadata_dict_to_node(meta, text=text)
    except (ValueError, KeyError, TypeError):  # stored by another writer: a plain node
        node = TextNode(id_=node_id, text=text, metadata=meta)
    node.id_ = node_id
    hide_metadata(node, [key for key in INTERNAL_METADATA if key in node.metadata])
    return node


def hide_metadata(node: BaseNode, keys: list[str]) -> None:
    """Keep ``keys`` of the node's metadata out of the LLM's and the embedding model's view."""
    for key in keys:
        if key not in node.excluded_llm_metadata_keys:
            node.excluded_llm_metadata_keys.append(key)
        if key not in node.excluded_embed_metadata_keys:
            node.excluded_embed_metadata_keys.append(key)
