"""Token-exact, sentence-aware chunking of long documents, for every script.

A document is tokenised once with the encoder's tokenizer (character offsets kept), sentence
boundaries are found with a pattern that knows CJK punctuation (``。！？；``) as well as Latin
(``. ! ?`` before a space) and blank lines, and windows of at most ``max_tokens`` tokens
(specials included, as the encoder counts them) are cut in the second half of the window at the
last boundary of the strongest kind there: a Markdown heading, else a paragraph start, else a
sentence start, else a word start (or a token boundary when a word is longer than a window).
Consecutive windows overlap by about ``overlap`` tokens, starting at a sentence boundary when
one is near. Every chunk keeps its parent id and its character span in the parent, so
``text[chunk.start:chunk.end] == chunk.text``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from m3rag._inputs import as_list, check_strings, check_text

__all__ = ["Chunk", "Chunker"]

# Document structure, preferred over sentences as cut points: a Markdown heading line (HTML
# headings are read as Markdown ones), then a paragraph (after a blank line).
_HEADING_START = re.compile(r"^#{1,6}[ \t]", re.MULTILINE)
_PARAGRAPH_START = re.compile(r"\n[ \t]*\n\s*(?=\S)")
# A sentence ends after CJK end punctuation, or after Latin end punctuation followed by
# whitespace, or at a blank line.
_SENTENCE_END = re.compile(r"[。！？；!?](?:[」』”’)\]]*)|[.!?…](?:[\"')\]]*)(?=\s)|\n\s*\n")


def _token_bounds(offsets: np.ndarray, chars: list[int]) -> np.ndarray:
    """Token indices of the first token at or after each character offset (inner ones only)."""
    if not chars:
        return np.zeros(0, dtype=np.int64)
    idx = np.searchsorted(offsets[:, 0], np.asarray(chars, dtype=np.int64), side="left")
    return np.unique(idx[(idx > 0) & (idx < len(offsets))])


def _clean_cut(offsets: np.ndarray, start: int, stop: int) -> int:
    """``stop``, moved back to the nearest cut whose two sides share no character.

    A sentencepiece word-start token ``"▁"`` is mapped to the first character of the word it
    starts, which the next token holds too (``"▁"`` (6, 7), ``"pe"`` (6, 8)); cut between them,
    the character would open the next chunk and close this one. When the window holds no clean
    cut (a single token), ``stop`` as given.
    """
    cut = stop
    while cut > start + 1 and cut < len(offsets) and offsets[cut, 0] < offsets[cut - 1, 1]:
        cut -= 1
    clean = cut >= len(offsets) or offsets[cut, 0] >= offsets[cut - 1, 1]
    return cut if clean else stop


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF


@dataclass(frozen=True)
class Chunk:
    """One window of a document.

    Attributes:
        text: The chunk text, ``parent_text[start:end]``.
        start: Character offset of the chunk in the parent.
        end: Character offset one past the chunk's end.
        index: Position of the chunk in its parent (0-based).
        parent_id: The parent document's id, if given.
        n_tokens: Tokens of the chunk without specials.
    """

    text: str
    start: int
    end: int
    index: int
    parent_id: str | None
    n_tokens: int

    @property
    def id(self) -> str:
        """``"{parent_id}#{index}"`` (or ``"#{index}"`` without a parent id)."""
        return f"{self.parent_id or ''}#{self.index}"


class Chunker:
    """Split texts into token-exact windows with the encoder's tokenizer.

    Args:
        tokenizer: A transformers fast tokenizer (e.g. ``M3Encoder(...).tokenizer``).
        max_tokens: Window size in tokens, specials included (512 by default; up to 8192 for
            BGE-M3).
        overlap: Tokens shared by consecutive windows (less than half of ``max_tokens``).
        sentence_aware: Prefer sentence boundaries for cuts and starts.

    Raises:
        ValueError: Bad sizes.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_tokens: int = 512,
        overlap: int = 64,
        sentence_aware: bool = True,
    ) -> None:
        specials = int(tokenizer.num_special_tokens_to_add(pair=False))
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or max_tokens <= specials + 1
        ):
            least = specials + 1
            msg = f"max_tokens must be an int > {least} (specials included), got {max_tokens!r}"
            raise ValueError(msg)
        budget = max_tokens - specials
        if (
            isinstance(overlap, bool)
            or not isinstance(overlap, int)
            or not 0 <= overlap < budget // 2
        ):
            msg = f"overlap must be an int in [0, {budget // 2}), got {overlap!r}"
            raise ValueError(msg)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.sentence_aware = sentence_aware
        self._budget = budget

    def split(self, text: str, *, parent_id: str | None = None) -> list[Chunk]:
        """Chunks of ``text`` in order (one chunk when it fits; none for blank text).

        Raises:
            TypeError: ``text`` is not a string.
            ValueError: ``text`` holds a lone surrogate (the message gives its position).
        """
        return self._split(check_text(text, "text"), parent_id)

    def _split(self, text: str, parent_id: str | None) -> list[Chunk]:
        if not text.strip():
            return []
        # verbose=False: a long document is longer than the model on purpose; no warning
        enc = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        n = len(offsets)
        if n == 0:
            return [Chunk(text, 0, len(text), 0, parent_id, 0)]
        if n <= self._budget:
            return [Chunk(text, 0, len(text), 0, parent_id, n)]
        empty = np.zeros(0, np.int64)
        if self.sentence_aware:
            headings = _token_bounds(offsets, [m.start() for m in _HEADING_START.finditer(text)])
            paragraphs = _token_bounds(offsets, [m.end() for m in _PARAGRAPH_START.finditer(text)])
            sentences = self._sentence_token_bounds(text, offsets)
        else:
            headings = paragraphs = sentences = empty
        words = self._word_token_bounds(text, offsets)
        preferred = (headings, paragraphs, sentences, words)
        heading_starts = set(headings.tolist())
        chunks: list[Chunk] = []
        start = 0
        while start < n:
            stop = min(n, start + self._budget)
            if stop < n:
                # cut at the last heading in the window's second half, else the last paragraph,
                # sentence or word start there
                for bounds in preferred:
                    inside = bounds[(bounds > start + self._budget // 2) & (bounds <= stop)]
                    if inside.size:
                        stop = int(inside[-1])
                        break
                stop = _clean_cut(offsets, start, stop)
            chunk, stop = self._make(text, offsets, start, stop, len(chunks), parent_id, words)
            chunks.append(chunk)
            if stop >= n:
                break
            nxt = max(stop - self.overlap, start + 1)
            if stop in heading_starts:
                # cut before a heading: the next chunk opens the section, with no overlap into
                # the one before (its first line is never split between two chunks)
                nxt = stop
            elif self.overlap:
                # start the overlap at a sentence start if one is near, else at a word start
                for bounds in (sentences, words):
                    near = bounds[(bounds >= nxt) & (bounds < stop)]
                    if near.size:
                        nxt = int(near[0])
                        break
            start = nxt
        return chunks

    @staticmethod
    def _word_token_bounds(text: str, offsets: np.ndarray) -> np.ndarray:
        """Token indices that start a word (after whitespace) or a CJK character."""
        starts = offsets[:, 0].tolist()
        # A word-start marker token (sentencepiece "▁") shares its offsets with the first
        # character token after it: only the first token at an offset is a boundary.
        ok = [
            i
            for i, a in enumerate(starts)
            if i > 0
            and a != starts[i - 1]
            and 0 < a < len(text)
            and (text[a - 1].isspace() or _is_cjk(text[a]))
        ]
        return np.asarray(ok, dtype=np.int64)

    def split_many(
        self, texts: Sequence[str], *, parent_ids: Sequence[str | None] | None = None
    ) -> list[Chunk]:
        """Chunks of several documents, in order.

        Raises:
            TypeError: ``texts`` (or ``parent_ids``) is a single string or not a list, or a
                text is not a string (the message names its index).
            ValueError: A text holds a lone surrogate, or ``parent_ids`` has another length.
        """
        items = check_strings(texts, "texts")
        ids = (
            as_list(parent_ids, "parent_ids", "ids or None")
            if parent_ids is not None
            else [None] * len(items)
        )
        if len(ids) != len(items):
            msg = f"parent_ids has {len(ids)} entries for {len(items)} texts"
            raise ValueError(msg)
        return [c for t, i in zip(items, ids, strict=True) for c in self._split(t, i)]

    def _sentence_token_bounds(self, text: str, offsets: np.ndarray) -> np.ndarray:
        """Token indices at which a new sentence starts."""
        ends = np.array([m.end() for m in _SENTENCE_END.finditer(text)], dtype=np.int64)
        if ends.size == 0:
            return np.zeros(0, dtype=np.int64)
        starts = offsets[:, 0]
        idx = np.searchsorted(starts, ends, side="left")  # first token at or after the end
        return np.unique(idx[(idx > 0) & (idx < len(offsets))])

    def _make(
        self,
        text: str,
        offsets: np.ndarray,
        start: int,
        stop: int,
        index: int,
        parent_id: str | None,
        words: np.ndarray,
    ) -> tuple[Chunk, int]:
        """The chunk of tokens ``start`` to ``stop`` (shrunk until it fits), and its stop."""
        while True:
            a = int(offsets[start, 0])
            b = int(offsets[stop - 1, 1])
            piece = text[a:b]
            # re-tokenising a cut-out piece can add a token at its edge (a word-start marker);
            # shrink until the piece itself fits, so the encoder never truncates a chunk
            count = len(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
            if count <= self._budget or stop - start <= 1:
                return Chunk(piece, a, b, index, parent_id, count), stop
            earlier = words[(words > start) & (words < stop)]
            stop = _clean_cut(offsets, start, int(earlier[-1]) if earlier.size else stop - 1)
