"""What kind of checkpoint a folder holds, read from its files (never guessed from its name).

* **M3**: both ``colbert_linear.pt`` and ``sparse_linear.pt`` present -> three heads, CLS pooling.
* **Dense-only**: neither head file, but a sentence-transformers ``modules.json`` with a Pooling
  module -> dense vectors with the pooling its ``1_Pooling/config.json`` declares (CLS or mean).
* Anything else is an error: one head file without the other, or no head files and no declared
  pooling. FlagEmbedding silently uses random heads there; m3rag refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from m3rag.errors import MissingHeadError, ModelLoadError

__all__ = ["CheckpointInfo", "inspect_checkpoint"]

Pooling = Literal["cls", "mean"]

COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    """The facts about a checkpoint folder that loading depends on."""

    folder: Path
    kind: Literal["m3", "dense"]
    pooling: Pooling
    model_type: str
    hidden_size: int
    max_length: int
    """The longest input, specials included, that the model supports."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ModelLoadError(msg) from exc


def _st_pooling(folder: Path) -> tuple[Pooling | None, int | None]:
    """Pooling and max_seq_length declared by sentence-transformers metadata, if any."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, None
    pooling: Pooling | None = None
    max_seq: int | None = None
    for module in _read_json(modules_file):
        kind = str(module.get("type", ""))
        path = folder / str(module.get("path", ""))
        if kind.endswith(".Pooling"):
            conf = _read_json(path / "config.json")
            if conf.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif conf.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            else:
                modes = sorted(k for k, v in conf.items() if k.startswith("pooling_mode") and v)
                msg = f"{folder} declares pooling {modes}; m3rag supports CLS and mean pooling"
                raise ModelLoadError(msg)
        elif kind.endswith(".Transformer"):
            st_conf = path / "sentence_bert_config.json"
            if st_conf.is_file():
                value = _read_json(st_conf).get("max_seq_length")
                max_seq = int(value) if value else None
    return pooling, max_seq


def inspect_checkpoint(folder: Path) -> CheckpointInfo:
    """Classify ``folder`` and read its limits.

    Raises:
        ModelLoadError: If the folder has no ``config.json`` or declares unsupported pooling.
        MissingHeadError: If exactly one M3 head file is present, or neither is and no pooling is
            declared.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        msg = f"{folder} has no config.json; it is not a transformers checkpoint"
        raise ModelLoadError(msg)
    config = _read_json(config_file)
    model_type = str(config.get("model_type", ""))
    hidden = int(config.get("hidden_size", 0))
    positions = int(config.get("max_position_embeddings", 512))
    # RoBERTa-family position ids start at pad_token_id + 1 (=2), so two positions are unusable.
    usable = positions - 2 if model_type in {"xlm-roberta", "roberta", "camembert"} else positions

    has_colbert = (folder / COLBERT_FILE).is_file()
    has_sparse = (folder / SPARSE_FILE).is_file()
    pooling, max_seq = _st_pooling(folder)
    limit = min(usable, max_seq) if max_seq else usable

    if has_colbert and has_sparse:
        return CheckpointInfo(folder, "m3", "cls", model_type, hidden, usable)
    if has_colbert or has_sparse:
        missing = SPARSE_FILE if has_colbert else COLBERT_FILE
        msg = (
            f"{folder} has {COLBERT_FILE if has_colbert else SPARSE_FILE} but not {missing}; "
            "an M3 checkpoint needs both head files (FlagEmbedding would silently use a random "
            "head here). Copy the missing file from the original checkpoint."
        )
        raise MissingHeadError(msg)
    if pooling is None:
        msg = (
            f"{folder} has neither {COLBERT_FILE} nor {SPARSE_FILE}, and no sentence-transformers "
            "modules.json declaring a pooling: it is neither a BGE-M3 checkpoint nor a dense "
            "embedding model m3rag can load"
        )
        raise MissingHeadError(msg)
    return CheckpointInfo(folder, "dense", pooling, model_type, hidden, limit)
