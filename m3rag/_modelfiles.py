"""Checkpoint-folder validation shared by the encoder and the reranker (torch imported lazily).

transformers, tokenizers, safetensors and torch each raise their own exception types (or a bare
``AttributeError``) when a file is damaged, and rarely name the file. Every file a load depends on
is therefore checked here first, in the order the load reads them, and each failure becomes one
[`ModelLoadError`][m3rag.errors.ModelLoadError] that names the file and says what to do:

* ``config.json``: a JSON object whose ``model_type``, ``hidden_size``, ``vocab_size`` (and, when
  present, ``max_position_embeddings`` and ``pad_token_id``) have the right types, whose other
  fields transformers accepts, whose ``model_type`` agrees with its ``architectures``, and with a
  pad id where the model counts positions from it (the RoBERTa family);
* the tokenizer's JSON files: JSON objects; at least one tokenizer file present; the loaded
  tokenizer fits the model (no id beyond the embedding matrix, the special tokens the model
  needs, the pad id the model was trained with);
* the weights: a ``model.safetensors`` (or its shards) whose header parses and covers the file,
  with an embedding matrix of the configured shape; ``pytorch_model.bin`` errors are wrapped when
  transformers reads it; no tensor missing, none left over (a pooler or pretraining head aside);
* ``.pt`` head files: read with ``torch.load(weights_only=True)`` (never unpickling code) and
  checked to be a ``Linear`` state dict of the right shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3rag.errors import MissingHeadError, ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ModelConfig",
    "check_weights",
    "load_linear_head",
    "load_pretrained",
    "load_tokenizer",
    "read_json_object",
    "read_model_config",
]

# Files a tokenizer can be built from; at least one must be present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "vocab.txt",
    "vocab.json",
)
# Tokenizer metadata that must be a JSON object when present (transformers calls .get/.items).
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_ROBERTA = frozenset({"xlm-roberta", "roberta", "camembert"})


def read_json_object(path: Path, *, required: bool = True) -> dict[str, Any]:
    """Parse ``path`` as a JSON object.

    Raises:
        ModelLoadError: Naming ``path``: missing (when ``required``), unreadable, not UTF-8, not
            JSON, or JSON that is not an object (a list, a number...).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if not required:
            return {}
        msg = f"{path} is missing; copy it from the original checkpoint"
        raise ModelLoadError(msg) from exc
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read {path} ({exc}); the file is damaged, copy it again"
        raise ModelLoadError(msg) from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        msg = f"{path} is not valid JSON ({exc}); the file is damaged, copy it again"
        raise ModelLoadError(msg) from exc
    if not isinstance(value, dict):
        msg = (
            f"{path} holds a JSON {type(value).__name__}, but a JSON object is expected; "
            "the file is damaged or not from this checkpoint, copy it again"
        )
        raise ModelLoadError(msg)
    return value


def _int_field(path: Path, config: dict[str, Any], name: str, default: int | None) -> int:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        got = "missing" if name not in config else repr(value)
        msg = f"{path}: {name} must be a positive int, got {got}; the config is damaged"
        raise ModelLoadError(msg)
    return value


@dataclass(frozen=True)
class ModelConfig:
    """The fields of ``config.json`` that loading depends on, validated.

    Attributes:
        path: The ``config.json`` file.
        model_type: e.g. ``"xlm-roberta"`` or ``"bert"``.
        hidden_size: Width of the hidden states.
        vocab_size: Rows of the token embedding matrix.
        max_position_embeddings: Position embeddings.
        pad_token_id: The pad id the model was trained with, if the config declares one.
    """

    path: Path
    model_type: str
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    pad_token_id: int | None

    @property
    def usable_positions(self) -> int:
        """The longest input, specials included.

        RoBERTa-family position ids start at ``pad_token_id + 1`` (=2), so two are unusable.
        """
        offset = 2 if self.model_type in _ROBERTA else 0
        return self.max_position_embeddings - offset


def read_model_config(folder: Path) -> ModelConfig:
    """Read and validate ``folder / "config.json"``.

    Raises:
        ModelLoadError: Naming ``config.json``: missing, damaged, not an object, a field of the
            wrong type, a ``model_type`` that contradicts ``architectures``, or a null
            ``pad_token_id`` for a model that counts positions from it.
    """
    path = folder / "config.json"
    if not path.is_file():
        msg = f"{folder} has no config.json; it is not a transformers checkpoint"
        raise ModelLoadError(msg)
    config = read_json_object(path)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        msg = f"{path}: model_type must be a non-empty string, got {model_type!r}"
        raise ModelLoadError(msg)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING and "auto_map" not in config:
        msg = (
            f"{path}: model_type {model_type!r} is not a model type transformers knows "
            "(e.g. 'xlm-roberta', 'bert'); the config is damaged, or needs a newer transformers"
        )
        raise ModelLoadError(msg)
    hidden = _int_field(path, config, "hidden_size", None)
    vocab = _int_field(path, config, "vocab_size", None)
    default_positions = 514 if model_type in _ROBERTA else 512
    positions = _int_field(path, config, "max_position_embeddings", default_positions)
    if model_type in _ROBERTA and positions < 3:
        msg = f"{path}: max_position_embeddings={positions} leaves no usable position"
        raise ModelLoadError(msg)
    pad = config.get("pad_token_id")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        msg = f"{path}: pad_token_id must be a non-negative int or null, got {pad!r}"
        raise ModelLoadError(msg)
    if pad is None and "pad_token_id" in config and model_type in _ROBERTA:
        # transformers takes the key as given (a missing key defaults to 1), and the RoBERTa
        # family counts position ids from the pad id: every forward pass would fail on None
        msg = (
            f"{path}: pad_token_id is null, but a {model_type} model counts its positions from "
            "the pad id; set it to the tokenizer's pad id (1 for BGE-M3 and the bge-rerankers)"
        )
        raise ModelLoadError(msg)
    _check_architectures(path, config, model_type)
    _check_config_fields(path, config, model_type)
    return ModelConfig(path, model_type, hidden, vocab, positions, pad)


def _check_architectures(path: Path, config: dict[str, Any], model_type: str) -> None:
    """Refuse a ``model_type`` that contradicts the classes named in ``architectures``.

    transformers builds the model from ``model_type`` alone, and a BERT built on XLM-R weights
    takes every tensor (the names agree) yet computes other numbers.
    """
    from transformers.models.auto import modeling_auto

    names = config.get("architectures")
    if not isinstance(names, list):
        return
    types: dict[str, set[str]] = {}
    for attr in dir(modeling_auto):
        if attr.endswith("_MAPPING_NAMES"):
            for kind, classes in getattr(modeling_auto, attr).items():
                for cls in classes if isinstance(classes, (list, tuple)) else (classes,):
                    types.setdefault(cls, set()).add(kind)
    for name in names:
        known = types.get(name) if isinstance(name, str) else None
        if known and model_type not in known:
            msg = (
                f"{path}: model_type {model_type!r} contradicts architectures {names} "
                f"({name} is a {sorted(known)[0]!r} model); the config is damaged or from another "
                "model, copy it again"
            )
            raise ModelLoadError(msg)


def _check_config_fields(path: Path, config: dict[str, Any], model_type: str) -> None:
    """Let transformers validate every field now, so that a bad one names ``config.json``.

    Otherwise the first to read it is the tokenizer's load, whose error names the tokenizer.
    A config with custom code (``auto_map``) is read by that code, later.
    """
    if "auto_map" in config:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        CONFIG_MAPPING[model_type].from_dict(config)
    except MemoryError:
        raise
    except Exception as exc:  # huggingface_hub's strict dataclass errors, TypeError, ValueError
        detail = " ".join(str(exc).split())
        msg = (
            f"{path}: transformers cannot read it ({type(exc).__name__}: {detail}); the config "
            "is damaged, copy it again"
        )
        raise ModelLoadError(msg) from exc


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would read, safetensors first (its own order)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            msg = f"{index} has no weight_map object; the file is damaged, copy it again"
            raise ModelLoadError(msg)
        return [folder / str(name) for name in sorted(set(weight_map.values()))]
    for name in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return [folder / name]
    msg = (
        f"{folder} has no weights file (model.safetensors, its shards, or pytorch_model.bin); "
        "copy the weights from the original checkpoint"
    )
    raise ModelLoadError(msg)


def check_weights(folder: Path, config: ModelConfig) -> list[Path]:
    """Check the weight files' headers and the embedding shape; return the files.

    A safetensors header is parsed without reading the tensors; the library verifies that the
    tensors it declares cover the file exactly, which catches truncation at any offset.

    Raises:
        ModelLoadError: Naming the file: missing, unparsable, or an embedding matrix whose shape
            disagrees with ``config.json``.
    """
    files = _weight_files(folder)
    for path in files:
        if path.suffix != ".safetensors":
            continue  # .bin files are read (weights_only) and their errors wrapped at load
        if not path.is_file():
            msg = f"{path} is missing (listed in the shard index); copy it again"
            raise ModelLoadError(msg)
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118 - not a dict
        except Exception as exc:  # SafetensorError, OSError, ...: a damaged header
            msg = (
                f"cannot read {path} ({type(exc).__name__}: {exc}); the file is damaged or "
                "truncated, copy it again"
            )
            raise ModelLoadError(msg) from exc
        for key, shape in shapes.items():
            if key.endswith("word_embeddings.weight"):
                want = [config.vocab_size, config.hidden_size]
                if list(shape) != want:
                    msg = (
                        f"{path}: {key} has shape {list(shape)}, but {config.path.name} declares "
                        f"[vocab_size, hidden_size] = {want}; the weights and the config come "
                        "from different models"
                    )
                    raise ModelLoadError(msg)
    return files


def load_pretrained(loader: Any, folder: Path, weights: list[Path], **kwargs: Any) -> Any:
    """``loader.from_pretrained(folder, **kwargs)``, any failure a [`ModelLoadError`][].

    The config and the safetensors headers were checked before, so what remains is the weights'
    contents (``.bin`` files, tensors of the wrong shape, tensors missing or left over); the
    message names the weight files. transformers fills missing tensors with random values and
    drops left-over ones, and only logs either; a checkpoint missing any (the unused pooler
    aside) or holding tensors the model has no place for (a pooler or pretraining head aside) is
    refused instead.
    """
    names = ", ".join(p.name for p in weights)
    try:
        model, info = loader.from_pretrained(
            folder,
            use_safetensors=weights[0].suffix == ".safetensors" or None,
            output_loading_info=True,
            **kwargs,
        )
    except MemoryError:
        raise
    except Exception as exc:  # transformers and torch raise many types here
        msg = f"cannot load the weights {names} in {folder} ({type(exc).__name__}: {exc})"
        raise ModelLoadError(msg) from exc
    # the pooler is dropped by the encoder (see M3Encoder._load), so its absence is harmless
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        msg = (
            f"the weights {names} in {folder} lack {len(missing)} tensor(s) the model needs "
            f"(e.g. {missing[:3]}); transformers would fill them with random values. The file "
            "is damaged or from another model; copy it again"
        )
        raise ModelLoadError(msg)
    # transformers drops tensors the model has no place for and only logs it: a config.json
    # with fewer layers than the weights would load and compute other numbers
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not _unused_extra(k))
    if unexpected:
        msg = (
            f"the weights {names} in {folder} hold {len(unexpected)} tensor(s) the model built "
            f"from config.json has no place for (e.g. {unexpected[:3]}): config.json and the "
            "weights come from different models (a wrong num_hidden_layers or model_type?); "
            "use the config.json of this checkpoint"
        )
        raise ModelLoadError(msg)
    return model


def _unused_extra(key: str) -> bool:
    """Whether a checkpoint tensor the model does not take is one it may carry unused.

    A pooler (the reranker's classifier has none; BGE-M3's is never used) and pretraining heads
    (masked-LM ``lm_head``, BERT's ``cls.predictions`` / ``cls.seq_relationship``), which
    transformers leaves out of a base model on purpose.
    """
    parts = key.split(".")
    return "pooler" in parts or "lm_head" in parts or parts[0] == "cls"


def load_tokenizer(
    folder: Path,
    config: ModelConfig,
    *,
    needs: tuple[str, ...],
    trust_remote_code: bool,
) -> Any:
    """Load the tokenizer and check that it fits the model.

    Args:
        folder: The checkpoint folder.
        config: Its validated config.
        needs: Special tokens the caller builds inputs with, e.g. ``("cls", "sep", "pad")``.
        trust_remote_code: Passed to ``AutoTokenizer``.

    Raises:
        ModelLoadError: Naming the tokenizer file: none present, a damaged file, more tokens than
            the embedding matrix has rows, a missing special token, or a pad id that differs from
            the model's.
    """
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        msg = (
            f"{folder} has no tokenizer file (one of {', '.join(TOKENIZER_FILES)}); copy the "
            "tokenizer files from the original checkpoint"
        )
        raise ModelLoadError(msg)
    for name in TOKENIZER_JSON:
        read_json_object(folder / name, required=False)
    main = folder / present[0]
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except MemoryError:
        raise
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        files = [n for n in (*TOKENIZER_FILES, *TOKENIZER_JSON) if (folder / n).is_file()]
        msg = (
            f"cannot load the tokenizer from {', '.join(dict.fromkeys(files))} in {folder} "
            f"({type(exc).__name__}: {exc}); a file is damaged or not a tokenizer of this model, "
            "copy the tokenizer files again"
        )
        raise ModelLoadError(msg) from exc
    size = len(tokenizer)
    if size > config.vocab_size:
        msg = (
            f"the tokenizer {main} has {size} tokens, but the model's embedding matrix has "
            f"{config.vocab_size} rows ({config.path.name} vocab_size): it belongs to another "
            "model; use the tokenizer files of this checkpoint"
        )
        raise ModelLoadError(msg)
    missing = [f"{name}_token" for name in needs if getattr(tokenizer, f"{name}_token_id") is None]
    if missing:
        msg = (
            f"the tokenizer {main} has no {', '.join(missing)}, which the model needs to build "
            "its inputs; use the tokenizer files of this checkpoint"
        )
        raise ModelLoadError(msg)
    pad = tokenizer.pad_token_id
    if config.pad_token_id is not None and pad is not None and pad != config.pad_token_id:
        msg = (
            f"the tokenizer {main} pads with id {pad}, but {config.path.name} declares "
            f"pad_token_id={config.pad_token_id}: the tokenizer belongs to another model; use "
            "the tokenizer files of this checkpoint"
        )
        raise ModelLoadError(msg)
    return tokenizer


def load_linear_head(
    path: Path, hidden: int, out_features: int | None, dtype: torch.dtype
) -> torch.nn.Linear:
    """A ``Linear(hidden, out)`` from a ``.pt`` state dict, read with ``weights_only=True``.

    Args:
        path: The head file.
        hidden: Input width (the model's hidden size).
        out_features: Output width, or ``None`` to take it from the stored weight.
        dtype: Compute dtype; the stored (fp16) values are cast to it, as the reference does.

    Raises:
        MissingHeadError: Naming ``path``: unreadable, code in the pickle, not a state dict, or
            a weight of the wrong shape (FlagEmbedding would fall back to a random head).
    """
    import torch

    try:
        # weights_only: the .pt head files are plain state dicts; never unpickle code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or hostile files raise many types
        msg = f"cannot read head file {path} ({type(exc).__name__}: {exc}); copy it again"
        raise MissingHeadError(msg) from exc
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != hidden:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        msg = f"{path} is not a Linear({hidden}, ...) state dict (weight: {shape}); copy it again"
        raise MissingHeadError(msg)
    if not weight.is_floating_point():
        msg = f"{path} holds a {weight.dtype} weight; a head is floating point. Copy it again"
        raise MissingHeadError(msg)
    out = int(weight.shape[0]) if out_features is None else out_features
    layer = torch.nn.Linear(hidden, out, dtype=dtype)
    try:
        layer.load_state_dict(state)
    except Exception as exc:  # RuntimeError on shapes/keys, TypeError on non-tensor values
        msg = f"{path} does not fit Linear({hidden}, {out}) ({exc}); copy it again"
        raise MissingHeadError(msg) from exc
    return layer
