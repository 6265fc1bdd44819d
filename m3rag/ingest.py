"""Indexing files and folders: read txt, md, html, pdf and jsonl, chunk, encode, commit.

`index_files` is what ``m3rag index`` runs, as a library call: it reads files and folders,
cuts every document into token-exact chunks (metadata as `m3rag.rollup` defines it), skips
documents already indexed with the same content, replaces changed ones, commits in batches and
returns an `IndexReport` with everything it skipped and why.

The readers underneath yield `Document` objects with a stable id (the file's path
relative to the root it was found under, or the ``id`` of a jsonl record) and ``source``
metadata. Unreadable files and bad records are reported, not fatal: `read_documents`
yields ``(document, None)`` or ``(None, problem)`` pairs so a caller can count and report them
and go on.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from m3rag._inputs import check_positive_int
from m3rag._optional import require
from m3rag.errors import M3RagError, MissingDependencyError
from m3rag.rollup import CONTENT_SHA, PAGE_OFFSETS, PARENT_ID, chunk_metadata
from m3rag.types import Document

if TYPE_CHECKING:
    from m3rag.chunking import Chunker
    from m3rag.index import Collection

__all__ = [
    "SUFFIXES",
    "IndexProgress",
    "IndexReport",
    "Problem",
    "count_documents",
    "default_overlap",
    "discover",
    "document_sha256",
    "index_files",
    "chunk_document",
    "make_chunker",
    "read_documents",
    "read_file",
    "record_document",
]


SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Problem:
    """A file (or a line of one) that could not be read, and why."""

    path: Path
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        # a file name that is not valid UTF-8 holds surrogates, which no console can print
        path = str(self.path).encode("utf-8", "backslashreplace").decode("utf-8")
        where = f"{path}:{self.line}" if self.line is not None else path
        return f"{where}: {self.reason}"


def input_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The files and folders an indexing call was given, as paths.

    Raises:
        TypeError: ``paths`` is one string or path (it must be a list).
    """
    if isinstance(paths, (str, Path)):
        msg = "paths must be a list of files or folders, e.g. [path]"
        raise TypeError(msg)
    return [Path(p) for p in paths]


def discover(paths: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Files to read under ``paths`` (folders recursively), as ``(file, root)`` pairs, sorted.

    Returns:
        The files with a supported suffix, and problems for paths that do not exist or files
        with an unsupported suffix given explicitly.
    """
    files: list[tuple[Path, Path]] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
            )
            files.extend((p, path) for p in found)
        elif path.is_file():
            if path.suffix.lower() in SUFFIXES:
                files.append((path, path.parent))
            else:
                kinds = ", ".join(SUFFIXES)
                problems.append(Problem(path, f"unsupported file type; use one of {kinds}"))
        else:
            problems.append(Problem(path, "no such file or folder"))
    return files, problems


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: script/style dropped, block elements become line breaks."""

    _BLOCK: ClassVar[frozenset[str]] = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article"}
    )
    _SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "noscript", "template"})
    _HEADINGS: ClassVar[frozenset[str]] = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self._HEADINGS:
            # headings become Markdown headings: the chunker cuts before them and chunks
            # carry their heading path, as for .md files
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in self._HEADINGS:
            self.parts.append("\n\n")
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self.parts.append(data)

    def text(self) -> str:
        joined = html.unescape("".join(self.parts))
        lines = [re.sub(r"[ \t]+", " ", line).strip() for line in joined.splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _read_pdf(path: Path) -> tuple[str, list[int]]:
    """The text of every page, joined by blank lines, and where each page starts in it."""
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    offsets, at = [], 0
    for page in pages:
        offsets.append(at)
        at += len(page) + 2  # the "\n\n" joining pages
    text = "\n\n".join(pages)
    lead = len(text) - len(text.lstrip())
    return text.strip(), [max(0, o - lead) for o in offsets]


def document_sha256(doc: Document) -> str:
    """Hash of a document's text and metadata (what "already indexed" means when resuming)."""
    meta = json.dumps(dict(doc.metadata), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{doc.text}\x00{meta}".encode()).hexdigest()


def read_documents(
    files: Sequence[tuple[Path, Path]],
) -> Iterator[tuple[Document | None, Problem | None]]:
    """Read each file into documents; problems are yielded, never raised."""
    for path, root in files:
        yield from read_file(path, root)


def read_file(path: Path, root: Path) -> Iterator[tuple[Document | None, Problem | None]]:
    """Read one file (found under ``root``) into documents; problems are yielded, never raised.

    A text, Markdown, HTML or PDF file is one document whose id is its path relative to
    ``root``; a jsonl or parquet file holds one record per line or row (`record_document`).
    A path that is not valid UTF-8 (ids and ``source`` metadata are text) is a problem.
    This is what `read_documents` does per file, and what a distributed reader runs per task.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # the path is the document's id and source; ids and metadata are UTF-8 text
        yield None, Problem(path, "the file name is not valid UTF-8; rename the file to index it")
        return
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from _read_jsonl(path, rel)
            return
        if suffix == ".parquet":
            yield from _read_parquet(path, rel)
            return
        page_offsets: list[int] = []
        if suffix == ".pdf":
            text, page_offsets = _read_pdf(path)
            title = ""
        else:
            raw = path.read_text(encoding="utf-8")
            if suffix in (".html", ".htm"):
                parser = _TextExtractor()
                parser.feed(raw)
                text, title = parser.text(), parser.title.strip()
            else:
                text, title = raw, ""
    except MissingDependencyError as exc:
        yield None, Problem(path, str(exc))
        return
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        yield None, Problem(path, f"unreadable ({type(exc).__name__}: {exc})")
        return
    except Exception as exc:  # PDF and parquet readers raise their own types on damaged files
        yield None, Problem(path, f"unreadable ({type(exc).__name__}: {exc})")
        return
    if not text.strip():
        yield None, Problem(path, "no text")
        return
    meta: dict[str, Any] = {"source": str(path)}
    if title:
        meta["title"] = title
    if page_offsets:
        meta[PAGE_OFFSETS] = page_offsets
    yield Document(text, rel, meta), None


def _reject_constant(name: str) -> float:
    msg = f"{name} is not valid JSON (use null or a string)"
    raise ValueError(msg)


def _record_problem(text: str, meta: dict[str, Any], doc_id: object) -> str | None:
    """Why a parsed jsonl record cannot be indexed, or ``None``."""
    if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, (str, int))):
        return f'"id" must be a string or an integer, got {type(doc_id).__name__}'
    try:
        text.encode("utf-8")
        str(doc_id).encode("utf-8")
        json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate ({exc.object[exc.start : exc.end]!r}) is not text; fix the escape"
    except ValueError as exc:
        return f'"metadata" cannot be stored ({exc})'
    except RecursionError:
        return '"metadata" is nested too deeply'
    return None


def _read_jsonl(path: Path, rel: str) -> Iterator[tuple[Document | None, Problem | None]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_reject_constant)
            except RecursionError:
                yield None, Problem(path, "not JSON (nested too deeply)", n)
                continue
            except ValueError as exc:
                yield None, Problem(path, f"not JSON ({exc})", n)
                continue
            yield record_document(row, path, rel, n)


def _read_parquet(path: Path, rel: str) -> Iterator[tuple[Document | None, Problem | None]]:
    """Rows of a parquet file as records (``id``, ``text``, ``title``, ``metadata`` columns).

    A ``metadata`` column may hold structs or JSON strings; rows are numbered from 1 like
    jsonl lines, so a record without an id is ``"{file}:{row}"``.
    """
    pq = require("pyarrow.parquet", extra="ray", purpose="reading .parquet files")
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            meta = row.get("metadata")
            if isinstance(meta, str):
                try:
                    row["metadata"] = json.loads(meta, parse_constant=_reject_constant)
                except (ValueError, RecursionError) as exc:
                    yield None, Problem(path, f'"metadata" is not JSON ({exc})', n)
                    continue
            yield record_document(row, path, rel, n)


def record_document(
    row: object, path: Path, rel: str, line: int
) -> tuple[Document | None, Problem | None]:
    """A record (``{"id", "text", "title", "metadata"}``) as a document, or why it is not one.

    Args:
        row: The parsed record (a jsonl line or a parquet row).
        path: The file it was read from (the ``source`` metadata).
        rel: The file's path relative to where it was found (ids of records without one).
        line: The record's line or row number, from 1.
    """
    text_value = row.get("text") if isinstance(row, dict) else None
    if not isinstance(row, dict) or not isinstance(text_value, str) or not text_value.strip():
        return None, Problem(path, 'a record needs a non-empty "text" string', line)
    doc_id = row.get("id", row.get("_id"))
    meta = row.get("metadata") or {}
    if not isinstance(meta, dict):
        return None, Problem(path, '"metadata" must be an object', line)
    title = row.get("title")
    text = f"{title} {text_value}".strip() if isinstance(title, str) and title else text_value
    problem = _record_problem(text, meta, doc_id)
    if problem is not None:
        return None, Problem(path, problem, line)
    record_id = str(doc_id) if doc_id is not None else f"{rel}:{line}"
    return Document(text, record_id, {**meta, "source": str(path)}), None


def count_documents(files: Sequence[tuple[Path, Path]]) -> int:
    """How many documents `read_documents` will yield at most (a progress total).

    A jsonl file counts its non-blank lines, a parquet file the rows its footer declares, any
    other file one; nothing is parsed.
    """
    total = 0
    for path, _root in files:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            try:
                with path.open("rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            except OSError:
                total += 1
        elif suffix == ".parquet":
            total += _parquet_rows(path)
        else:
            total += 1
    return total


def _parquet_rows(path: Path) -> int:
    """Rows a parquet file declares in its footer (1 if it cannot be read)."""
    try:
        pq = require("pyarrow.parquet", extra="ray", purpose="reading .parquet files")
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # a damaged file is reported when read; here it counts as one
        return 1


def default_overlap(chunk_tokens: int) -> int:
    """The overlap used when none is given: an eighth of the chunk (64 tokens at 512)."""
    return max(0, chunk_tokens // 8)


def make_chunker(
    tokenizer: Any, max_length: int, *, chunk_tokens: int = 512, overlap: int | None = None
) -> Chunker:
    """The [`Chunker`][m3rag.Chunker] `index_files` cuts documents with.

    Args:
        tokenizer: The encoder's tokenizer.
        max_length: The encoder's longest input; ``chunk_tokens`` is capped at it.
        chunk_tokens: Chunk size in tokens, specials included.
        overlap: Tokens shared by consecutive chunks (default `default_overlap`).
    """
    from m3rag.chunking import Chunker

    size = chunk_tokens
    if isinstance(size, int) and not isinstance(size, bool):
        size = min(size, max_length)
    return Chunker(
        tokenizer, max_tokens=size, overlap=default_overlap(size) if overlap is None else overlap
    )


def chunk_document(
    doc: Document, chunker: Chunker, *, sha256: str | None = None
) -> tuple[list[Document], Problem | None]:
    """Cut a document into chunk documents whose metadata follows `m3rag.rollup`.

    Args:
        doc: The parent document (its id is the chunks' ``parent_id``).
        chunker: How to cut it (`make_chunker`).
        sha256: The parent's `document_sha256`, if already computed.

    Returns:
        The chunks (ids ``"{parent_id}#{n}"``) and ``None``, or no chunks and the `Problem`
        (the text cannot be chunked, holds no tokens, or its ``page_offsets`` are not a
        sorted list of non-negative integers).
    """
    source = Path(str(doc.metadata.get("source", "")))
    parent = str(doc.id)
    try:
        pieces = chunker.split(doc.text, parent_id=parent)
    except (ValueError, TypeError) as exc:
        return [], Problem(source, f"{parent}: cannot be chunked ({exc})")
    if not pieces:
        return [], Problem(source, f"{parent}: no text")
    sha = document_sha256(doc) if sha256 is None else sha256
    try:
        chunks = [
            Document(
                c.text,
                c.id,
                chunk_metadata(c, parent, doc.metadata, sha256=sha, parent_text=doc.text),
            )
            for c in pieces
        ]
    except ValueError as exc:  # metadata the chunks cannot carry, e.g. bad page_offsets
        return [], Problem(source, f"{parent}: {exc}")
    return chunks, None


@dataclass(frozen=True)
class IndexProgress:
    """Where `index_files` is, passed to its ``on_progress`` callback.

    Attributes:
        done: Records handled so far (indexed, skipped or reported as problems).
        total: Records expected (`count_documents`; a jsonl file counts its lines).
        chunks: Chunks staged so far.
        source: The file being read.
    """

    done: int
    total: int
    chunks: int
    source: str


@dataclass(frozen=True)
class IndexReport:
    """What `index_files` did.

    Attributes:
        documents: Documents newly indexed (new or changed).
        chunks: Chunks those documents were cut into.
        skipped: Documents already indexed with the same text and metadata.
        replaced: Changed documents whose old chunks were replaced.
        problems: Files and records that were not indexed, and why.
    """

    documents: int = 0
    chunks: int = 0
    skipped: int = 0
    replaced: int = 0
    problems: tuple[Problem, ...] = field(default=())

    @property
    def unreadable(self) -> int:
        """How many files or records were not indexed."""
        return len(self.problems)

    def __str__(self) -> str:
        return (
            f"indexed {self.documents} documents ({self.chunks} chunks), skipped "
            f"{self.skipped} already indexed, replaced {self.replaced}, "
            f"{self.unreadable} unreadable"
        )


def index_files(
    collection: Collection,
    paths: Sequence[str | Path],
    *,
    chunker: Chunker | None = None,
    chunk_tokens: int = 512,
    overlap: int | None = None,
    batch_size: int = 64,
    commit_every: int = 32,
    on_progress: Callable[[IndexProgress], None] | None = None,
    on_problem: Callable[[Problem], None] | None = None,
) -> IndexReport:
    """Index files and folders into ``collection``, as ``m3rag index`` does.

    Reads ``.txt``, ``.md``, ``.html`` (visible text; the title as metadata), ``.pdf`` and
    ``.jsonl`` (``{"id", "text", "title", "metadata"}`` per line) recursively; cuts each document
    into chunks whose metadata follows `m3rag.rollup`; encodes ``batch_size`` chunks per
    call; commits every ``commit_every`` documents and at the end, so an interrupted run keeps
    what it committed. A document already indexed with the same text and metadata is skipped
    (resume); one whose content changed replaces its old chunks (if the collection refuses the
    new version, the old one stays and the document is reported). Files that cannot be read and
    records that cannot be indexed (bad JSON, non-finite numbers, lone surrogates, an id that
    repeats within the run, a document the collection refuses) are reported and skipped.

    Args:
        collection: A writable collection with an encoder (or pass ``chunker``).
        paths: Files and folders.
        chunker: How to cut documents (default: a [`Chunker`][m3rag.Chunker] on the collection's
            encoder's tokenizer with ``chunk_tokens`` and ``overlap``).
        chunk_tokens: Chunk size in tokens, specials included (capped at the encoder's maximum).
        overlap: Tokens shared by consecutive chunks (default `default_overlap`).
        batch_size: Chunks per [`add`][m3rag.Collection.add] call.
        commit_every: Documents per commit.
        on_progress: Called after each record with an `IndexProgress`.
        on_problem: Called with each `Problem` as it is found.

    Returns:
        An `IndexReport`.

    Raises:
        ValueError: Bad sizes (before anything is read).
        TypeError: ``paths`` is a string (pass a list) or holds non-paths.
        m3rag.CollectionError: The collection cannot be written (read-only, locked, commit
            failed); what was committed before stays.

    Example:
        ```python
        report = m3rag.index_files(collection, ["docs/", "notes.jsonl"], chunk_tokens=256)
        print(report)  # indexed 12 documents (40 chunks), skipped 0 ...
        ```
    """
    inputs = input_paths(paths)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(commit_every, "commit_every")
    if chunker is None:
        encoder = collection.encoder
        if encoder is None:
            msg = "index_files needs a collection with an encoder (to chunk), or a chunker"
            raise ValueError(msg)
        chunker = make_chunker(
            encoder.tokenizer, encoder.max_length, chunk_tokens=chunk_tokens, overlap=overlap
        )
    run = _IndexRun(collection, chunker, batch_size, commit_every, on_problem)
    files, missing = discover(inputs)
    for found in missing:
        run.problem(found)
    total = count_documents(files)
    for done, (doc, problem) in enumerate(read_documents(files), 1):
        if problem is not None:
            run.problem(problem)
        elif doc is not None:
            run.document(doc)
        if on_progress is not None:
            source = doc.metadata.get("source") if doc is not None else None
            where = str(source if source is not None else problem.path if problem else "")
            on_progress(IndexProgress(done, max(total, done), run.chunks, where))
    run.flush()
    collection.commit()
    return IndexReport(run.documents, run.chunks, run.skipped, run.replaced, tuple(run.problems))


class _IndexRun:
    """The state of one `index_files` call: what is buffered, seen and counted."""

    def __init__(
        self,
        collection: Collection,
        chunker: Chunker,
        batch_size: int,
        commit_every: int,
        on_problem: Callable[[Problem], None] | None,
    ) -> None:
        self.collection = collection
        self.chunker = chunker
        self.batch_size = batch_size
        self.commit_every = commit_every
        self.on_problem = on_problem
        self.indexed_shas = {str(v) for v in collection.metadata_values(CONTENT_SHA)}
        self.known_parents = {str(v) for v in collection.metadata_values(PARENT_ID)}
        self.seen: dict[str, str] = {}  # id -> where it was read, in this run
        self.buffer: list[tuple[Document, list[Document]]] = []
        self.problems: list[Problem] = []
        self.documents = self.chunks = self.skipped = self.replaced = 0
        self.since_commit = 0

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)

    def document(self, doc: Document) -> None:
        source = str(doc.metadata.get("source", ""))
        parent = str(doc.id)
        if parent in self.seen:
            where = self.seen[parent]
            self.problem(
                Problem(Path(source), f"the id {parent!r} repeats (first read in {where})")
            )
            return
        self.seen[parent] = source
        sha = document_sha256(doc)
        if sha in self.indexed_shas:
            self.skipped += 1
            return
        chunks, problem = chunk_document(doc, self.chunker, sha256=sha)
        if problem is not None:
            self.problem(problem)
            return
        if parent in self.known_parents:  # content changed: replace the old chunks
            if not self.replace(doc, chunks):
                return
        else:
            self.buffer.append((doc, chunks))
        self.indexed_shas.add(sha)
        self.known_parents.add(parent)
        self.documents += 1
        self.chunks += len(chunks)
        self.since_commit += 1
        if sum(len(c) for _, c in self.buffer) >= self.batch_size:
            self.flush()
        if self.since_commit >= self.commit_every:
            self.flush()
            self.collection.commit()
            self.since_commit = 0

    def replace(self, doc: Document, chunks: list[Document]) -> bool:
        """Stage ``doc``'s new chunks over its old ones; ``False`` (reported) if refused.

        The new chunks are upserted first and only then are the old chunks they do not
        overwrite deleted, so a refused document keeps its old version: a failed upsert stages
        nothing, and no deletion is staged before it.
        """
        self.flush()  # the buffer's documents keep their order relative to this one
        new_ids = {c.id for c in chunks}
        old = self.collection.ids_matching({PARENT_ID: str(doc.id)})
        try:
            self.collection.upsert(chunks)
        except (M3RagError, ValueError, TypeError) as exc:
            source = Path(str(doc.metadata.get("source", doc.id)))
            self.problem(Problem(source, f"{doc.id}: not indexed, its old version kept ({exc})"))
            return False
        stale = [i for i in old if i not in new_ids]
        if stale:
            self.collection.delete(stale)
        self.replaced += 1
        return True

    def flush(self) -> None:
        """Add the buffered chunks; a document the collection refuses is reported, not fatal."""
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        try:
            self.collection.add([c for _, chunks in batch for c in chunks])
        except (M3RagError, ValueError, TypeError):
            pass  # a failed add() stages nothing: retry document by document, below
        else:
            return
        for parent, chunks in batch:
            try:
                self.collection.add(chunks)
            except (M3RagError, ValueError, TypeError) as exc:
                source = Path(str(parent.metadata.get("source", parent.id)))
                self.problem(Problem(source, f"{parent.id}: not indexed ({exc})"))
                self.documents -= 1
                self.chunks -= len(chunks)
