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
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from m3rag.encoder import Encoder
    from m3rag.index.protocol import WritableStore

__all__ = ["TOKEN_ENV", "open_store", "parse_milvus_uri", "redact_uri"]

TOKEN_ENV = "M3RAG_MILVUS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
_SCHEMES = {"milvus": "http", "milvus+http": "http", "milvus+https": "https"}
_FORM = "milvus://HOST:PORT/NAME"


def redact_uri(text: str) -> str:
    """``text`` fit for a message, a log or a repr: no credentials, no query values.

    Everything between ``://`` and the last ``@`` becomes ``***`` (a password may hold ``/``,
    so the last ``@`` counts), and all of it when a ``?`` or ``#`` comes before that ``@``
    (in a password, or the ``@`` is in a query: which, no one can tell). Each query parameter
    reads ``db=***``, or ``***`` for a name m3rag does not know (a token pasted as a name
    stays hidden too); a fragment reads ``#***``. Works on text that is not a valid URI.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:
        at = rest.rindex("@")
        cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        if cut < at:  # a "?" or "#" before the "@": in a password, or the "@" in a query
            return f"{scheme}{sep}***"
        rest = "***@" + rest[at + 1 :]
    rest, hashed, _ = rest.partition("#")
    base, asked, query = rest.partition("?")
    if asked:
        names = [part.partition("=")[0] for part in query.split("&") if part]
        base += "?" + "&".join(f"{n}=***" if n == "db" else "***" for n in names)
    if hashed:
        base += "#***"
    return f"{scheme}{sep}{base}"


def parse_milvus_uri(spec: str) -> tuple[str, str, str | None]:
    """``(server uri, collection name, database)`` of a ``milvus://HOST:PORT/NAME`` spec.

    Error messages show the spec through `redact_uri`: whatever was pasted into it, no
    password or token appears in them.

    Raises:
        ValueError: Not a milvus spec, credentials in it, no collection name, an IPv6
            address, a port outside 1..65535, or an unknown query parameter.
    """
    shown = redact_uri(spec)
    if "@" in spec:
        # checked first, on the raw text (a password may hold "/", "?" or "#", which move
        # the "@" out of what urlsplit calls the netloc): no message may quote a password
        msg = (
            "put no credentials in the store URI (it ends up in logs and shell history); "
            f"set the {TOKEN_ENV} environment variable instead"
        )
        raise ValueError(msg)
    try:
        parts = urlsplit(spec)
    except ValueError:  # an unclosed "[" of an IPv6 address; the message may quote the text
        msg = f"{shown!r} is not a valid URI (an unclosed '['?); use {_FORM}"
        raise ValueError(msg) from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        msg = f"{shown!r} is not a milvus:// URI; use {_FORM}"
        raise ValueError(msg)
    host = parts.hostname
    if host and ":" in host:
        msg = (
            f"{shown!r} names an IPv6 address, which pymilvus cannot connect to (it reads the "
            "address's colons as a port); use a host name that resolves to it"
        )
        raise ValueError(msg)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        msg = f"the port of {shown!r} must be a number in 1..65535; use {_FORM}"
        raise ValueError(msg)
    name = parts.path.strip("/")
    if not host or not name or "/" in name:
        msg = f"the store URI needs a host and one collection name: {_FORM}, got {shown!r}"
        raise ValueError(msg)
    if parts.fragment:
        msg = f"{shown!r} has a '#' part, which a store URI does not take; use {_FORM}"
        raise ValueError(msg)
    query = parse_qsl(parts.query, keep_blank_values=True)
    unknown = sorted({key for key, _ in query} - {"db"})
    if unknown:
        hint = (
            f"; the token goes in the {TOKEN_ENV} environment variable"
            if {"token", "password", "user"} & set(unknown)
            else ""
        )
        listed = [u if u in ("token", "password", "user") else "***" for u in unknown]
        msg = f"unknown parameters {listed} in the store URI; only ?db=DATABASE is understood{hint}"
        raise ValueError(msg)
    dbs = [value for key, value in query if key == "db"]
    db = dbs[-1] if dbs and dbs[-1] else None
    return f"{scheme}://{host}" + (f":{port}" if port else ""), name, db


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
