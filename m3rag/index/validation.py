"""Input checks of a collection: documents, embeddings, queries, keys, metadata.

Every check runs before anything is staged or searched, and raises an m3rag error (or the
matching built-in) that names the bad value and says what to do: a collection never stores what
a later search or commit would choke on (a NaN vector, an out-of-vocabulary token id, metadata
JSON cannot hold).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from m3rag._inputs import check_positive_int
from m3rag.errors import DuplicateIdError, EmbeddingMismatchError, InvalidDocumentError
from m3rag.index.filters import dumps_metadata
from m3rag.types import HEADS, Document, Head, M3Output

__all__ = [
    "assign_ids",
    "store_shape",
    "MAX_METADATA_DEPTH",
    "MAX_TOKEN_ID",
    "check_embeddings",
    "check_k",
    "check_keys",
    "check_lexical_docs",
    "check_text_query",
    "colbert_query",
    "dense_query",
    "finite32",
    "finite_as_stored",
    "id_list",
    "lexical_query",
    "metadata_json",
    "metadata_problem",
    "normalise",
    "token_problem",
    "utf8",
    "weight_problem",
]

MAX_METADATA_DEPTH = 32
"""Metadata nested deeper than this (dicts and lists within each other) is refused."""
MAX_TOKEN_ID = 2**31 - 1
"""Lexical token ids are stored as int32: the bound when no vocabulary size is recorded."""
F32_MAX = float(np.finfo(np.float32).max)
# float32 values from this magnitude up round to infinity as bfloat16 (round to nearest even:
# the bit pattern halfway between bfloat16's largest finite value and infinity)
_BF16_OVERFLOW = float(np.array(0x7F7F8000, dtype=np.uint32).view(np.float32))
_INT64 = (-(2**63), 2**63 - 1)


def normalise(
    texts_or_documents: str | Document | Iterable[str | Document],
    ids: Sequence[str] | None,
    metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None,
) -> tuple[list[str], list[str | None], list[Mapping[str, Any]]]:
    """Texts, ids (``None``: to draw) and metadata dicts of an `add` call's arguments.

    Raises:
        TypeError: Wrong types. ValueError: Lengths that differ.
        InvalidDocumentError: Empty text, or a text or id UTF-8 cannot encode.
    """
    if isinstance(texts_or_documents, (str, Document)):
        items: list[Any] = [texts_or_documents]
    elif isinstance(texts_or_documents, Iterable) and not isinstance(
        texts_or_documents, (bytes, Mapping)
    ):
        items = list(texts_or_documents)
    else:
        msg = (
            "texts_or_documents must be a string, a Document, or a list of them, "
            f"got {type(texts_or_documents).__name__}"
        )
        raise TypeError(msg)
    n = len(items)
    if ids is not None and (isinstance(ids, str) or len(ids) != n):
        got = 1 if isinstance(ids, str) else len(ids)
        msg = f"ids must be a list with one id per document ({n}), got {got}"
        raise ValueError(msg)
    metas: list[Mapping[str, Any] | None]
    if metadata is None:
        metas = [None] * n
    elif isinstance(metadata, Mapping):
        metas = [metadata] * n
    else:
        metas = list(metadata)
        if len(metas) != n:
            msg = f"metadata must have one entry per document ({n}), got {len(metas)}"
            raise ValueError(msg)
    texts: list[str] = []
    out_ids: list[str | None] = []
    out_meta: list[Mapping[str, Any]] = []
    for i, entry in enumerate(metas):
        if entry is not None and not isinstance(entry, Mapping):
            msg = (
                f"metadata[{i}] must be a dict (or None), got {type(entry).__name__}; pass "
                "one dict per document"
            )
            raise TypeError(msg)
    for i, item in enumerate(items):
        if isinstance(item, Document):
            text, doc_id, meta = item.text, item.id, dict(item.metadata)
            if ids is not None and ids[i] is not None:
                doc_id = ids[i]
            if metas[i] is not None:
                meta = {**meta, **dict(metas[i] or {})}
        elif isinstance(item, str):
            text, doc_id, meta = (
                item,
                (ids[i] if ids is not None else None),
                dict(metas[i] or {}),
            )
        else:
            kind = type(item).__name__
            msg = f"texts_or_documents[{i}] must be a string or a Document, got {kind}"
            raise TypeError(msg)
        if not isinstance(text, str) or not text.strip():
            msg = f"document {i} has empty text; empty documents cannot be indexed"
            raise InvalidDocumentError(msg)
        if not utf8(text):
            msg = (
                f"document {i} has text that is not valid Unicode (a lone surrogate such as "
                "'\\ud800'); decode it with errors='replace' before indexing"
            )
            raise InvalidDocumentError(msg)
        if doc_id is not None and (not isinstance(doc_id, str) or not doc_id):
            msg = f"ids[{i}] must be a non-empty string, got {doc_id!r}"
            raise TypeError(msg)
        if doc_id is not None and not utf8(doc_id):
            msg = f"ids[{i}] = {doc_id!r} is not valid Unicode (a lone surrogate)"
            raise InvalidDocumentError(msg)
        if not isinstance(meta, Mapping):
            msg = f"metadata[{i}] must be a dict, got {type(meta).__name__}"
            raise TypeError(msg)
        texts.append(text)
        out_ids.append(doc_id)
        out_meta.append(meta)
    return texts, out_ids, out_meta


def check_embeddings(
    embeddings: M3Output,
    ids: Sequence[str],
    *,
    heads: Sequence[str],
    dim: int | None,
    colbert_dim: int | None,
    vocab_size: int,
    dense_dtype: str = "float32",
    colbert_dtype: str = "float32",
) -> M3Output:
    """Every head of every document fits: count, heads, sizes, finite, ids in vocabulary.

    Checked before anything is staged: a NaN ColBERT vector or an out-of-vocabulary token
    id would otherwise be committed and break every later search, or every later commit.
    Vectors must be finite in the form they are stored in (``dense_dtype``,
    ``colbert_dtype``): 1e5 is a float32 but infinity as float16, and one infinite row in a
    float16 matrix makes the int8 scan's error bound NaN, so every dense search answers nothing.
    """
    n = len(ids)
    if not isinstance(embeddings, M3Output):
        msg = f"embeddings must be an M3Output, got {type(embeddings).__name__}"
        raise TypeError(msg)
    if len(embeddings) != n:
        msg = f"embeddings hold {len(embeddings)} texts for {n} documents"
        raise EmbeddingMismatchError(msg)
    missing = [h for h in heads if h not in embeddings.heads]
    if missing:
        msg = f"embeddings lack the heads {missing} this collection stores ({list(heads)})"
        raise EmbeddingMismatchError(msg)

    def bad(i: int, head: str, problem: str) -> EmbeddingMismatchError:
        return EmbeddingMismatchError(
            f"embeddings of document {i} (id {ids[i]!r}), {head} head: {problem}; "
            "nothing was staged"
        )

    if "dense" in heads and embeddings.dense_vecs is not None:
        if embeddings.dim != dim:
            msg = f"dense vectors have {embeddings.dim} dimensions, the collection {dim}"
            raise EmbeddingMismatchError(msg)
        rows = ~finite_as_stored(embeddings.dense_vecs, dense_dtype).all(axis=1)
        if rows.any():
            raise bad(int(np.flatnonzero(rows)[0]), "dense", _not_finite(dense_dtype))
    if "colbert" in heads and embeddings.colbert_vecs is not None:
        for i, m in enumerate(embeddings.colbert_vecs):
            shape = getattr(m, "shape", None)
            if not isinstance(m, np.ndarray) or m.ndim != 2 or m.shape[1] != colbert_dim:
                expected = f"[t, {colbert_dim}]"
                raise bad(i, "colbert", f"shape {shape}, expected {expected}")
            if not finite_as_stored(m, colbert_dtype).all():
                raise bad(i, "colbert", _not_finite(colbert_dtype))
    if "sparse" in heads and embeddings.lexical_weights is not None:
        check_lexical_docs(embeddings.lexical_weights, bad, vocab_size)
    return embeddings


def check_lexical_docs(weights: Sequence[Any], bad: Any, limit: int) -> None:
    """Token ids ints in ``[0, vocab_size)``, weights finite and non-negative (as float32)."""
    total = 0
    for i, d in enumerate(weights):
        if not isinstance(d, Mapping):
            raise bad(i, "sparse", f"a {type(d).__name__}, expected a dict of id -> weight")
        total += len(d)
    try:  # the common case, vectorised; any doubt goes to the exact check below
        tokens = np.fromiter((t for d in weights for t in d), dtype=np.int64, count=total)
        values = np.fromiter(
            (w for d in weights for w in d.values()), dtype=np.float64, count=total
        )
        ok = total == 0 or (
            int(tokens.min()) >= 0
            and int(tokens.max()) < limit
            and bool(finite32(values).all())
            and float(values.min()) >= 0
        )
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok:
        return
    for i, d in enumerate(weights):
        for token, weight in d.items():
            problem = token_problem(token, limit) or weight_problem(weight)
            if problem:
                raise bad(i, "sparse", problem)


def check_keys(keys: npt.ArrayLike, n: int) -> npt.NDArray[np.int64]:
    """``keys`` as int64, each a committed document's key (as `Hits` gives)."""
    arr = np.asarray(keys)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        msg = f"keys must be a 1-d array of ints (Hits.keys), got {arr.dtype} {arr.shape}"
        raise ValueError(msg)
    if int(arr.min()) < 0 or int(arr.max()) >= n:
        msg = (
            f"keys must be committed document keys in [0, {n}), got {int(arr.min())}.."
            f"{int(arr.max())}; take them from Hits.keys"
        )
        raise ValueError(msg)
    return arr.astype(np.int64, copy=False)


def dense_query(query: npt.ArrayLike, dim: int | None) -> npt.NDArray[np.float32]:
    """A dense query vector of the collection's size, finite as float32."""
    try:
        with np.errstate(all="ignore"):
            q = np.asarray(query, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        msg = f"the dense query must be a vector of {dim} floats: {exc}"
        raise ValueError(msg) from exc
    if q.shape[0] != dim:
        msg = f"query vector has {q.shape[0]} dimensions, the collection {dim}"
        raise ValueError(msg)
    if not np.isfinite(q).all():
        msg = "the dense query vector contains NaN or infinity (as float32); pass finite values"
        raise ValueError(msg)
    return q


def lexical_query(query: Mapping[int, float], vocab_size: int) -> dict[int, float]:
    """Query lexical weights: int token ids in the vocabulary, finite non-negative weights."""
    if not isinstance(query, Mapping):
        msg = f"the lexical query must be a dict of token id -> weight, got {query!r:.80}"
        raise TypeError(msg)
    out: dict[int, float] = {}
    for token, weight in query.items():
        problem = token_problem(token, vocab_size) or weight_problem(weight)
        if problem:
            msg = f"the lexical query is invalid: {problem}"
            raise ValueError(msg)
        out[int(token)] = float(weight)
    return out


def colbert_query(query: npt.ArrayLike, colbert_dim: int | None) -> npt.NDArray[np.float32]:
    """A ColBERT query ``[t, colbert_dim]``, finite as float32."""
    try:
        with np.errstate(all="ignore"):
            q = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        msg = f"the ColBERT query must be a [t, {colbert_dim}] array: {exc}"
        raise ValueError(msg) from exc
    if q.ndim != 2 or q.shape[1] != colbert_dim:
        msg = f"the ColBERT query has shape {q.shape}, expected [t, {colbert_dim}]"
        raise ValueError(msg)
    if not np.isfinite(q).all():
        msg = "the ColBERT query contains NaN or infinity (as float32); pass finite values"
        raise ValueError(msg)
    return q


def check_k(k: object) -> int:
    """``k`` if it is a positive int (not a bool), else a ``ValueError``."""
    return check_positive_int(k, "k")


def check_text_query(query: object) -> None:
    """A text query is a string UTF-8 can encode (``TypeError`` / ``ValueError``)."""
    if not isinstance(query, str):
        msg = f"query must be a string, got {type(query).__name__}"
        raise TypeError(msg)
    if not utf8(query):
        msg = "query is not valid Unicode (a lone surrogate); decode it with errors='replace'"
        raise ValueError(msg)


def id_list(ids: str | Sequence[str]) -> list[str]:
    """One id or a sequence of them as a list of strings (``TypeError`` otherwise)."""
    wanted = [ids] if isinstance(ids, str) else list(ids)
    for i, doc_id in enumerate(wanted):
        if not isinstance(doc_id, str):
            msg = f"ids[{i}] must be a string, got {type(doc_id).__name__}"
            raise TypeError(msg)
    return wanted


def utf8(text: str) -> bool:
    """Whether ``text`` can be stored (UTF-8 cannot encode lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def finite32(values: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Elementwise: finite once stored as float32 (1e39 is finite in float64, not float32)."""
    with np.errstate(all="ignore"):
        return np.isfinite(np.asarray(values, dtype=np.float32))


def finite_as_stored(values: npt.ArrayLike, dtype: str) -> npt.NDArray[np.bool_]:
    """Elementwise: finite once stored as ``dtype`` (a dense or ColBERT store dtype).

    Values reach a store as float32 first, then its dtype: float16 holds up to 65504,
    bfloat16 about 3.39e38 (int8 stores keep a float32 scale per row, float32 as is).
    """
    with np.errstate(all="ignore"):
        x = np.asarray(values, dtype=np.float32)
        if dtype == "float16":
            return np.isfinite(x.astype(np.float16))
        if dtype == "bfloat16":
            return np.abs(x) < _BF16_OVERFLOW  # False for NaN and infinity too
        return np.isfinite(x)


def _not_finite(dtype: str) -> str:
    if dtype in ("float16", "bfloat16"):
        largest = {"float16": "65504", "bfloat16": "3.39e38"}[dtype]
        return (
            f"NaN or infinity as {dtype}, the form the collection stores it in (finite up to "
            f"|x| = {largest})"
        )
    return "NaN or infinity (as float32)"


def token_problem(token: object, limit: int) -> str | None:
    """What is wrong with a lexical token id (an int in ``[0, limit)``), or ``None``."""
    if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
        return f"token id {token!r} is not an int"
    if not 0 <= int(token) < limit:
        return f"token id {int(token)} is outside the vocabulary [0, {limit})"
    return None


def weight_problem(weight: object) -> str | None:
    """What is wrong with a lexical weight (finite, non-negative as float32), or ``None``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        return f"weight {weight!r} is not a number"
    try:
        value = float(weight)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and abs(value) <= F32_MAX) or value < 0:
        return f"weight {weight!r} is not a finite non-negative float32"
    return None


def metadata_json(i: int, meta: Mapping[str, Any]) -> str:
    """The JSON of one document's metadata, or an ``InvalidDocumentError`` naming it."""
    problem = metadata_problem(meta)
    if problem is None:
        try:
            text = dumps_metadata(meta)
        except (TypeError, ValueError) as exc:
            problem = str(exc)
        else:
            if utf8(text):
                return text
            problem = "a string is not valid Unicode (a lone surrogate)"
    msg = f"metadata[{i}] cannot be stored as JSON: {problem}"
    raise InvalidDocumentError(msg)


def metadata_problem(meta: Mapping[str, Any]) -> str | None:
    r"""What metadata filters could not match as stored, or ``None``; found iteratively.

    Non-string keys, nesting deeper than `MAX_METADATA_DEPTH`, a key or string holding NUL,
    an int outside the 64-bit integers. ``json.dumps`` would recurse (a ``RecursionError``
    thousands of levels deep) and turn int keys into strings silently; SQLite's JSON functions
    cut strings at NUL (``"x\x00y"`` would match a filter on ``"x"``) and read an int
    beyond 64 bits as a float (a filter on it is refused), so such metadata would be stored
    but never filtered as written.
    """
    stack: list[tuple[Any, int]] = [(meta, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Iterable[Any] = value.values()
            bad = next((k for k in value if not isinstance(k, str)), None)
            if bad is not None:
                return f"key {bad!r} is not a string"
            if any("\x00" in k for k in value):
                return "a field name holds NUL ('\\x00'), which SQLite's JSON functions cut short"
        elif isinstance(value, (list, tuple)):
            children = value
        elif isinstance(value, str):
            if "\x00" in value:
                return (
                    f"the string {value[:40]!r} holds NUL ('\\x00'), which SQLite's JSON "
                    "functions cut short; remove it or store the value another way"
                )
            continue
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not _INT64[0] <= value <= _INT64[1]
        ):
            return (
                f"an int of {value.bit_length()} bits is outside the signed 64-bit integers "
                "metadata filters compare; store it as a string or a float"
            )
        else:
            continue
        if depth > MAX_METADATA_DEPTH:
            return f"it is nested more than {MAX_METADATA_DEPTH} levels deep"
        seen += 1
        if seen > 1_000_000:
            return "it holds more than a million nested containers"
        stack.extend((child, depth + 1) for child in children)
    return None


def store_shape(
    encoder: Any,
    heads: Sequence[Head] | None,
    dim: int | None,
    colbert_dim: int | None,
    vocab_size: int | None,
) -> tuple[tuple[Head, ...], int | None, int | None, int | None]:
    """The heads and sizes a new store holds: ``(heads, dim, colbert_dim, vocab_size)``.

    With an encoder, its sizes (and by default its heads); without one, the given heads
    (default all three) need the given sizes.

    Raises:
        ValueError: Heads the encoder lacks, unknown heads, or a size a head needs missing.
    """
    if encoder is not None:
        chosen = tuple(heads) if heads is not None else tuple(encoder.heads)
        missing = [h for h in chosen if h not in encoder.heads]
        if missing:
            msg = f"the encoder cannot produce {missing}; it has {list(encoder.heads)}"
            raise ValueError(msg)
        dim, colbert_dim = encoder.dim, encoder.colbert_dim
        if vocab_size is None:
            vocab_size = getattr(encoder, "vocab_size", None)
    else:
        chosen = tuple(heads) if heads is not None else HEADS
    bad = [h for h in chosen if h not in HEADS]
    if bad:
        msg = f"heads must be a subset of {list(HEADS)} (empty: BM25 only), got {list(chosen)}"
        raise ValueError(msg)
    sizes = (("dense", "dim", "dense", dim), ("colbert", "colbert_dim", "ColBERT", colbert_dim))
    for head, name, label, size in sizes:
        if head not in chosen:
            continue
        if size is None:
            msg = f"{name} is required to store {label} vectors without an encoder"
            raise ValueError(msg)
        # a bool is an int to Python, but the manifest would refuse it on every later open
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            msg = f"{name} (the {label} vector size) must be a positive int, got {size!r}"
            raise ValueError(msg)
    return chosen, dim, colbert_dim, vocab_size


def assign_ids(doc_ids: Sequence[str | None]) -> list[str]:
    """The ids of one write: a random UUID where none was given, each id once.

    Raises:
        DuplicateIdError: An id repeats within the call.
    """
    final = [i if i is not None else uuid.uuid4().hex for i in doc_ids]
    dupes = sorted(i for i, n in Counter(final).items() if n > 1)
    if dupes:
        msg = f"ids repeat within one call: {dupes[:10]}"
        raise DuplicateIdError(msg)
    return final
