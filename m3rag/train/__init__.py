"""Fine-tuning: BGE-M3's unified training with self-knowledge distillation, on your own data.

Install with ``pip install "m3rag[train]"``. The pieces, by concern:

* `m3rag.train.data` -- the BGE-M3 JSONL format and BEIR folders, group sampling;
* `m3rag.train.mine` -- hard negatives mined from a `Collection`;
* `m3rag.train.loss` -- the unified loss (reference spec §9), checked against FlagEmbedding;
* `m3rag.train.model` -- backbone + heads, saved in the BGE-M3 layout;
* `m3rag.train.trainer` -- the loop: schedules, mixed precision, evaluation, checkpoints.
* `m3rag.train.state` -- the run folder: its manifest, atomic saves, the pickle-free trainer
  state (`CheckpointError`, `TrainingDivergedError`).

Only the data and loss configuration are imported eagerly; the torch-bound parts load on first
use, so ``import m3rag.train`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from m3rag.train.data import (
    Group,
    TrainExample,
    load_training_data,
    read_jsonl,
    sample_group,
    write_jsonl,
)
from m3rag.train.loss import LOSS_MODES, LossConfig

if TYPE_CHECKING:
    from m3rag.train.mine import mine_hard_negatives
    from m3rag.train.model import M3TrainModel
    from m3rag.train.trainer import TrainConfig, TrainResult, finetune, latest_checkpoint

__all__ = [
    "LOSS_MODES",
    "Group",
    "LossConfig",
    "M3TrainModel",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "finetune",
    "latest_checkpoint",
    "load_training_data",
    "mine_hard_negatives",
    "read_jsonl",
    "sample_group",
    "write_jsonl",
]

_LAZY = {
    "TrainConfig": "m3rag.train.trainer",
    "TrainResult": "m3rag.train.trainer",
    "finetune": "m3rag.train.trainer",
    "latest_checkpoint": "m3rag.train.trainer",
    "mine_hard_negatives": "m3rag.train.mine",
    "M3TrainModel": "m3rag.train.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'm3rag.train' has no attribute {name!r}"
    raise AttributeError(msg)
