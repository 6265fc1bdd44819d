"""What kind of checkpoint a folder holds, read from its files (never guessed from its name).

* **M3**: both ``colbert_linear.pt`` and ``sparse_linear.pt`` present -> three heads, CLS pooling
  unless a sentence-transformers ``modules.json`` declares another (a fine-tuned MiniLM pools by
  mean).
* **Dense-only**: neither head file, but a sentence-transformers ``modules.json`` with a Pooling
  module -> dense vectors with the pooling its ``1_Pooling/config.json`` declares (CLS or mean).
* Anything else is an error: one head file without the other, or no head files and no declared
  pooling. FlagEmbedding silently uses random heads there; m3rag refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from m3rag._modelfiles import ModelConfig, read_json_object, read_model_config
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
    config: ModelConfig
    """The validated ``config.json``."""


def _st_pooling(folder: Path) -> tuple[Pooling | None, int | None]:
    """Pooling and max_seq_length declared by sentence-transformers metadata, if any."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read {modules_file} ({exc}); the file is damaged, copy it again"
        raise ModelLoadError(msg) from exc
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        msg = f"{modules_file} must be a JSON list of module objects; copy it again"
        raise ModelLoadError(msg)
    pooling: Pooling | None = None
    max_seq: int | None = None
    for module in modules:
        kind = str(module.get("type", ""))
        path = folder / str(module.get("path", ""))
        if kind.endswith(".Pooling"):
            conf = read_json_object(path / "config.json")
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
                value = read_json_object(st_conf).get("max_seq_length")
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1
                ):
                    msg = f"{st_conf}: max_seq_length must be a positive int, got {value!r}"
                    raise ModelLoadError(msg)
                max_seq = value
    return pooling, max_seq


def inspect_checkpoint(folder: Path) -> CheckpointInfo:
    """Classify ``folder`` and read its limits.

    Raises:
        ModelLoadError: If ``config.json`` or the sentence-transformers metadata is missing,
            damaged or of the wrong shape (the message names the file), or the pooling is not
            supported.
        MissingHeadError: If exactly one M3 head file is present, or neither is and no pooling is
            declared.
    """
    config = read_model_config(folder)
    model_type, hidden, usable = config.model_type, config.hidden_size, config.usable_positions

    has_colbert = (folder / COLBERT_FILE).is_file()
    has_sparse = (folder / SPARSE_FILE).is_file()
    pooling, max_seq = _st_pooling(folder)
    limit = min(usable, max_seq) if max_seq else usable

    if has_colbert and has_sparse:
        # BGE-M3 pools by CLS; a three-head model fine-tuned from a mean-pooling
        # sentence-transformers model (m3rag.train) keeps the pooling its metadata declares.
        return CheckpointInfo(folder, "m3", pooling or "cls", model_type, hidden, limit, config)
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
    return CheckpointInfo(folder, "dense", pooling, model_type, hidden, limit, config)
