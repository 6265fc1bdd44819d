"""One ``--store`` spec for every store: a folder path or a ``milvus://`` URI.

`open_store` turns the spec into a store:

* a folder path (or ``file://PATH``): a [`Collection`][m3rag.Collection];
* ``milvus://HOST:PORT/NAME``: a [`MilvusStore`][m3rag.MilvusStore] on ``http://HOST:PORT``,
  collection ``NAME``; ``milvus+https://HOST:PORT/NAME`` connects with TLS. ``?db=DB`` picks a
  database.

The token never goes in the spec (specs end up in logs, shell history and process lists): it
comes from the ``M3RAG_MILVUS_TOKEN`` environment variable, and is never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from m3rag.encoder import Encoder
    from m3rag.index.protocol import WritableStore

__all__ = ["TOKEN_ENV", "open_store", "parse_milvus_uri"]

TOKEN_ENV = "M3RAG_MILVUS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
_SCHEMES = {"milvus": "http", "milvus+http": "http", "milvus+https": "https"}


def parse_milvus_uri(spec: str) -> tuple[str, str, str | None]:
    """``(server uri, collection name, database)`` of a ``milvus://HOST:PORT/NAME`` spec.

    Raises:
        ValueError: Not a milvus spec, no collection name, a password in the spec, or an
            unknown query parameter.
    """
    parts = urlsplit(spec)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        msg = f"{spec!r} is not a milvus:// URI; use milvus://HOST:PORT/NAME"
        raise ValueError(msg)
    if parts.password is not None or parts.username is not None:
        msg = (
            "put no credentials in the store URI (it ends up in logs and shell history); "
            f"set the {TOKEN_ENV} environment variable instead"
        )
        raise ValueError(msg)
    name = parts.path.strip("/")
    if not parts.hostname or not name or "/" in name:
        msg = (
            "the store URI needs a host and one collection name: milvus://HOST:PORT/NAME, "
            f"got {spec!r}"
        )
        raise ValueError(msg)
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        msg = f"unknown parameters {unknown} in the store URI; only ?db=DATABASE is understood"
        raise ValueError(msg)
    db = query.get("db", [None])[-1]
    port = f":{parts.port}" if parts.port else ""
    return f"{scheme}://{parts.hostname}{port}", name, db


def open_store(
    spec: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    create: bool = False,
    read_only: bool = False,
    **options: Any,
) -> WritableStore:
    """Open (or create) the store a spec names: a `Collection` folder or a Milvus collection.

    Args:
        spec: A folder path, ``file://PATH``, ``milvus://HOST:PORT/NAME`` or
            ``milvus+https://HOST:PORT/NAME`` (``?db=DB`` optional).
        encoder: The encoder of the documents and queries.
        create: Create the store if it does not exist (an existing one is opened).
        read_only: Open it read-only.
        **options: Passed on to ``Collection.create`` or ``MilvusStore`` (e.g. ``lang``).

    Raises:
        CollectionNotFoundError: It does not exist and ``create`` is false.
        ValueError: A malformed milvus spec.
    """
    text = os.fspath(spec)
    if "://" in text and not text.startswith("file://"):
        from m3rag.index.milvus import MilvusStore

        uri, name, db = parse_milvus_uri(text)
        return MilvusStore(
            uri,
            name,
            encoder=encoder,
            create=create,
            read_only=read_only,
            token=os.environ.get(TOKEN_ENV) or None,
            db_name=db,
            **options,
        )
    from m3rag.index.collection import Collection
    from m3rag.index.manifest import MANIFEST

    folder = Path(text.removeprefix("file://"))
    if create and not (folder / MANIFEST).exists():
        return Collection.create(folder, encoder=encoder, **options)
    if options:
        msg = f"options {sorted(options)} only apply when creating a collection"
        raise TypeError(msg)
    return Collection.open(folder, encoder=encoder, read_only=read_only)
