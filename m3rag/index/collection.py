"""A local hybrid index: tantivy (lexical weights + BM25), dense, ColBERT and document stores.

Layout of a collection folder::

    manifest.json        the commit point: format version, generation, committed lengths,
                         encoder fingerprint (written new-then-rename, fsynced)
    LOCK                 the single-writer lock
    docs.sqlite          ids, texts, metadata
    tantivy/             lexical bit-plane terms and BM25 text
    dense.float32|16     dense vectors            colbert.*   ColBERT vectors + offsets
    lexical.*            full-precision lexical weights         tombstones.int64

**One commit point.** [`Collection.commit`][] appends to every store, commits SQLite and
tantivy, and only then replaces ``manifest.json`` with the next generation. Readers only ever
look at keys below the manifest's ``next_key`` and skip its tombstones, so a crash at any
instant leaves exactly the last committed state visible; the next writer cuts off whatever the
interrupted commit had written. Deletes and upserts add tombstones (tantivy deletions follow the
manifest, best effort), so a committed document is never lost to a crash.

Nothing is pickled: JSON, SQLite, raw little-endian arrays and tantivy's own files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from m3rag._optional import require
from m3rag._version import __version__
from m3rag.analysis import (
    ANALYSIS_VERSION,
    ANALYSIS_VERSIONS,
    AUTO,
    FAMILIES,
    detect_language,
    family_of,
)
from m3rag.errors import (
    CollectionClosedError,
    CollectionExistsError,
    CollectionNotFoundError,
    CommitError,
    DuplicateIdError,
    EncoderMismatchError,
    IndexFormatError,
    ReadOnlyError,
    UnknownIdError,
    UnknownLanguageError,
)
from m3rag.index import lexical_topk
from m3rag.index._files import Column, WriterLock, atomic_write_json, gather_rows
from m3rag.index.ann import AnnIndex
from m3rag.index.ann import check_dtype as check_ann_dtype
from m3rag.index.docstore import DocStore
from m3rag.index.filters import Filter, dumps_metadata
from m3rag.index.impacts import HeadImpacts
from m3rag.index.lexical import (
    BITS,
    STEP,
    LexicalIndex,
    TermQueries,
    is_panic,
    quantization_error,
)
from m3rag.index.manifest import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest
from m3rag.index.snapshot import Snapshot, live_mask
from m3rag.index.stores import (
    COLBERT_DTYPES,
    ColbertStore,
    DenseStore,
    LexicalStore,
    check_offsets,
)
from m3rag.index.validation import (
    F32_MAX,
    assign_ids,
    check_embeddings,
    check_k,
    check_keys,
    check_text_query,
    colbert_query,
    dense_query,
    finite32,
    id_list,
    lexical_query,
    metadata_json,
    metadata_problem,
    normalise,
    store_shape,
    token_problem,
    utf8,
    weight_problem,
)
from m3rag.index.validation import MAX_METADATA_DEPTH as MAX_METADATA_DEPTH
from m3rag.index.validation import MAX_TOKEN_ID as MAX_TOKEN_ID
from m3rag.results import Hits
from m3rag.types import HEADS, Document, Head, M3Output

if TYPE_CHECKING:
    from m3rag.encoder import Encoder

__all__ = ["FORMAT_VERSION", "Collection", "Hits"]

logger = logging.getLogger(__name__)

LEGACY = "legacy"  # the family of every document of a collection without an analysis record

_ID_CACHE = 262_144

# the input checks' former names here, for code that imports them from this module
_check_k = check_k
_check_text_query = check_text_query
_id_list = id_list
_utf8 = utf8
_finite32 = finite32
_token_problem = token_problem
_weight_problem = weight_problem
_metadata_json = metadata_json
_metadata_problem = metadata_problem
_F32_MAX = F32_MAX


@dataclass
class _Pending:
    keys: list[int]
    ids: list[str]
    texts: list[str]
    metadata: list[str]
    hashes: list[str]
    outputs: list[M3Output]
    tombstones: list[int]
    families: list[str]

    @classmethod
    def empty(cls) -> _Pending:
        return cls([], [], [], [], [], [], [], [])

    def __bool__(self) -> bool:
        return bool(self.keys or self.tombstones)


def content_hash(text: str, metadata_json: str) -> str:
    """SHA-256 of a document's text and metadata (for resumable ingestion)."""
    # surrogatepass: has_content() of a text add() would refuse answers False, not raises
    data = f"{text}\x00{metadata_json}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


class Collection:
    """An embedded hybrid index in a folder; [`create`][] a new one, [`open`][] an existing one.

    Example:
        ```python
        with Collection.create("my-index", encoder=M3Encoder("BAAI/bge-m3")) as col:
            col.add(["BGE M3 is an embedding model.", "北京是中国的首都。"], ids=["a", "b"])
        col = Collection.open("my-index", encoder=encoder, read_only=True)
        col.search_dense(encoder.encode_queries(["capital of China"]).dense_vecs[0], k=1)
        ```
    """

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        *,
        encoder: Encoder | None,
        read_only: bool,
        lock: WriterLock | None,
        creating: bool = False,
    ) -> None:
        self.path = folder
        self.encoder = encoder
        self.read_only = read_only
        self._lock = lock
        self._closed = True  # until every store is open: close() then has nothing to release
        self.heads: tuple[Head, ...] = tuple(manifest["heads"])
        self.dim: int | None = manifest.get("dim")
        self.colbert_dim: int | None = manifest.get("colbert_dim")
        vocab = manifest.get("vocab_size") or getattr(encoder, "vocab_size", None)
        self._vocab_size = int(vocab) if isinstance(vocab, int) and vocab > 0 else MAX_TOKEN_ID
        self._dense = (
            DenseStore(
                folder, int(self.dim), manifest["dense_dtype"], scan=manifest.get("dense_scan")
            )
            if "dense" in self.heads and self.dim
            else None
        )
        self._colbert = (
            ColbertStore(folder, int(self.colbert_dim), manifest["colbert_dtype"])
            if "colbert" in self.heads and self.colbert_dim
            else None
        )
        self._lexstore = LexicalStore(folder) if "sparse" in self.heads else None
        self._tombstones = Column(folder / "tombstones.int64", np.int64)
        if not creating:
            self._check_stores(manifest)
        ann = manifest.get("ann")
        self._ann = (
            AnnIndex(folder, self._dense.dim, **ann) if ann and self._dense is not None else None
        )
        self._docs = _open_docs(
            folder / "docs.sqlite",
            read_only=read_only,
            next_key=int(manifest["next_key"]),
            create=creating,
        )
        try:
            analysis = manifest.get("analysis")
            self._tantivy = LexicalIndex(
                folder / "tantivy",
                writable=not read_only,
                legacy=analysis is None,
                version=ANALYSIS_VERSION if analysis is None else int(analysis["version"]),
            )
        except BaseException:
            self._docs.close()
            raise
        self._impacts = lexical_topk.ImpactCache()
        # committed keys are never reused, so their ids can be cached for the searches
        self._id_cache: dict[int, str] = {}
        self._pending = _Pending.empty()
        self._pending_max_norm = float(manifest.get("dense_max_norm", 0.0))
        self._checked_keys = 0  # the keys whose store offsets a loaded snapshot has checked
        self._closed = False
        try:
            if not read_only:
                self._recover(manifest)
            self._snap = self._load_snapshot(manifest)
        except BaseException:
            self._tantivy.close()
            self._docs.close()
            self._closed = True
            raise

    def _committed_columns(self, manifest: Mapping[str, Any]) -> list[tuple[Column, int]]:
        """Every column file and the rows ``manifest`` says it holds."""
        lengths = {k: int(v) for k, v in manifest.get("lengths", {}).items()}
        n = int(manifest["next_key"])
        columns: list[tuple[Column, int]] = [(self._tombstones, lengths.get("tombstones", 0))]
        if self._dense is not None:
            columns += [(column, n) for column in self._dense.columns()]
        if self._colbert is not None:
            rows = lengths.get("colbert", 0)
            columns += [(self._colbert.vectors, rows), (self._colbert.offsets, n)]
            if self._colbert.scales is not None:
                columns.append((self._colbert.scales, rows))
        if self._lexstore is not None:
            entries = lengths.get("lexical", 0)
            columns += [
                (self._lexstore.ids, entries),
                (self._lexstore.weights, entries),
                (self._lexstore.offsets, n),
            ]
        return columns

    def _check_stores(self, manifest: Mapping[str, Any]) -> None:
        """Every store the manifest counts on is there and holds its committed rows.

        A missing or short store is damage, reported (never recreated empty): a recreated
        store would silently answer nothing for documents ``count()`` still counts.
        """
        fix = "restore the collection from a backup or rebuild it"
        for name in ("docs.sqlite", "tantivy/meta.json"):
            if not (self.path / name).is_file():
                msg = f"{self.path / name} is missing: the collection is damaged; {fix}"
                raise IndexFormatError(msg)
        for column, rows in self._committed_columns(manifest):
            if rows and column.rows_on_disk() < rows:
                state = "is missing" if not column.path.exists() else "is too short"
                msg = (
                    f"{column.path} {state}: the manifest counts {rows} committed rows, the file "
                    f"holds {column.rows_on_disk()}; the collection is damaged; {fix}"
                )
                raise IndexFormatError(msg)

    # -- creation and opening -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        heads: Sequence[Head] | None = None,
        dim: int | None = None,
        colbert_dim: int | None = None,
        dense_dtype: str = "float32",
        dense_scan: str | None = "int8",
        colbert_dtype: str = "float16",
        ann: bool | Mapping[str, Any] = False,
        vocab_size: int | None = None,
        lang: str = AUTO,
    ) -> Collection:
        """Create a collection in a new (or empty) folder and open it for writing.

        Args:
            path: The folder.
            encoder: The encoder whose outputs will be stored; its fingerprint is recorded so
                the collection cannot later be opened with a different model.
            heads: Heads to store; default all the encoder has (all three without an encoder);
                ``()`` keeps text only, for BM25.
            dim: Dense size, required without an encoder when ``dense`` is stored.
            colbert_dim: ColBERT size, required without an encoder when ``colbert`` is stored.
            dense_dtype: ``"float32"`` or ``"float16"``.
            dense_scan: ``"int8"`` (default) keeps an int8 copy of the dense vectors (a quarter
                of float32, half of float16) that exact search scans first, rescoring only the
                rows within a proven error bound from the stored vectors; ``None`` scans the
                stored vectors themselves.
            colbert_dtype: ``"float16"`` (default), ``"float32"`` (exact), ``"bfloat16"``
                (the size of float16, 3 fewer mantissa bits; MaxSim runs on the CPU's bfloat16
                dot products without widening, the fastest form), or ``"int8"`` (per-row
                scaled, half the size of float16).
            ann: Keep an HNSW graph (usearch) for approximate dense search on very large
                collections: ``True``, or a dict of ``connectivity``, ``expansion_add``,
                ``expansion_search`` (ints) and ``dtype`` (how the graph stores vectors:
                ``"f16"``, the default, ``"f32"`` or ``"i8"``). Needs ``pip install "m3rag[ann]"``.
            vocab_size: Lexical token ids are below this (default: the encoder's vocabulary;
                without an encoder, any id up to ``2**31 - 1``). Recorded in the manifest;
                ``add()`` and lexical queries refuse ids outside it.
            lang: The BM25 analysis language of documents without a ``lang`` metadata field:
                an ISO 639-1 code (``"en"``, ``"zh"``, ``"th"`` ...) or ``"auto"`` (default)
                to detect each document's language (`m3rag.analysis.detect_language`).
                Recorded in the manifest.

        Raises:
            CollectionExistsError: The folder already holds a collection (or other files),
                or ``path`` is a file.
            CollectionNotFoundError: No folder can be made at ``path`` (a name too long, a
                NUL, a file on the way), as `open` reports such a path.
            ValueError: Bad heads, sizes or dtypes.
            UnknownLanguageError: ``lang`` is not a language code or ``"auto"``.
        """
        folder = Path(path)
        if lang != AUTO:
            family_of(lang)  # raises UnknownLanguageError naming the value
        with _path_errors(folder):
            if (folder / MANIFEST).exists():
                msg = f"{folder} already holds a collection; use Collection.open({str(folder)!r})"
                raise CollectionExistsError(msg)
            if folder.is_dir() and any(folder.iterdir()):
                msg = f"{folder} is not empty; create a collection in a new or empty folder"
                raise CollectionExistsError(msg)
            if not folder.is_dir() and (folder.is_symlink() or folder.exists()):
                msg = f"{folder} exists and is not a folder; create a collection in a new folder"
                raise CollectionExistsError(msg)
        fingerprint = encoder.fingerprint() if encoder is not None else None
        chosen, dim, colbert_dim, vocab_size = store_shape(
            encoder, heads, dim, colbert_dim, vocab_size
        )
        if vocab_size is not None and (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, int)
            or not 0 < vocab_size <= MAX_TOKEN_ID
        ):
            msg = f"vocab_size must be an int in [1, {MAX_TOKEN_ID}], got {vocab_size!r}"
            raise ValueError(msg)
        if dense_dtype not in ("float32", "float16"):
            msg = f"dense_dtype must be 'float32' or 'float16', got {dense_dtype!r}"
            raise ValueError(msg)
        if dense_scan not in ("int8", None):
            msg = f"dense_scan must be 'int8' or None, got {dense_scan!r}"
            raise ValueError(msg)
        if colbert_dtype not in COLBERT_DTYPES:
            msg = f"colbert_dtype must be one of {list(COLBERT_DTYPES)}, got {colbert_dtype!r}"
            raise ValueError(msg)
        ann_config: dict[str, Any] | None = None
        if ann:
            if "dense" not in chosen:
                msg = "ann=True needs the dense head"
                raise ValueError(msg)
            ann_config = {
                "connectivity": 16,
                "expansion_add": 128,
                "expansion_search": 64,
                "dtype": "f16",
            }
            if isinstance(ann, Mapping):
                unknown = sorted(set(ann) - set(ann_config))
                if unknown:
                    msg = f"unknown ann options {unknown}; use {sorted(ann_config)}"
                    raise ValueError(msg)
                for key, value in ann.items():
                    if key == "dtype":
                        ann_config[key] = check_ann_dtype(value)
                    elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        msg = f"ann option {key} must be a positive int, got {value!r}"
                        raise ValueError(msg)
                    else:
                        ann_config[key] = value
            require("usearch.index", extra="ann", purpose="Collection(ann=True)")
        with _path_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(folder)
        lock.acquire()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "m3rag_version": __version__,
            "generation": 0,
            "next_key": 0,
            "lengths": {},
            "heads": list(chosen),
            "dim": dim if "dense" in chosen else None,
            "colbert_dim": colbert_dim if "colbert" in chosen else None,
            "dense_dtype": dense_dtype,
            "dense_scan": dense_scan if "dense" in chosen else None,
            "colbert_dtype": colbert_dtype,
            "encoder": fingerprint,
            "lexical": {"step": STEP, "bits": BITS, "max_error": 0.0, "max_bit": 0},
            "ann": ann_config,
            "vocab_size": vocab_size if "sparse" in chosen else None,
            "analysis": {"version": ANALYSIS_VERSION, "lang": lang, "families": []},
        }
        try:
            atomic_write_json(folder / MANIFEST, manifest)
            return cls(folder, manifest, encoder=encoder, read_only=False, lock=lock, creating=True)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        read_only: bool = False,
    ) -> Collection:
        """Open an existing collection.

        Args:
            path: The folder.
            encoder: The encoder to embed new documents and queries with; it must be the one
                the collection was built with (model, heads, sizes, tokenizer).
            read_only: Open as a reader: no lock, a consistent snapshot, [`refresh`][] to
                see later commits.

        Raises:
            CollectionNotFoundError: No collection at ``path``.
            IndexFormatError: A newer format, a manifest missing a field, or a store it counts
                on missing or damaged (the message names the file). Nothing is repaired or
                created; a read-only open writes nothing.
            EncoderMismatchError: ``encoder`` differs from the collection's.
            CollectionLockedError: Another writer holds the collection (when not read-only).
        """
        folder = Path(path)
        manifest = read_manifest(folder)
        _check_analysis(manifest, folder)
        if encoder is not None:
            _check_encoder(manifest, encoder)
        lock = None
        if not read_only:
            lock = WriterLock(folder)
            lock.acquire()
        try:
            return cls(folder, manifest, encoder=encoder, read_only=read_only, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self.read_only and not self._closed:
            self.commit()
        self.close()

    def close(self) -> None:
        """Release the writer lock and files; uncommitted changes are dropped."""
        if self._closed:
            return
        if self._pending:
            logger.warning("closing %s with uncommitted changes; they are dropped", self.path)
        self._pending = _Pending.empty()
        if self._ann is not None and not self.read_only and self._ann.unsaved:
            try:  # derived data: completed from the matrix at the next open if this fails
                self._ann.save()
            except Exception:  # pragma: no cover - the manifest is authoritative
                logger.warning("could not save the ANN graph", exc_info=True)
        self._tantivy.close()
        self._docs.close()
        if self._lock is not None:
            self._lock.release()
        self._closed = True

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writer"
        if self._closed:
            return f"Collection({str(self.path)!r}, {mode}, closed)"
        return (
            f"Collection({str(self.path)!r}, {mode}, documents={self.count()}, "
            f"heads={list(self.heads)}, generation={self.generation})"
        )

    @property
    def generation(self) -> int:
        """The committed generation this handle sees."""
        self._check_open()
        return int(self._manifest["generation"])

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the committed manifest."""
        self._check_open()
        copy: dict[str, Any] = json.loads(json.dumps(self._manifest))
        return copy

    def _check_open(self, *, write: bool = False) -> None:
        if self._closed:
            msg = f"the collection {self.path} is closed; open it again with Collection.open()"
            raise CollectionClosedError(msg)
        if write and self.read_only:
            msg = (
                f"the collection {self.path} is open read-only; open it without read_only to write"
            )
            raise ReadOnlyError(msg)

    # -- snapshot -----------------------------------------------------------------------------

    @property
    def _manifest(self) -> Mapping[str, Any]:
        """The committed manifest of the snapshot this handle reads."""
        return self._snap.manifest

    @property
    def _alive(self) -> npt.NDArray[np.bool_]:
        return self._snap.alive

    @property
    def _searcher(self) -> Any:
        return self._snap.searcher

    @property
    def _terms(self) -> TermQueries:
        return self._snap.terms

    def _lengths(self) -> dict[str, int]:
        return self._snap.lengths()

    def _load_snapshot(self, manifest: Mapping[str, Any]) -> Snapshot:
        """The snapshot of the committed ``manifest``; the handle's own is left as it is."""
        n = int(manifest["next_key"])
        lengths = {k: int(v) for k, v in manifest.get("lengths", {}).items()}
        tomb = self._tombstones.read(lengths.get("tombstones", 0))
        alive = live_mask(tomb, n, self._tombstones.path)
        # the offsets are checked here, once, so that searches can index the data unchecked
        checked = self._checked_keys if self._checked_keys <= n else 0
        if self._colbert is not None:
            check_offsets(self._colbert.offsets, n, lengths.get("colbert", 0), checked)
        if self._lexstore is not None:
            check_offsets(self._lexstore.offsets, n, lengths.get("lexical", 0), checked)
        dense_matrix = self._dense.matrix(n) if self._dense is not None else None
        dense_scan = self._dense.scan_view(n) if self._dense is not None else None
        searcher = self._tantivy.searcher()
        ann_upto = n
        if self._ann is not None and dense_matrix is not None and len(self._ann) < n:
            if self.read_only:
                # a reader searches the keys the graph does not cover exactly
                ann_upto = len(self._ann)
            else:
                missing = np.arange(len(self._ann), n, dtype=np.int64)
                self._ann.add(missing, dense_matrix[len(self._ann) :])
                self._ann.save()
        self._checked_keys = n
        return Snapshot(
            manifest=manifest,
            alive=alive,
            live=int(np.count_nonzero(alive)),
            searcher=searcher,
            num_docs=int(searcher.num_docs),
            terms=self._tantivy.terms(searcher),
            dense_matrix=dense_matrix,
            dense_scan=dense_scan,
            ann_upto=ann_upto,
        )

    def refresh(self) -> bool:
        """Re-read the manifest to see commits made since opening; returns whether it changed."""
        self._check_open()
        manifest = read_manifest(self.path)
        if manifest["generation"] == self._snap.generation:
            return False
        # the handle keeps answering from its snapshot if the new one cannot be loaded
        self._check_stores(manifest)
        self._snap = self._load_snapshot(manifest)
        return True

    def _recover(self, manifest: Mapping[str, Any]) -> None:
        """Cut off whatever an interrupted commit wrote past the committed ``manifest``."""
        n = int(manifest["next_key"])
        for column, rows in self._committed_columns(manifest):
            column.truncate(rows)
        self._docs.drop_from(n)
        self._tantivy.purge_after(int(manifest["generation"]))

    # -- writing ------------------------------------------------------------------------------

    def _check_embeddings(self, embeddings: M3Output, ids: Sequence[str]) -> M3Output:
        return check_embeddings(
            embeddings,
            ids,
            heads=self.heads,
            dim=self.dim,
            colbert_dim=self.colbert_dim,
            vocab_size=self._vocab_size,
            dense_dtype=self._dense.dtype.name if self._dense is not None else "float32",
            colbert_dtype=self._colbert.dtype if self._colbert is not None else "float32",
        )

    def _embed(
        self, texts: list[str], ids: list[str], embeddings: M3Output | None
    ) -> M3Output | None:
        if not self.heads:
            return None  # a BM25-only collection stores text alone
        if embeddings is not None:
            return self._check_embeddings(embeddings, ids)
        if self.encoder is None:
            msg = (
                "this collection has no encoder to embed texts with; pass encoder= to "
                "Collection.create/open, or pass precomputed embeddings="
            )
            raise ValueError(msg)
        flags = {h: (h in self.heads) for h in HEADS}
        output = self.encoder.encode_corpus(
            texts, dense=flags["dense"], sparse=flags["sparse"], colbert=flags["colbert"]
        )
        return self._check_embeddings(output, ids)

    @property
    def analysis(self) -> dict[str, Any] | None:
        """The BM25 analysis record: ``version``, default ``lang``, the ``families`` held.

        ``None`` for a collection made before m3rag recorded its analysis (it keeps its legacy
        analyzer: Han/kana characters, words, English stop words and stemmer).
        """
        analysis = self._manifest.get("analysis")
        return None if analysis is None else dict(analysis)

    def _families(self, texts: Sequence[str], metas: Sequence[Mapping[str, Any]]) -> list[str]:
        """The analysis family of each document: ``lang`` metadata, collection lang, detected."""
        analysis = self._manifest.get("analysis")
        if analysis is None:
            return [LEGACY] * len(texts)
        default = analysis["lang"]
        families = []
        for text, meta in zip(texts, metas, strict=True):
            family = _metadata_family(meta.get("lang"))
            if family is None:
                family = family_of(detect_language(text) if default == AUTO else default)
            families.append(family)
        return families

    def _query_families(self, lang: str | None) -> list[str]:
        if lang is not None:
            return [family_of(lang)]
        analysis = self._manifest.get("analysis")
        return [] if analysis is None else list(analysis["families"])

    def _live_keys(self, ids: Sequence[str]) -> dict[str, int]:
        """Committed, not tombstoned (committed or pending) keys by id, plus pending adds."""
        pending_dead = set(self._pending.tombstones)
        storable = [i for i in ids if utf8(i)]  # no stored id holds a lone surrogate
        committed = self._docs.keys_for_ids(storable, int(self._manifest["next_key"]))
        found = {
            doc_id: key for doc_id, key in committed if self._alive[key] and key not in pending_dead
        }
        wanted = set(ids)
        found.update(
            (doc_id, key)
            for key, doc_id in zip(self._pending.keys, self._pending.ids, strict=True)
            if doc_id in wanted and key not in pending_dead
        )
        return found

    def add(
        self,
        texts_or_documents: str | Document | Iterable[str | Document],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        embeddings: M3Output | None = None,
    ) -> list[str]:
        """Stage new documents; they become searchable at [`commit`][m3rag.Collection.commit].

        Args:
            texts_or_documents: Texts or `Document` objects.
            ids: One id per document (default: the documents' own ids, else random UUIDs).
            metadata: One dict per document, or one dict for all.
            embeddings: Precomputed [`M3Output`][] (one text per document, with every head
                the collection stores), e.g. encoded on a GPU machine; else the collection's
                encoder embeds the texts.

        Returns:
            The ids, in order.

        Raises:
            DuplicateIdError: An id repeats in the call or already exists (use [`upsert`][]).
            InvalidDocumentError: Empty text, a text, id or metadata string UTF-8 cannot encode
                (a lone surrogate), metadata JSON cannot hold (NaN, objects, non-string keys)
                or nested deeper than `MAX_METADATA_DEPTH`, or metadata filters could not
                match as written (a string or key holding NUL, an int past 64 bits).
            EmbeddingMismatchError: ``embeddings`` do not fit: count, heads, sizes, NaN or
                infinity in the stored dtype (float16 holds ``|x| <= 65504``), token ids
                outside ``[0, vocab_size)``, negative weights (the message names the
                document, its id and the head).
            TypeError: Wrong input types (a metadata entry that is not a dict, a non-str id).
            CollectionClosedError: The collection is closed.
            ReadOnlyError: The collection is open read-only.

        A call that raises stages nothing: the staged changes are as before.
        """
        return self._write(texts_or_documents, ids, metadata, embeddings, replace=False)

    def upsert(
        self,
        texts_or_documents: str | Document | Iterable[str | Document],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        embeddings: M3Output | None = None,
    ) -> list[str]:
        """Like [`add`][], but documents whose id exists replace the old version.

        Raises:
            DuplicateIdError: An id repeats within the call (ids that exist are replaced).
            InvalidDocumentError: As in [`add`][].
            EmbeddingMismatchError: As in [`add`][].
            TypeError: As in [`add`][].
            CollectionClosedError: The collection is closed.
            ReadOnlyError: The collection is open read-only.
        """
        return self._write(texts_or_documents, ids, metadata, embeddings, replace=True)

    def _write(
        self,
        texts_or_documents: Any,
        ids: Sequence[str] | None,
        metadata: Any,
        embeddings: M3Output | None,
        *,
        replace: bool,
    ) -> list[str]:
        self._check_open(write=True)
        texts, doc_ids, metas = normalise(texts_or_documents, ids, metadata)
        final_ids = assign_ids(doc_ids)
        meta_json = [metadata_json(i, meta) for i, meta in enumerate(metas)]
        hashes = [content_hash(t, m) for t, m in zip(texts, meta_json, strict=True)]
        existing = self._live_keys(final_ids)
        if existing and not replace:
            msg = (
                f"{len(existing)} id(s) already exist: {sorted(existing)[:10]}; use upsert() to "
                "replace them"
            )
            raise DuplicateIdError(msg)
        if not texts:
            return []
        families = self._families(texts, metas)
        output = self._embed(texts, final_ids, embeddings)
        # everything is checked and computed: staging below cannot fail half-way
        start = int(self._manifest["next_key"]) + len(self._pending.keys)
        p = self._pending
        p.tombstones.extend(existing.values())
        p.keys.extend(range(start, start + len(texts)))
        p.ids.extend(final_ids)
        p.texts.extend(texts)
        p.metadata.extend(meta_json)
        p.hashes.extend(hashes)
        p.families.extend(families)
        if output is not None:
            p.outputs.append(output)
        return final_ids

    def delete(self, ids: str | Sequence[str]) -> None:
        """Stage deletion of documents by id (effective at [`commit`][m3rag.Collection.commit]).

        Raises:
            UnknownIdError: Some ids are not in the collection (nothing is deleted then).
        """
        self._check_open(write=True)
        wanted = id_list(ids)
        found = self._live_keys(wanted)
        missing = [i for i in dict.fromkeys(wanted) if i not in found]
        if missing:
            msg = f"{len(missing)} id(s) not in the collection: {missing[:10]}"
            raise UnknownIdError(msg)
        self._pending.tombstones.extend(found[i] for i in dict.fromkeys(wanted))

    def rollback(self) -> None:
        """Drop every change staged since the last commit."""
        self._check_open()
        self._pending = _Pending.empty()

    def commit(self) -> int:
        """Make staged changes durable and visible, atomically; returns the new generation.

        Raises:
            ReadOnlyError: The collection is open read-only.
            CollectionClosedError: The collection is closed.
            CommitError: Writing failed (disk full, I/O error). Nothing was committed, the
                staged changes are kept: fix the cause and call ``commit()`` again, or
                [`rollback`][m3rag.Collection.rollback].
        """
        self._check_open(write=True)
        p = self._pending
        if not p:
            return self.generation
        gen = self.generation + 1
        old = self._lengths()
        n0 = int(self._manifest["next_key"])
        lengths = dict(old)
        lexical_meta = dict(self._manifest["lexical"])
        try:
            output = M3Output.concat(p.outputs) if p.outputs else None
            self._pending_max_norm = float(self._manifest.get("dense_max_norm", 0.0))
            if output is not None:
                lengths.update(self._append_vectors(output, n0, old, lexical_meta))
            self._docs.insert(
                [
                    (k, i, t, m, gen, h)
                    for k, i, t, m, h in zip(
                        p.keys, p.ids, p.texts, p.metadata, p.hashes, strict=True
                    )
                ]
            )
            self._tantivy.add(
                p.keys,
                gen,
                output.lexical_weights if output is not None else None,
                p.texts,
                p.families,
            )
            self._tantivy.commit()
            tomb = np.array(sorted(set(p.tombstones)), dtype=np.int64)
            if len(tomb):
                self._tombstones.append(tomb)
            lengths["tombstones"] = old.get("tombstones", 0) + len(tomb)
            manifest = dict(self._manifest)
            if "analysis" in manifest:
                analysis = dict(manifest["analysis"])
                analysis["families"] = sorted({*analysis["families"], *p.families})
                manifest["analysis"] = analysis
            manifest.update(
                generation=gen,
                next_key=n0 + len(p.keys),
                lengths=lengths,
                lexical=lexical_meta,
                dense_max_norm=self._pending_max_norm,
                m3rag_version=__version__,
            )
            atomic_write_json(self.path / MANIFEST, manifest)  # the commit point
        except BaseException as exc:
            if not (isinstance(exc, Exception) or is_panic(exc)):
                raise  # KeyboardInterrupt and friends: the next writer recovers
            logger.warning("commit of generation %d failed; rolling the stores back", gen)
            kept = len(p.keys) + len(set(p.tombstones))
            undo = ""
            try:
                with contextlib.suppress(Exception):
                    self._tantivy.rollback()
                self._recover(self._manifest)
            except Exception as again:  # reported in the message
                undo = (
                    f" Cutting the stores back also failed ({again}); the next Collection.open "
                    "cuts them back."
                )
            nospace = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            hint = "free disk space" if nospace else "fix the cause"
            msg = (
                f"commit of generation {gen} failed: {exc}. The committed collection is "
                f"unchanged and the {kept} staged change(s) are kept; {hint} and call commit() "
                f"again, or rollback() to drop them.{undo}"
            )
            raise CommitError(errno.ENOSPC if nospace else errno.EIO, msg) from exc
        self._snap = self._snap.with_manifest(manifest)  # committed, whatever happens next
        self._pending = _Pending.empty()
        if self._ann is not None and output is not None and output.dense_vecs is not None:
            try:  # derived data: completed from the matrix at the next open if this fails
                self._ann.add(np.arange(n0, n0 + len(output), dtype=np.int64), output.dense_vecs)
                if self._ann.save_due():
                    self._ann.save()
            except Exception:  # pragma: no cover - the manifest is authoritative
                logger.warning("could not update the ANN graph", exc_info=True)
        if len(tomb):
            try:  # best effort: tombstones already hide these documents
                self._tantivy.delete_keys(tomb.tolist())
                self._tantivy.commit()
            except BaseException as exc:  # pragma: no cover - the manifest is authoritative
                if not (isinstance(exc, Exception) or is_panic(exc)):
                    raise
                logger.warning("could not remove deleted documents from tantivy", exc_info=True)
        self._snap = self._load_snapshot(manifest)
        return gen

    def _append_vectors(
        self, output: M3Output, n0: int, old: dict[str, int], lexical_meta: dict[str, Any]
    ) -> dict[str, int]:
        new: dict[str, int] = {}
        if self._dense is not None and output.dense_vecs is not None:
            self._dense.append(output.dense_vecs)
            norms = np.linalg.norm(output.dense_vecs.astype(np.float64), axis=1)
            self._pending_max_norm = max(
                float(self._manifest.get("dense_max_norm", 0.0)), float(norms.max(initial=0.0))
            )
        if self._colbert is not None and output.colbert_vecs is not None:
            rows = self._colbert.append(output.colbert_vecs, old.get("colbert", 0))
            new["colbert"] = old.get("colbert", 0) + rows
        if self._lexstore is not None and output.lexical_weights is not None:
            entries = self._lexstore.append(output.lexical_weights, old.get("lexical", 0))
            new["lexical"] = old.get("lexical", 0) + entries
            weights = np.fromiter(
                (v for d in output.lexical_weights for v in d.values()), dtype=np.float64
            )
            if len(weights):
                lexical_meta["max_error"] = max(
                    float(lexical_meta["max_error"]), quantization_error(weights)
                )
                top = int(min(np.rint(weights.max() / STEP), 2**BITS - 1))
                lexical_meta["max_bit"] = max(int(lexical_meta["max_bit"]), top.bit_length() - 1)
        return new

    # -- reading ------------------------------------------------------------------------------

    def count(self) -> int:
        """Live documents, counting staged (uncommitted) adds and deletes of this writer."""
        self._check_open()
        pending_dead = set(self._pending.tombstones)
        committed_dead = sum(1 for k in pending_dead if k < len(self._alive) and self._alive[k])
        new_dead = sum(1 for k in pending_dead if k >= len(self._alive))
        return int(self._alive.sum()) - committed_dead + len(self._pending.keys) - new_dead

    def get(self, ids: str | Sequence[str]) -> list[Document]:
        """Documents by id, in the order asked (staged documents included).

        Raises:
            UnknownIdError: Some ids are not in the collection.
        """
        self._check_open()
        wanted = id_list(ids)
        found = self._live_keys(wanted)
        missing = [i for i in dict.fromkeys(wanted) if i not in found]
        if missing:
            msg = f"{len(missing)} id(s) not in the collection: {missing[:10]}"
            raise UnknownIdError(msg)
        pending = {k: i for i, k in enumerate(self._pending.keys)}
        rows = self._docs.rows([k for k in found.values() if k not in pending])
        out = []
        for doc_id in wanted:
            key = found[doc_id]
            if key in pending:
                j = pending[key]
                out.append(
                    Document(self._pending.texts[j], doc_id, json.loads(self._pending.metadata[j]))
                )
            else:
                _, text, meta = rows[key]
                out.append(Document(text, doc_id, meta))
        return out

    def ids(self) -> list[str]:
        """Ids of every committed live document, in insertion order."""
        self._check_open()
        return [i for k, i in self._docs.all_ids(len(self._alive)) if self._alive[k]]

    def has_content(
        self, texts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> list[bool]:
        """Whether a live committed document has exactly this text and metadata.

        Used for resumable ingestion: documents already indexed are skipped.
        """
        self._check_open()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            msg = "texts must be a list of strings"
            raise TypeError(msg)
        metas = metadata if metadata is not None else [{}] * len(texts)
        if len(metas) != len(texts) or not all(isinstance(m, Mapping) for m in metas):
            msg = f"metadata must be one dict per text ({len(texts)})"
            raise TypeError(msg)
        hashes = [content_hash(t, dumps_metadata(m)) for t, m in zip(texts, metas, strict=True)]
        live = {
            h for h, k in self._docs.keys_for_hashes(hashes, len(self._alive)) if self._alive[k]
        }
        return [h in live for h in hashes]

    def ids_matching(self, filter: Mapping[str, Any] | Filter) -> list[str]:
        """Ids of the live committed documents whose metadata matches ``filter``."""
        self._check_open()
        keys = np.flatnonzero(self.allowed(filter))
        return self._docs.ids(keys.tolist())

    def metadata_values(self, field: str) -> set[Any]:
        """Distinct values of a metadata field over the live committed documents.

        JSON ``true`` comes back as ``True`` (a set still holds one of ``True`` and ``1``, which
        Python counts equal), a list or dict as its JSON text.
        """
        self._check_open()
        if not isinstance(field, str) or not field:
            msg = f"field must be a non-empty string, got {field!r}"
            raise TypeError(msg)
        if not utf8(field) or "\x00" in field:
            return set()  # no stored field name holds a lone surrogate or NUL
        return {v for k, v in self._docs.field_values(field, len(self._alive)) if self._alive[k]}

    def has_metadata(self, field: str) -> bool:
        """Whether any live committed document has the metadata ``field`` (e.g. ``parent_id``).

        Cheaper than ``bool(metadata_values(field))``: it stops at the first such document, and
        the answer is kept until the next commit or refresh (a retriever asks on every
        construction, e.g. once per request in `m3rag serve`).
        """
        self._check_open()
        if not isinstance(field, str) or not field:
            msg = f"field must be a non-empty string, got {field!r}"
            raise TypeError(msg)
        if not utf8(field) or "\x00" in field:
            return False
        if field not in self._snap.has_field:
            self._snap.has_field[field] = self._docs.has_field(field, self._alive)
        return self._snap.has_field[field]

    def documents(self, keys: npt.NDArray[np.int64]) -> list[Document]:
        """Documents by internal key (as in `Hits`).

        Raises:
            ValueError: A key that is not a committed document's (see `Hits`).
        """
        self._check_open()
        keys = self._check_keys(keys)
        rows = self._docs.rows([int(k) for k in keys])
        return [Document(rows[int(k)][1], rows[int(k)][0], rows[int(k)][2]) for k in keys]

    # -- search -------------------------------------------------------------------------------

    def allowed(self, filter: Mapping[str, Any] | Filter | None = None) -> npt.NDArray[np.bool_]:
        """Boolean mask over keys: live documents matching ``filter``."""
        self._check_open()
        return self._mask(self._snap, Filter.parse(filter))

    def _mask(self, snap: Snapshot, flt: Filter | None) -> npt.NDArray[np.bool_]:
        """The keys of ``snap`` that are live and match ``flt``."""
        if flt is None:
            return snap.alive
        mask = np.zeros(len(snap.alive), dtype=np.bool_)
        mask[self._docs.matching(flt, len(snap.alive))] = True
        return mask & snap.alive

    def _hits(self, keys: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]) -> Hits:
        # every caller passes arrays of its own (no copy when they are float32 already)
        return Hits(self._ids_of(keys.tolist()), scores.astype(np.float32, copy=False), keys)

    def _ids_of(self, keys: list[int]) -> list[str]:
        """Ids of committed keys, through a bounded cache (a key's id never changes)."""
        cache = self._id_cache
        missing = [k for k in keys if k not in cache]
        if missing:
            if len(cache) + len(missing) > _ID_CACHE:
                cache.clear()
            cache.update(zip(missing, self._docs.ids(missing), strict=True))
        return [cache[k] for k in keys]

    def _require(self, head: Head) -> None:
        self._check_open()
        if head not in self.heads:
            msg = f"this collection stores {list(self.heads)}, not {head}"
            raise ValueError(msg)

    def _check_keys(self, keys: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """``keys`` as int64, each a committed document's key (as `Hits` gives)."""
        return check_keys(keys, len(self._alive))

    def _dense_query(self, query: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return dense_query(query, self.dim)

    def _lexical_query(self, query: Mapping[int, float]) -> dict[int, float]:
        return lexical_query(query, self._vocab_size)

    def _colbert_query(self, query: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return colbert_query(query, self.colbert_dim)

    def search_dense(
        self,
        query: npt.ArrayLike,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        exact: bool | None = None,
    ) -> Hits:
        """Inner-product top-``k`` over the dense vectors of live documents.

        Exact by default. With an ANN graph (``Collection.create(..., ann=True)``) and
        ``exact`` not ``True``, candidates come from the graph (over-fetched, then filtered and
        rescored exactly); if fewer than ``k`` allowed candidates come back it falls back to
        the exact scan, so ``k`` results come back whenever ``k`` matching documents exist.

        Raises:
            ValueError: ``k`` not a positive int; the query not ``dim`` finite values; a bad
                filter (``TypeError`` for a filter that is not a dict).
            CollectionClosedError: The collection is closed.
        """
        self._require("dense")
        k = check_k(k)
        q = self._dense_query(query)
        mask = self.allowed(filter)
        # a k beyond the live documents returns them all (and allocates nothing for the rest)
        k = min(k, int(np.count_nonzero(mask)))
        if k == 0:
            return self._hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        assert self._snap.dense_matrix is not None  # noqa: S101 - dense is stored
        if self._ann is not None and exact is not True:
            hits = self._search_ann(q, k, mask)
            if hits is not None:
                return hits
        keys, scores = DenseStore.search(
            self._snap.dense_matrix,
            q,
            k,
            mask,
            float(self._manifest.get("dense_max_norm", 1.0)),
            self._snap.dense_scan,
        )
        return self._hits(keys, scores)

    def _search_ann(
        self, q: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_]
    ) -> Hits | None:
        assert self._ann is not None  # noqa: S101
        assert self._snap.dense_matrix is not None  # noqa: S101
        allowed = int(mask.sum())
        if allowed == 0:
            return self._hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        covered = self._snap.ann_upto
        # over-fetch in proportion to how selective the filter is
        count = min(covered, max(4 * k, 64) * max(1, len(mask) // allowed))
        keys = self._ann.search(q, count)
        keys = keys[keys < covered]
        keys = keys[mask[keys]]
        tail = np.arange(covered, len(mask), dtype=np.int64)
        keys = np.concatenate([keys, tail[mask[tail]]])
        if len(keys) < min(k, allowed):
            return None  # too few allowed candidates: the caller scans exactly
        scores = DenseStore.scores_for(self._snap.dense_matrix, q, keys)
        order = np.lexsort((keys, -scores))[:k]
        return self._hits(keys[order], scores[order])

    def search_lexical(
        self,
        query: Mapping[int, float],
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
    ) -> Hits:
        """Exact top-``k`` by the BGE-M3 lexical matching score, through tantivy.

        Candidates come from the bit-plane query, best quantised score first, and are rescored
        with the full-precision weights. The candidate set widens until the ``k``-th exact score
        beats the last candidate's quantised score plus the quantisation error bound
        ``sum(q) * max_error`` (so no document outside can enter), or until every matching
        document has been seen. Only documents sharing a token with the query are returned.

        Raises:
            ValueError: ``k`` not a positive int; a token id outside ``[0, vocab_size)``; a
                negative or non-finite weight; a bad filter.
            TypeError: ``query`` is not a dict.
            CollectionClosedError: The collection is closed.
        """
        self._require("sparse")
        k = check_k(k)
        weights = {t: w for t, w in self._lexical_query(query).items() if w > 0}
        mask = self.allowed(filter)
        k = min(k, int(np.count_nonzero(mask)))
        if not weights or k == 0:
            return self._hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        table = self._head_impacts()
        keys, scores = lexical_topk.search(
            self._lexical_view(),
            weights,
            k,
            mask,
            lexical_topk.restriction(mask, Filter.parse(filter)),
            table,
        )
        return self._hits(keys, scores)

    def _head_impacts(self) -> HeadImpacts | None:
        """The impact table of the head tokens, built or extended to the snapshot."""
        if self._lexstore is None:
            return None
        return self._impacts.table(self._lexstore, len(self._alive))

    def _lexical_view(self) -> lexical_topk.LexicalView:
        """What the lexical search reads of the snapshot (the sparse head is stored)."""
        assert self._lexstore is not None  # noqa: S101 - sparse is stored
        lex = self._manifest["lexical"]
        return lexical_topk.LexicalView(
            self._tantivy,
            self._searcher,
            self._lexstore,
            entries=self._lengths().get("lexical", 0),
            docs=len(self._alive),
            max_bit=int(lex["max_bit"]),
            max_error=float(lex["max_error"]),
        )

    def search_bm25(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | Filter | None = None,
        lang: str | None = None,
    ) -> Hits:
        """Top-``k`` by BM25 over the text, live documents only.

        The query is analysed once per analysis family the collection holds, so each document
        is scored against the query analysed the way that document was (see `m3rag.analysis`).

        Args:
            query: The query text.
            k: How many hits.
            filter: A metadata filter.
            lang: Analyse the query only as this language (an ISO 639-1 code): only documents
                of its analysis family can match. Default: every family in the collection.

        Raises:
            ValueError: ``k`` not a positive int, or a bad filter.
            UnknownLanguageError: ``lang`` is not a language code.
            TypeError: ``query`` is not a string.
            CollectionClosedError: The collection is closed.
        """
        self._check_open()
        k = check_k(k)
        check_text_query(query)
        families = self._query_families(lang)
        flt = Filter.parse(filter)
        snap = self._snap  # one snapshot throughout, whatever a refresh does meanwhile
        mask = self._mask(snap, flt)
        live = snap.live if flt is None else int(np.count_nonzero(mask))
        k = min(k, live)
        tquery = self._tantivy.bm25_query(query, families, snap.terms) if k else None
        if tquery is None:
            return self._hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        restrict = lexical_topk.restriction(mask, flt)
        if restrict is not None:
            limit = k  # tantivy returns allowed live documents only
        elif flt is None:
            # tantivy holds every live document, and num_docs - live others (deleted or
            # replaced ones it has not dropped yet, or a commit's in flight): the best k + that
            # many hold the best k live ones (if that is many, widen step by step instead)
            extra = max(0, snap.num_docs - live)
            limit = k + extra if extra <= 4 * k + 64 else max(2 * k, 32)
        else:
            limit = max(2 * k, 32)
        while True:
            keys, scores = self._tantivy.search(
                snap.searcher, tquery, limit, restrict, num_docs=snap.num_docs
            )
            if len(keys) and int(keys.max()) < len(mask):
                keep = mask[keys]
            else:
                keep = keys < len(mask)
                keep[keep] = mask[keys[keep]]
            if keep.all() and len(keys) >= k:  # the common case: every hit is visible
                return self._hits(keys[:k], scores[:k])
            if keep.sum() >= k or len(keys) < limit:
                idx = np.flatnonzero(keep)[:k]
                return self._hits(keys[idx], scores[idx])
            limit *= 4

    # -- rescoring (every path on a candidate set) --------------------------------------------

    def dense_scores(
        self, query: npt.ArrayLike, keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Dense inner products of ``query`` with the documents ``keys``.

        Raises:
            ValueError: The query is not ``dim`` finite values, or ``keys`` are not committed
                keys.
        """
        self._require("dense")
        assert self._snap.dense_matrix is not None  # noqa: S101
        q = self._dense_query(query)
        return DenseStore.scores_for(self._snap.dense_matrix, q, self._check_keys(keys))

    def lexical_scores(
        self, query: Mapping[int, float], keys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Exact lexical matching scores of ``query`` with the documents ``keys``.

        Raises:
            ValueError: A token id outside ``[0, vocab_size)``, a negative or non-finite
                weight, or ``keys`` that are not committed keys.
        """
        self._require("sparse")
        return self._lexical_view().exact(self._lexical_query(query), self._check_keys(keys))

    def colbert_scores(
        self,
        query: npt.ArrayLike,
        keys: npt.NDArray[np.int64],
        *,
        precision: str = "float32",
    ) -> npt.NDArray[np.float32]:
        """ColBERT MaxSim of ``query`` [t, d] with the documents ``keys``.

        Args:
            query: The query's ColBERT vectors.
            keys: Document keys.
            precision: ``"float32"`` (default): the stored vectors widened exactly, float32
                products. ``"bfloat16"``: bfloat16 products and similarities, each within
                ``3 * 2**-8 |q| |d|`` of float32 (0.012 for unit vectors), several times
                faster on CPUs with bfloat16 dot products (AVX512-BF16, AMX).

        Raises:
            ValueError: The query is not ``[t, colbert_dim]`` finite values, ``keys`` are not
                committed keys, or an unknown precision.
        """
        self._require("colbert")
        assert self._colbert is not None  # noqa: S101
        q = self._colbert_query(query)
        keys = self._check_keys(keys)
        lengths = self._lengths()
        return self._colbert.maxsim(
            q,
            keys,
            token_rows=lengths.get("colbert", 0),
            docs=len(self._alive),
            precision=precision,
        )

    def bm25_scores(
        self, query: str, keys: npt.NDArray[np.int64], *, lang: str | None = None
    ) -> npt.NDArray[np.float32]:
        """BM25 scores of ``query`` for the documents ``keys`` (0 where no term matches).

        ``lang`` is as in [`search_bm25`][m3rag.Collection.search_bm25].
        """
        self._check_open()
        check_text_query(query)
        families = self._query_families(lang)
        keys = self._check_keys(keys)
        out = np.zeros(len(keys), dtype=np.float32)
        tquery = self._tantivy.bm25_query(query, families, self._terms)
        if tquery is None or len(keys) == 0:
            return out
        found, scores = self._tantivy.search(self._searcher, tquery, len(keys), np.unique(keys))
        where = {int(k): float(s) for k, s in zip(found, scores, strict=True)}
        return np.array([where.get(int(k), 0.0) for k in keys], dtype=np.float32)

    def dense_vecs(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Stored dense vectors of ``keys``, float32 ``[len(keys), dim]``.

        Raises:
            ValueError: ``keys`` that are not committed keys.
        """
        self._require("dense")
        assert self._snap.dense_matrix is not None  # noqa: S101
        keys = self._check_keys(keys)
        if len(keys) == 0:
            return np.zeros((0, int(self.dim or 0)), dtype=np.float32)
        return np.asarray(gather_rows(self._snap.dense_matrix, keys), dtype=np.float32)

    def colbert_vecs(self, keys: npt.NDArray[np.int64]) -> list[npt.NDArray[np.float32]]:
        """Stored ColBERT matrices of ``keys`` (dequantised to float32)."""
        self._require("colbert")
        assert self._colbert is not None  # noqa: S101
        keys = self._check_keys(keys)
        lengths = self._lengths()
        return self._colbert.matrices(
            keys, token_rows=lengths.get("colbert", 0), docs=len(self._alive)
        )


def _metadata_family(lang: object) -> str | None:
    """The family of a ``lang`` metadata value; ``None`` if it is not a language code.

    ``lang`` is also an ordinary metadata field that users fill with their own labels
    (``"x"``, ``"english"``): such a value is theirs to filter on, and analysis falls back to
    the collection's language instead of refusing the document.
    """
    if not isinstance(lang, str) or lang == AUTO:
        return None
    try:
        return family_of(lang)
    except UnknownLanguageError:
        return None


def _check_analysis(manifest: Mapping[str, Any], folder: Path) -> None:
    """Refuse a manifest whose analysis this m3rag cannot reproduce (never mix tokens)."""
    analysis = manifest.get("analysis")
    if analysis is None:
        return  # made before the analysis record: the legacy analyzer, kept as it was
    version = analysis.get("version")
    unknown = sorted(f for f in analysis.get("families", ()) if f not in FAMILIES)
    known = not isinstance(version, bool) and version in ANALYSIS_VERSIONS
    if not known or unknown:
        what = "" if known else f"analysis version {version!r}"
        what = what or f"analysis families {unknown} unknown to this m3rag"
        msg = (
            f"{folder} was indexed with {what}; this m3rag {__version__} analyses BM25 text "
            f"with versions {sorted(ANALYSIS_VERSIONS)} only, and another would silently "
            "mismatch query and document terms: rebuild the collection into a new folder "
            "(re-add its documents, e.g. with `m3rag index`) or use the m3rag that built it"
        )
        raise IndexFormatError(msg)


_BAD_PATH = {
    errno.ENAMETOOLONG,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.ENOENT,
    errno.EINVAL,
    errno.EEXIST,  # a parent that is a dangling symlink
}


@contextlib.contextmanager
def _path_errors(folder: Path) -> Iterator[None]:
    """A path no folder can be made at, as a `CollectionNotFoundError` naming it.

    As ``open`` reports such a path (too long, a NUL, under a file). Permission and disk
    errors stay what they are.
    """
    try:
        yield
    except CollectionExistsError:
        raise
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno not in _BAD_PATH:
            raise
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None)
        if where is not None and str(where) != str(folder):
            why = f"{why}: {where}"
        msg = (
            f"cannot create a collection at {str(folder)!r}: {why}; pass the path of a new or "
            "empty folder"
        )
        raise CollectionNotFoundError(msg) from exc


def _open_docs(path: Path, *, read_only: bool, next_key: int, create: bool) -> DocStore:
    """Open the document store and check it holds every committed document."""
    fix = "restore the collection from a backup or rebuild it"
    try:
        store = DocStore(path, writable=not read_only, create=create)
    except sqlite3.Error as exc:
        msg = f"{path} cannot be opened: {exc}; the collection is damaged; {fix}"
        raise IndexFormatError(msg) from exc
    try:
        held = store.count_below(next_key)
    except BaseException:
        store.close()
        raise
    if held != next_key:
        store.close()
        msg = (
            f"{path} holds {held} of the {next_key} committed documents: the collection is "
            f"damaged; {fix}"
        )
        raise IndexFormatError(msg)
    return store


def _check_encoder(manifest: dict[str, Any], encoder: Encoder) -> None:
    stored = manifest.get("encoder")
    have = encoder.fingerprint()
    problems: list[str] = []
    if stored:
        keys = ["model", "dim", "tokenizer_sha256"]
        if "colbert" in manifest["heads"]:
            keys.append("colbert_dim")
        problems.extend(
            f"{key}: index {stored.get(key)!r}, encoder {have.get(key)!r}"
            for key in keys
            if stored.get(key) != have.get(key)
        )
    else:
        if "dense" in manifest["heads"] and manifest.get("dim") != have["dim"]:
            problems.append(f"dim: index {manifest.get('dim')}, encoder {have['dim']}")
        if "colbert" in manifest["heads"] and manifest.get("colbert_dim") != have["colbert_dim"]:
            problems.append(
                f"colbert_dim: index {manifest.get('colbert_dim')}, encoder {have['colbert_dim']}"
            )
    missing = [h for h in manifest["heads"] if h not in have["heads"]]
    if missing:
        problems.append(f"the encoder cannot produce {missing}")
    if problems:
        msg = "the encoder does not match the one this collection was built with: " + "; ".join(
            problems
        )
        raise EncoderMismatchError(msg)
