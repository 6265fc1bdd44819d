"""Reading documents from files and folders for indexing: txt, md, html, pdf and jsonl.

Each reader yields `Document` objects with a stable id (the file's path relative
to the root it was found under, or the ``id`` of a jsonl record) and ``source`` metadata.
Unreadable files are reported, not fatal: `read_documents` yields ``(document, None)`` or
``(None, problem)`` pairs so a caller can count and report them and go on.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

from m3rag.types import Document

__all__ = ["SUFFIXES", "Problem", "discover", "document_sha256", "read_documents"]

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")


@dataclass(frozen=True)
class Problem:
    """A file (or a line of one) that could not be read, and why."""

    path: Path
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.reason}"


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
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag == "title":
            self._in_title = False
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


def _read_pdf(path: Path) -> str:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()


def document_sha256(doc: Document) -> str:
    """Hash of a document's text and metadata (what "already indexed" means when resuming)."""
    meta = json.dumps(dict(doc.metadata), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{doc.text}\x00{meta}".encode()).hexdigest()


def read_documents(
    files: Sequence[tuple[Path, Path]],
) -> Iterator[tuple[Document | None, Problem | None]]:
    """Read each file into documents; problems are yielded, never raised."""
    for path, root in files:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        suffix = path.suffix.lower()
        try:
            if suffix == ".jsonl":
                yield from _read_jsonl(path, rel)
                continue
            if suffix == ".pdf":
                text = _read_pdf(path)
                title = ""
            else:
                raw = path.read_text(encoding="utf-8")
                if suffix in (".html", ".htm"):
                    parser = _TextExtractor()
                    parser.feed(raw)
                    text, title = parser.text(), parser.title.strip()
                else:
                    text, title = raw, ""
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            yield None, Problem(path, f"unreadable ({type(exc).__name__}: {exc})")
            continue
        except Exception as exc:  # PDF parsers raise their own types on damaged files
            yield None, Problem(path, f"unreadable ({type(exc).__name__}: {exc})")
            continue
        if not text.strip():
            yield None, Problem(path, "no text")
            continue
        meta: dict[str, Any] = {"source": str(path)}
        if title:
            meta["title"] = title
        yield Document(text, rel, meta), None


def _read_jsonl(path: Path, rel: str) -> Iterator[tuple[Document | None, Problem | None]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                yield None, Problem(path, f"not JSON ({exc})", n)
                continue
            text_value = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text_value, str) or not text_value.strip():
                yield None, Problem(path, 'a record needs a non-empty "text" string', n)
                continue
            doc_id = row.get("id", row.get("_id"))
            meta = row.get("metadata") or {}
            if not isinstance(meta, dict):
                yield None, Problem(path, '"metadata" must be an object', n)
                continue
            title = row.get("title")
            text = (
                f"{title} {text_value}".strip() if isinstance(title, str) and title else text_value
            )
            record_id = str(doc_id) if doc_id is not None else f"{rel}:{n}"
            yield Document(text, record_id, {**meta, "source": str(path)}), None
