"""Resolve a model id or a local folder to a folder on disk, safely.

Shared by the encoder and the reranker. A local folder is used as is. Anything else is treated as
a Hugging Face Hub id and fetched with `huggingface_hub.snapshot_download`, which uses the
hub cache, honours ``HF_HUB_OFFLINE`` and reads any token from the environment (``HF_TOKEN``); the
token is never logged. Only the files a model needs are fetched, safetensors preferred over
``pytorch_model.bin`` (the ``.bin`` is only fetched when the repository has no safetensors).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from m3rag.errors import ModelLoadError

__all__ = ["resolve_model_dir"]

logger = logging.getLogger(__name__)

# Everything a transformers checkpoint + tokenizer + the M3 heads + sentence-transformers metadata
# needs, and nothing else (no onnx/, no tf/flax weights, no duplicate .bin when safetensors exist).
_ALLOW = [
    "*.json",
    "*.safetensors",
    "*.pt",
    "*.model",
    "*.txt",
    "1_Pooling/*",
    "2_Normalize/*",
]


def _hint(name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    where = "HF_HUB_OFFLINE is set, so only the local hub cache was searched; " if offline else ""
    return (
        f"{where}download it on a machine with network access "
        f"(`huggingface-cli download {name}`) and copy the hub cache, or pass the path of a local "
        "folder holding the checkpoint as model_name_or_path"
    )


def resolve_model_dir(
    model_name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Return a local folder holding the checkpoint ``model_name_or_path``.

    Args:
        model_name_or_path: A local folder, or a hub id such as ``"BAAI/bge-m3"``.
        revision: Hub revision (branch, tag or commit) for hub ids.
        cache_dir: Hub cache folder; defaults to the hub's own (``HF_HUB_CACHE``).

    Returns:
        The folder.

    Raises:
        TypeError: If ``model_name_or_path`` is not a string or path.
        ModelLoadError: If it is neither an existing folder nor a hub id that can be fetched.
    """
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        msg = (
            "model_name_or_path must be a hub id or a folder path, got "
            f"{type(model_name_or_path).__name__}"
        )
        raise TypeError(msg)
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return path
    name = os.fspath(model_name_or_path)
    if path.exists():
        msg = f"{name!r} is a file; pass the folder that holds the checkpoint"
        raise ModelLoadError(msg)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        msg = f"model folder {name!r} does not exist; pass an existing folder or a hub id"
        raise ModelLoadError(msg)

    from huggingface_hub import snapshot_download

    def fetch(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id=name,
                revision=revision,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                allow_patterns=patterns,
            )
        )

    try:
        folder = fetch(_ALLOW)
        if not any(folder.glob("*.safetensors")):
            # Older repositories (including BAAI/bge-m3's main revision) ship only
            # pytorch_model.bin; transformers loads it with weights_only=True.
            folder = fetch([*_ALLOW, "pytorch_model.bin"])
    except Exception as exc:  # hub errors have many types (offline, 404, auth, network)
        msg = f"could not load model {name!r} ({type(exc).__name__}: {exc}); {_hint(name)}"
        raise ModelLoadError(msg) from exc
    logger.debug("resolved %s to %s", name, folder)
    return folder
