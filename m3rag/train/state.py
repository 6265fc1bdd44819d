"""The run folder of a fine-tuning run: its manifest, atomic saves, and the trainer state.

A run writes into one ``output`` folder::

    training_args.json        the manifest: format version, run id, base model, `TrainConfig`
    checkpoint-<step>/        a resumable checkpoint: the model (BGE-M3 layout) and
        trainer_state.json        counters, data position, optimiser param groups, scheduler
                                  and gradient-scaler state (JSON)
        trainer_state.safetensors optimiser moments and step tensors, RNG states (tensors)
        trainer_log.json          the history and evaluations up to that step
    model.safetensors, ...    the fine-tuned (or best) model, once the run has one
    trainer_log.json          the whole history, once the run ends

Nothing is pickled. Every folder appears whole or not at all: a checkpoint is written into a
hidden ``.m3rag-tmp-*`` sibling, flushed to disk, and renamed into place; the model in ``output``
is published the same way, ``config.json`` (without which nothing loads it) removed first and
moved in last. A folder that is not empty and not an m3rag run is never written into.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3rag.errors import CheckpointError, TrainingDivergedError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARGS_FILE",
    "CheckpointError",
    "RunInfo",
    "TrainingDivergedError",
    "check_output",
    "read_run",
]

ARGS_FILE = "training_args.json"
LOG_FILE = "trainer_log.json"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE = "trainer_state.pt"  # the pickled state of earlier versions: refused, never loaded
RUN_FORMAT = "m3rag.finetune"
STATE_FORMAT = "m3rag.trainer_state"
FORMAT_VERSION = 1
TMP_PREFIX = ".m3rag-tmp-"


def _checkpoint_step(path: Path) -> int | None:
    prefix, _, step = path.name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() and path.is_dir() else None


def checkpoints(output: Path) -> list[tuple[int, Path]]:
    """The ``checkpoint-<step>`` folders of ``output``, oldest first (temporary ones never)."""
    found = [(s, p) for p in output.glob("checkpoint-*") if (s := _checkpoint_step(p)) is not None]
    return sorted(found)


# ------------------------------------------------------------------ the run manifest


@dataclass(frozen=True)
class RunInfo:
    """What ``training_args.json`` records of a run."""

    run_id: str
    model: str
    config: dict[str, Any]


def read_run(output: str | os.PathLike[str]) -> RunInfo | None:
    """The run recorded in ``output``; ``None`` when the folder holds no m3rag run.

    Raises:
        CheckpointError: A ``training_args.json`` of m3rag that cannot be read.
    """
    path = Path(output) / ARGS_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{path} cannot be read ({exc}); start over with --overwrite or a new folder"
        raise CheckpointError(msg) from exc
    if not isinstance(obj, dict) or obj.get("format") != RUN_FORMAT:
        return None  # somebody else's training_args.json
    if obj.get("version") != FORMAT_VERSION or not all(
        isinstance(obj.get(k), t) for k, t in (("run_id", str), ("model", str), ("config", dict))
    ):
        msg = (
            f"{path} is of another m3rag version (format version {obj.get('version')!r}, this "
            f"one reads {FORMAT_VERSION}); start over with --overwrite or a new folder"
        )
        raise CheckpointError(msg)
    return RunInfo(obj["run_id"], obj["model"], obj["config"])


def write_run(output: Path, info: RunInfo) -> None:
    obj = {
        "format": RUN_FORMAT,
        "version": FORMAT_VERSION,
        "run_id": info.run_id,
        "model": info.model,
        "config": info.config,
    }
    write_json(output / ARGS_FILE, obj)


def new_run_id() -> str:
    return uuid.uuid4().hex


def model_reference(model: str | os.PathLike[str]) -> str:
    """How a run records its base model: an absolute path when local, else the hub id."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def check_output(
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> RunInfo | None:
    """Check that a run may write into ``output``; returns the run it holds, if any.

    The rule: ``output`` is a new or empty folder; or it holds an m3rag run and this call
    continues it (``resume``) or replaces it (``overwrite``). The base model's own folder, a
    file, and a non-empty folder that is not an m3rag run are always refused.

    Raises:
        ValueError: The rule is broken; the message says what to do.
        CheckpointError: The run's ``training_args.json`` cannot be read.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        msg = f"--output {out} is a file; give a folder"
        raise ValueError(msg)
    if model is not None:
        base = Path(model).expanduser()
        if base.exists() and out.exists() and base.resolve() == out.resolve():
            msg = (
                f"--output {out} is the base model's folder; the fine-tuned model would "
                "overwrite it: give a new folder"
            )
            raise ValueError(msg)
    if not out.exists() or not any(out.iterdir()):
        if resume:
            msg = f"--resume: {out} holds no run to continue (no {ARGS_FILE}); drop --resume"
            raise ValueError(msg)
        return None
    run = read_run(out)
    if run is None:
        msg = (
            f"--output {out} is not empty and holds no m3rag fine-tuning run; m3rag does not "
            "write into it: give a new or empty folder"
        )
        raise ValueError(msg)
    if not resume and not overwrite:
        msg = (
            f"--output {out} holds a previous fine-tuning run; continue it with --resume, "
            "replace it with --overwrite (its model and checkpoints are deleted), or give a "
            "new folder"
        )
        raise ValueError(msg)
    return run


def clear_run(output: Path) -> None:
    """Delete a previous m3rag run's folder contents (``--overwrite``; checked by the caller)."""
    args = output / ARGS_FILE
    marker = output / "config.json"
    marker.unlink(missing_ok=True)  # first: a half-deleted folder must not load as a model
    for entry in sorted(output.iterdir(), key=lambda p: p == args):  # the manifest last
        if entry.is_dir() and not entry.is_symlink():
            remove_dir(entry)
        else:
            entry.unlink()


# ------------------------------------------------------------------ atomic files and folders


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folders themselves to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give (``mkstemp`` makes files private)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def write_text(path: Path, lines: Iterable[str]) -> int:
    """Write ``lines`` to ``path`` whole or not at all; returns how many were written.

    Into a temporary file next to ``path`` (its mode that of ``path``, or the umask's), flushed
    to disk and renamed over ``path`` once complete: a failure keeps what ``path`` held before.
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=path.parent)
    n = 0
    try:
        os.chmod(tmp, new_file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line)
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def write_json(path: Path, obj: Any) -> None:
    """Write JSON whole or not at all (`write_text`)."""
    write_text(path, [json.dumps(obj, indent=2, allow_nan=False) + "\n"])


def temp_dir(parent: Path, what: str) -> Path:
    """A hidden folder in ``parent``, with the mode of a plain ``mkdir`` (not ``mkdtemp``'s)."""
    path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{what}-", dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def remove_dir(path: Path) -> None:
    """Delete a folder at once: renamed to a temporary name first, so it never lies half-deleted."""
    trash = path.with_name(f"{TMP_PREFIX}old-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_temp(output: Path) -> None:
    """Remove what an interrupted save left (hidden ``.m3rag-tmp-*`` entries)."""
    for entry in output.glob(f"{TMP_PREFIX}*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done: a few renames that must not be split."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(*caught[0])
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def publish_dir(tmp: Path, target: Path) -> None:
    """Rename the complete folder ``tmp`` to ``target`` (replacing an old one)."""
    fsync_tree(tmp)
    with deferred_interrupt():
        old = None
        if target.exists():
            old = target.with_name(f"{TMP_PREFIX}old-{target.name}-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_model(tmp: Path, output: Path) -> None:
    """Move the complete model in ``tmp`` into ``output``, beside the run's other files.

    ``config.json`` is removed first and moved in last: without it no loader takes the folder
    for a model, so it never loads half old, half new.
    """
    fsync_tree(tmp)
    entries = sorted(tmp.iterdir(), key=lambda p: p.name == "config.json")
    with deferred_interrupt():
        (output / "config.json").unlink(missing_ok=True)
        _fsync_path(output)
        for entry in entries:
            dest = output / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        _fsync_path(output)
    shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ the trainer state


def _json_ready(obj: Any, where: str) -> Any:
    """``obj`` with tuples as lists; refuses what JSON cannot hold exactly."""
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v, where) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            msg = f"{where}: a non-finite value {obj!r} cannot be checkpointed"
            raise ValueError(msg)
        return obj
    msg = f"{where}: a {type(obj).__name__} cannot be written to JSON"  # pragma: no cover
    raise TypeError(msg)  # pragma: no cover


def _like(value: Any, template: Any) -> Any:
    """A JSON value back in the container types of ``template`` (tuples: AdamW's betas)."""
    if isinstance(template, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """``optimizer.state_dict()`` split into JSON and named tensors, without pickle."""
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": _json_ready(sd["param_groups"], "optimizer"), "other": other}
    return _json_ready(meta, "optimizer"), tensors


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """The inverse of `optimizer_state`, loaded into ``optimizer``."""
    current = optimizer.state_dict()["param_groups"]
    saved = meta["param_groups"]
    if len(saved) != len(current):
        msg = f"{len(saved)} parameter groups saved, {len(current)} in this run"
        raise ValueError(msg)
    groups = [
        {k: _like(v, cur.get(k)) for k, v in group.items()}
        for group, cur in zip(saved, current, strict=True)
    ]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta.get("other", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch RNG states (CPU, and CUDA when training on it): dropout draws from them."""
    import torch

    states = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = st
    return states


def restore_rng(tensors: Mapping[str, torch.Tensor], device: torch.device) -> None:
    import torch

    torch.set_rng_state(tensors["rng.cpu"].to(torch.uint8))
    if device.type == "cuda":
        for i in range(torch.cuda.device_count()):
            if (st := tensors.get(f"rng.cuda.{i}")) is not None:
                torch.cuda.set_rng_state(st.to(torch.uint8), i)


def write_state(folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """``trainer_state.json`` + ``trainer_state.safetensors`` into ``folder``."""
    from safetensors.torch import save_file

    save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": STATE_FORMAT})
    obj = {"format": STATE_FORMAT, "version": FORMAT_VERSION, **meta}
    (folder / STATE_JSON).write_text(json.dumps(_json_ready(obj, str(folder)), indent=1), "utf-8")


def read_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A checkpoint's state, read without unpickling anything.

    Raises:
        CheckpointError: It is missing, damaged, of another format, or a legacy pickle.
    """
    from safetensors.torch import load_file

    if (folder / LEGACY_STATE).exists() and not (folder / STATE_JSON).exists():
        msg = (
            f"{folder / LEGACY_STATE} is a pickle written by an older m3rag; it is not loaded "
            "(unpickling can run code): start over with --overwrite or a new folder"
        )
        raise CheckpointError(msg)
    path = folder / STATE_JSON
    try:
        meta = json.loads(path.read_text("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            msg = "not an m3rag trainer state"
            raise ValueError(msg)
        if meta.get("version") != FORMAT_VERSION:
            msg = f"format version {meta.get('version')!r}; this m3rag reads {FORMAT_VERSION}"
            raise ValueError(msg)
        path = folder / STATE_TENSORS
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # json, safetensors and OS errors alike: the file is unusable
        msg = (
            f"checkpoint {folder} is damaged: {path.name} cannot be read ({exc}); delete "
            f"{folder} to resume from the checkpoint before it, or start over with --overwrite"
        )
        raise CheckpointError(msg) from exc
    return meta, tensors


def read_log(folder: Path) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The history and evaluations recorded in ``folder/trainer_log.json`` (a checkpoint)."""
    path = folder / LOG_FILE
    try:
        obj = json.loads(path.read_text("utf-8"))
        return list(obj["history"]), list(obj["evals"])
    except Exception as exc:
        msg = (
            f"checkpoint {folder} is damaged: {LOG_FILE} cannot be read ({exc}); delete "
            f"{folder} to resume from the checkpoint before it, or start over with --overwrite"
        )
        raise CheckpointError(msg) from exc


def checkpoint_run_id(folder: Path) -> str | None:
    try:
        obj = json.loads((folder / STATE_JSON).read_text("utf-8"))
        run_id = obj.get("run_id") if isinstance(obj, dict) else None
        return run_id if isinstance(run_id, str) else None
    except (OSError, ValueError):
        return None
