"""Training data: BGE-M3's JSONL format and BEIR folders, and the groups a batch is made of.

A JSONL line (reference spec §9.6) is ``{"query": str, "pos": [str, ...], "neg": [str, ...]}``
with optional ``pos_scores`` / ``neg_scores`` (teacher scores, parallel to ``pos`` / ``neg``) and
``prompt`` (a per-line query instruction, prepended to the query). A BEIR folder with
``qrels/train.tsv`` gives one example per judged query, its positives from the qrels (relevance
> 0) and no negatives: mine some with [`mine_hard_negatives`][m3rag.train.mine_hard_negatives].

Sampling follows FlagEmbedding's ``AbsEmbedderTrainDataset``: one random positive, then
``group_size - 1`` negatives drawn without replacement (from the list repeated when it is too
short); teacher scores follow the same indices.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Group",
    "TrainExample",
    "load_training_data",
    "read_jsonl",
    "sample_group",
    "write_jsonl",
]


@dataclass(frozen=True)
class TrainExample:
    """One training query with its positives, negatives and optional teacher scores."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    pos_scores: tuple[float, ...] | None = None
    neg_scores: tuple[float, ...] | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

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
    return tuple(float(x) for x in value)


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
    )


def read_jsonl(path: str | os.PathLike[str]) -> list[TrainExample]:
    """Examples from a JSONL file, or from every ``*.jsonl`` file of a folder (sorted).

    Raises:
        FileNotFoundError: Nothing to read.
        ValueError: A malformed line (file and line named).
    """
    root = Path(path)
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files or not all(f.is_file() for f in files):
        msg = f"no training data at {root}: give a .jsonl file or a folder of them"
        raise FileNotFoundError(msg)
    out: list[TrainExample] = []
    for file in files:
        with file.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{file}:{n}"
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    msg = f"{where}: not JSON ({exc})"
                    raise ValueError(msg) from exc
                out.append(_example(obj, where))
    return out


def write_jsonl(examples: Iterable[TrainExample], path: str | os.PathLike[str]) -> int:
    """Write examples in the training format; returns how many lines were written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def beir_examples(folder: str | os.PathLike[str], *, split: str = "train") -> list[TrainExample]:
    """One example per query judged in ``qrels/<split>.tsv``: its positives, no negatives.

    The document ids of the positives are kept in ``extra["pos_ids"]`` (mining skips them).
    """
    from m3rag.eval import load_beir

    data = load_beir(Path(folder), split=split)
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
            )
        )
    return out


def load_training_data(path: str | os.PathLike[str], *, split: str = "train") -> list[TrainExample]:
    """JSONL (a file or a folder of files) or a BEIR folder (one with ``qrels/<split>.tsv``).

    Raises:
        FileNotFoundError: Neither.
        ValueError: Malformed data, or no usable example.
    """
    root = Path(path)
    if root.is_dir() and (root / "qrels" / f"{split}.tsv").is_file():
        examples = beir_examples(root, split=split)
    else:
        examples = read_jsonl(root)
    if not examples:
        msg = f"{root} holds no training example (every example needs a query and a positive)"
        raise ValueError(msg)
    return examples


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
