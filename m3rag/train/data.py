"""Training data: BGE-M3's JSONL format and BEIR folders, and the groups a batch is made of.

A JSONL line (reference spec §9.6) is ``{"query": str, "pos": [str, ...], "neg": [str, ...]}``
with optional ``pos_scores`` / ``neg_scores`` (teacher scores, parallel to ``pos`` / ``neg``) and
``prompt`` (a per-line query instruction, prepended to the query). A BEIR folder with
``qrels/train.tsv`` gives one example per judged query, its positives from the qrels (relevance
> 0) and no negatives: mine some with [`mine_hard_negatives`][m3rag.train.mine_hard_negatives].

Sampling follows FlagEmbedding's ``AbsEmbedderTrainDataset``: one random positive, then
``group_size - 1`` negatives drawn without replacement (from the list repeated when it is too
short); teacher scores follow the same indices.

Input is checked where it is read, each problem named by file and line: text that is not UTF-8,
lone surrogates (valid in JSON escapes, not in text), teacher scores that are not finite numbers,
nesting too deep to parse. [`check_examples`][m3rag.train.data.check_examples] checks, before any
model loads, that every example can make a group (negatives, teacher scores).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Group",
    "TrainExample",
    "check_examples",
    "load_training_data",
    "read_jsonl",
    "sample_group",
    "write_jsonl",
]


@dataclass(frozen=True)
class TrainExample:
    """One training query with its positives, negatives and optional teacher scores.

    ``source`` says where the example was read (``file:line``), for error messages.
    """

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    pos_scores: tuple[float, ...] | None = None
    neg_scores: tuple[float, ...] | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The JSONL object (unknown fields of the input kept)."""
        obj: dict[str, Any] = dict(self.extra)
        obj.update(query=self.query, pos=list(self.pos), neg=list(self.neg))
        if self.pos_scores is not None:
            obj["pos_scores"] = list(self.pos_scores)
        if self.neg_scores is not None:
            obj["neg_scores"] = list(self.neg_scores)
        if self.prompt is not None:
            obj["prompt"] = self.prompt
        return obj


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        msg = f"{where}: {name!r} must be a list of strings, got {type(value).__name__}"
        raise ValueError(msg)
    return tuple(value)


def _scores(value: Any, n: int, where: str, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        msg = f"{where}: {name!r} must be a list of {n} numbers (one per text)"
        raise ValueError(msg)
    out: list[float] = []
    for x in value:
        try:
            score = float(x)
        except OverflowError:  # an int beyond the float range
            score = math.inf
        if not math.isfinite(score):
            shown = x if isinstance(x, float) else f"an integer of {len(str(abs(x)))} digits"
            msg = f"{where}: {name!r} must hold finite numbers, got {shown}"
            raise ValueError(msg)
        out.append(score)
    return tuple(out)


# a JSON escape of a UTF-16 surrogate: only then can a parsed string hold a lone one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(obj: Any, where: str) -> None:
    """Refuse lone surrogates: JSON escapes allow them, UTF-8 (so any output) cannot hold them."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as exc:
            msg = (
                f"{where}: a lone surrogate {obj[exc.start]!r} in {obj[:40]!r}: not valid Unicode "
                "text; fix the JSON escape (a surrogate needs its pair)"
            )
            raise ValueError(msg) from None
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_unicode(key, where)
            _check_unicode(value, where)
    elif isinstance(obj, list):
        for value in obj:
            _check_unicode(value, where)


def _example(obj: Any, where: str) -> TrainExample:
    if not isinstance(obj, dict):
        msg = f"{where}: expected a JSON object, got {type(obj).__name__}"
        raise ValueError(msg)
    query = obj.get("query")
    if not isinstance(query, str):
        msg = f'{where}: "query" must be a string'
        raise ValueError(msg)
    pos = _strings(obj.get("pos"), where, "pos")
    if not pos:
        msg = f'{where}: "pos" is empty; every example needs a positive'
        raise ValueError(msg)
    neg = _strings(obj.get("neg", []), where, "neg")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        msg = f'{where}: "prompt" must be a string'
        raise ValueError(msg)
    known = {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt"}
    return TrainExample(
        query,
        pos,
        neg,
        _scores(obj.get("pos_scores"), len(pos), where, "pos_scores"),
        _scores(obj.get("neg_scores"), len(neg), where, "neg_scores"),
        prompt,
        {k: v for k, v in obj.items() if k not in known},
        where,
    )


def read_jsonl(path: str | os.PathLike[str]) -> list[TrainExample]:
    """Examples from a JSONL file, or from every ``*.jsonl`` file of a folder (sorted).

    Raises:
        FileNotFoundError: Nothing to read.
        ValueError: A malformed line (file and line named): not UTF-8, not JSON, nested too
            deeply, a lone surrogate, a wrong field.
    """
    root = Path(path)
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files or not all(f.is_file() for f in files):
        msg = f"no training data at {root}: give a .jsonl file or a folder of them"
        raise FileNotFoundError(msg)
    out: list[TrainExample] = []
    for file in files:
        with file.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                where = f"{file}:{n}"
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    msg = (
                        f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                        f"{exc.start + 1}); save the file as UTF-8"
                    )
                    raise ValueError(msg) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except RecursionError:
                    msg = f"{where}: JSON nested too deeply to read"
                    raise ValueError(msg) from None
                except ValueError as exc:
                    msg = f"{where}: not JSON ({exc})"
                    raise ValueError(msg) from exc
                if _SURROGATE_ESCAPE.search(line):
                    _check_unicode(obj, where)
                out.append(_example(obj, where))
    return out


def write_jsonl(examples: Iterable[TrainExample], path: str | os.PathLike[str]) -> int:
    """Write examples in the training format; returns how many lines were written.

    The file is written whole or not at all: into a temporary file next to ``path``, renamed
    over it once complete, so a failure keeps what ``path`` held before.
    """
    from m3rag.train.state import write_text

    return write_text(
        Path(path), (json.dumps(ex.to_json(), ensure_ascii=False) + "\n" for ex in examples)
    )


def beir_examples(folder: str | os.PathLike[str], *, split: str = "train") -> list[TrainExample]:
    """One example per query judged in ``qrels/<split>.tsv``: its positives, no negatives.

    The document ids of the positives are kept in ``extra["pos_ids"]`` (mining skips them).
    """
    from m3rag.eval import load_beir

    data = load_beir(Path(folder), split=split)
    qrels = Path(folder) / "qrels" / f"{split}.tsv"
    out: list[TrainExample] = []
    for qid, judged in data.qrels.items():
        ids = [d for d, rel in judged.items() if rel > 0 and d in data.corpus]
        if not ids or qid not in data.queries:
            continue
        out.append(
            TrainExample(
                data.queries[qid],
                tuple(data.corpus[d] for d in ids),
                extra={"query_id": qid, "pos_ids": ids},
                source=f"{qrels} (query {qid})",
            )
        )
    return out


def load_training_data(path: str | os.PathLike[str], *, split: str = "train") -> list[TrainExample]:
    """JSONL (a file or a folder of files) or a BEIR folder (one with ``qrels/<split>.tsv``).

    Raises:
        FileNotFoundError: Neither, or a BEIR folder without the split.
        ValueError: Malformed data, or no usable example.
    """
    root = Path(path)
    if root.is_dir() and (root / "qrels" / f"{split}.tsv").is_file():
        examples = beir_examples(root, split=split)
    elif root.is_dir() and any(
        (root / name).exists() for name in ("corpus.jsonl", "queries.jsonl", "qrels")
    ):
        msg = (
            f"no qrels/{split}.tsv in {root} (a BEIR folder needs a {split} split; or give a "
            "training JSONL)"
        )
        raise FileNotFoundError(msg)
    else:
        examples = read_jsonl(root)
    if not examples:
        msg = f"{root} holds no training example (every example needs a query and a positive)"
        raise ValueError(msg)
    return examples


def check_examples(
    examples: Sequence[TrainExample], *, group_size: int, teacher_scores: bool = False
) -> None:
    """Check, before any training, that every example can make a group of ``group_size``.

    Raises:
        ValueError: No examples, an example without negatives while ``group_size`` > 1, or
            without teacher scores while ``teacher_scores`` is on; named by its ``source``.
    """
    if not examples:
        msg = "no training examples"
        raise ValueError(msg)
    for ex in examples:
        where = ex.source or f"query {ex.query[:60]!r}"
        if group_size > 1 and not ex.neg:
            msg = (
                f"{where}: no negatives but group_size={group_size}; mine hard negatives first "
                "(m3rag mine) or use group_size=1"
            )
            raise ValueError(msg)
        if teacher_scores and (ex.pos_scores is None or (group_size > 1 and ex.neg_scores is None)):
            msg = f"{where}: no pos_scores/neg_scores, which teacher-score distillation needs"
            raise ValueError(msg)


@dataclass(frozen=True)
class Group:
    """A query and its ``group_size`` passages, positive first, with optional teacher scores."""

    query: str
    passages: tuple[str, ...]
    scores: tuple[float, ...] | None


def sample_group(
    example: TrainExample,
    group_size: int,
    rng: np.random.Generator,
    *,
    teacher_scores: bool = False,
    query_instruction: str | None = None,
) -> Group:
    """Draw a positive and ``group_size - 1`` negatives from ``example``.

    The query is ``prompt + query`` when the line has a prompt, else ``query_instruction +
    query`` when one is given (FlagEmbedding's ``"{}{}"`` format, the prompt overriding).

    Raises:
        ValueError: The example has no negative but ``group_size`` > 1, or teacher scores are
            asked for and missing.
    """
    i = int(rng.integers(len(example.pos)))
    passages = [example.pos[i]]
    picked: Sequence[int] = []
    if group_size > 1:
        n = len(example.neg)
        if n == 0:
            msg = (
                f"query {example.query[:60]!r} has no negatives but group_size={group_size}; "
                "mine hard negatives first (m3rag mine) or use group_size=1"
            )
            raise ValueError(msg)
        pool = list(range(n)) * math.ceil((group_size - 1) / n)
        picked = [pool[j] for j in rng.choice(len(pool), size=group_size - 1, replace=False)]
        passages += [example.neg[j] for j in picked]
    scores = None
    if teacher_scores:
        if example.pos_scores is None or (group_size > 1 and example.neg_scores is None):
            msg = f"query {example.query[:60]!r} lacks pos_scores/neg_scores for distillation"
            raise ValueError(msg)
        neg_scores = example.neg_scores or ()
        scores = (example.pos_scores[i], *(neg_scores[j] for j in picked))
    prefix = example.prompt if example.prompt is not None else query_instruction
    query = f"{prefix}{example.query}" if prefix else example.query
    return Group(query, tuple(passages), scores)
