"""The fine-tuning loop: groups -> tokens -> three heads -> unified loss -> AdamW.

Plain PyTorch, no ``transformers.Trainer`` (its pinned behaviours are what users leave
FlagEmbedding over): AdamW, a linear or cosine schedule with warm-up, gradient accumulation,
fp16/bf16 autocast (fp16 with a gradient scaler, on any device), gradient checkpointing, periodic
evaluation on a BEIR dev split through `m3rag.eval`, early stopping, and checkpoints that resume
the same run exactly.

A run is a pure function of its data, config and seed: the data order and the groups come from
generators seeded by ``(seed, epoch)``, and the torch generator behind dropout is seeded from
``seed`` (inside `torch.random.fork_rng`, so the caller's generator is left as it was). A
checkpoint keeps the model, the optimiser, scheduler and gradient-scaler state, the step and the
RNG states, without pickle (see `m3rag.train.state`); a resumed run replays the data up to its
step and ends where the uninterrupted one does, dropout included.

Gradient accumulation follows ``transformers.Trainer``: an epoch of ``n`` batches takes
``ceil(n / gradient_accumulation_steps)`` optimiser steps, the last one on the remaining batches
(its loss divided by their number), and the schedule plans exactly these steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from m3rag._inputs import check_positive_int
from m3rag.errors import ModelError
from m3rag.train.data import Group, TrainExample, check_examples, sample_group
from m3rag.train.loss import LossConfig, M3Reps, UnifiedLoss
from m3rag.train.model import LEXICAL_INITS, LexicalInit, M3TrainModel
from m3rag.train.state import (
    LEGACY_STATE,
    LOG_FILE,
    STATE_JSON,
    CheckpointError,
    RunInfo,
    TrainingDivergedError,
    check_output,
    checkpoint_run_id,
    checkpoints,
    clear_run,
    load_optimizer_state,
    model_reference,
    new_run_id,
    optimizer_state,
    publish_dir,
    publish_model,
    read_log,
    read_run,
    read_state,
    remove_dir,
    remove_temp,
    restore_rng,
    rng_state,
    temp_dir,
    write_json,
    write_run,
    write_state,
)

__all__ = ["TrainConfig", "TrainResult", "evaluate_model", "finetune", "latest_checkpoint"]

logger = logging.getLogger(__name__)

Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["fp32", "fp16", "bf16"]

# What a resumed run may change: how long it trains, how it checkpoints and evaluates, where it
# runs. Anything else would make it another run than the one its checkpoint belongs to.
RESUME_MAY_CHANGE = frozenset(
    {
        "epochs",
        "max_steps",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "early_stopping_patience",
        "device",
        "show_progress",
        "gradient_checkpointing",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a fine-tuning run (defaults: the BGE-M3 scripts', sized for CPU).

    Attributes:
        loss: The loss: mode, temperature 0.02, teacher weights (1, 0.3, 1), self-distillation.
        epochs: Passes over the data.
        max_steps: Train this many optimiser steps, cycling the data (replaces ``epochs``).
        batch_size: Queries per forward pass; each brings ``group_size`` passages.
        group_size: Passages per query: one positive and ``group_size - 1`` hard negatives.
        gradient_accumulation_steps: Forward passes per optimiser step.
        learning_rate: AdamW learning rate of the backbone.
        head_learning_rate: Learning rate of ``colbert_linear`` and ``sparse_linear`` (default
            ``learning_rate``); new heads on a dense-only model learn faster with a larger one.
        lexical_init: How the lexical head of a dense-only base starts: ``"default"`` (random,
            as FlagEmbedding) or ``"uniform"`` (every token weight 0.1); see `M3TrainModel`.
        head_warmup_steps: Optimiser steps, before the main schedule, that train only the
            heads: the backbone is frozen (its forward pass keeps no graph, so a step costs
            about a third), the heads run at a constant ``head_learning_rate`` and
            self-distillation is off (the ensemble teacher would include the untrained heads).
            Counted in ``max_steps``; added to the steps of ``epochs``. For new heads on a
            dense-only base, whose random lexical head is far from useful.
        weight_decay: AdamW weight decay (biases and LayerNorms excluded).
        warmup_ratio: Share of the steps with a linear warm-up.
        schedule: ``"linear"`` or ``"cosine"`` decay after warm-up, or ``"constant"``.
        max_grad_norm: Gradient clipping (``None``: off).
        query_max_length: Query truncation, specials included.
        passage_max_length: Passage truncation, specials included.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` autocast; weights stay fp32.
        gradient_checkpointing: Recompute activations in the backward pass.
        teacher_scores: Distil from ``pos_scores``/``neg_scores`` in the data.
        query_instruction: Prefix of every query without its own ``prompt``.
        eval_steps: Evaluate on the dev split every this many steps (and at the end).
        eval_mode: The `m3rag.eval` mode whose metric is watched (``"hybrid"``: fused heads).
        eval_metric: The watched metric, e.g. ``"ndcg@10"``.
        early_stopping_patience: Stop after this many evaluations without improvement.
        save_steps: Write a resumable checkpoint every this many steps.
        save_total_limit: Keep this many checkpoints (oldest removed).
        seed: Data order, sampling, dropout and new heads.
        dropout: Keep the backbone's dropout on during training (FlagEmbedding does).
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
        show_progress: A progress bar over steps.
    """

    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    group_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    head_learning_rate: float | None = None
    head_warmup_steps: int = 0
    lexical_init: LexicalInit = "default"
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: Schedule = "linear"
    max_grad_norm: float | None = 1.0
    query_max_length: int = 64
    passage_max_length: int = 256
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    teacher_scores: bool = False
    query_instruction: str | None = None
    eval_steps: int | None = None
    eval_mode: str = "hybrid"
    eval_metric: str = "ndcg@10"
    early_stopping_patience: int | None = None
    save_steps: int | None = None
    save_total_limit: int = 2
    seed: int = 0
    dropout: bool = True
    device: str | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "group_size": self.group_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "save_total_limit": self.save_total_limit,
        }
        for name, value in positive.items():
            check_positive_int(value, name)
        for name, opt in (
            ("max_steps", self.max_steps),
            ("eval_steps", self.eval_steps),
            ("save_steps", self.save_steps),
            ("early_stopping_patience", self.early_stopping_patience),
        ):
            if opt is not None and (isinstance(opt, bool) or not isinstance(opt, int) or opt < 1):
                msg = f"{name} must be an int >= 1 (or None), got {opt!r}"
                raise ValueError(msg)
        if (
            isinstance(self.head_warmup_steps, bool)
            or not isinstance(self.head_warmup_steps, int)
            or self.head_warmup_steps < 0
        ):
            msg = f"head_warmup_steps must be an int >= 0, got {self.head_warmup_steps!r}"
            raise ValueError(msg)
        if self.max_steps is not None and self.head_warmup_steps >= self.max_steps:
            msg = (
                f"head_warmup_steps={self.head_warmup_steps} leaves no step of max_steps="
                f"{self.max_steps} for the whole model; lower it or raise max_steps"
            )
            raise ValueError(msg)
        if self.head_warmup_steps and self.loss.mode == "dense":
            msg = (
                "head_warmup_steps trains the heads alone, and loss mode 'dense' trains no head; "
                "use mode 'unified', 'sparse' or 'colbert', or head_warmup_steps=0"
            )
            raise ValueError(msg)
        for name, rate in (
            ("learning_rate", self.learning_rate),
            ("head_learning_rate", self.head_learning_rate),
        ):
            if rate is not None and not (isinstance(rate, int | float) and 0 < rate < math.inf):
                msg = f"{name} must be a finite number > 0, got {rate!r}"
                raise ValueError(msg)
        if not (isinstance(self.weight_decay, int | float) and 0 <= self.weight_decay < math.inf):
            msg = f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            raise ValueError(msg)
        if self.max_grad_norm is not None and not (0 < self.max_grad_norm < math.inf):
            msg = f"max_grad_norm must be a finite number > 0 (or None), got {self.max_grad_norm!r}"
            raise ValueError(msg)
        if not 0 <= self.warmup_ratio < 1:
            msg = f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}"
            raise ValueError(msg)
        if self.schedule not in ("linear", "cosine", "constant"):
            msg = f"schedule must be linear, cosine or constant, got {self.schedule!r}"
            raise ValueError(msg)
        if self.lexical_init not in LEXICAL_INITS:
            msg = f"lexical_init must be one of {LEXICAL_INITS}, got {self.lexical_init!r}"
            raise ValueError(msg)
        if self.precision not in ("fp32", "fp16", "bf16"):
            msg = f"precision must be fp32, fp16 or bf16, got {self.precision!r}"
            raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run's ``training_args.json``."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config `to_dict` wrote (a run's ``training_args.json``).

        Raises:
            ValueError: Unknown fields or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"unknown TrainConfig fields {unknown}"
            raise ValueError(msg)
        values = dict(data)
        loss = dict(values.pop("loss", {}))
        if "teacher_weights" in loss:
            loss["teacher_weights"] = tuple(loss["teacher_weights"])
        try:
            return cls(loss=LossConfig(**loss), **values)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def resume_conflicts(self, saved: dict[str, Any]) -> list[str]:
        """The fields where this config differs from a run's ``saved`` one and may not.

        `RESUME_MAY_CHANGE` lists those a resumed run may change (``loss.*`` never).
        """
        mine = self.to_dict()
        out: list[str] = []
        for key in sorted(set(mine) | set(saved)):
            if key in RESUME_MAY_CHANGE:
                continue
            if key == "loss":
                a, b = mine.get("loss", {}), saved.get("loss", {})
                out += [f"loss.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            elif mine.get(key) != saved.get(key):
                out.append(key)
        return out


@dataclass(frozen=True)
class TrainResult:
    """What a run did.

    Attributes:
        output: The folder holding the fine-tuned model (BGE-M3 layout).
        steps: Optimiser steps taken in total (resumed ones included).
        seconds: Wall time of this call.
        history: Per step: ``step``, ``lr``, ``loss`` and the loss parts (of the step's last
            forward pass); a resumed run's includes the steps before its checkpoint.
        evals: Per evaluation: ``step`` and the metrics of the watched mode (resumed ones too).
        best_step: The step of the best evaluation (``None`` without a dev split).
        best_metric: Its watched metric.
        stopped_early: Early stopping ended the run.
    """

    output: Path
    steps: int
    seconds: float
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    best_step: int | None
    best_metric: float | None
    stopped_early: bool


def _batches(
    examples: Sequence[TrainExample], config: TrainConfig, epoch: int
) -> list[list[Group]]:
    """The epoch's batches: a permutation and the groups drawn from one seeded generator."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(examples))
    return [
        [
            sample_group(
                examples[int(i)],
                config.group_size,
                rng,
                teacher_scores=config.teacher_scores,
                query_instruction=config.query_instruction,
            )
            for i in order[start : start + config.batch_size]
        ]
        for start in range(0, len(order), config.batch_size)
    ]


@dataclass(frozen=True)
class _Plan:
    """How many forward passes (batches) and optimiser steps a run makes, epoch by epoch."""

    batches: int  # per epoch
    accumulation: int
    total: int  # optimiser steps of the run

    @property
    def per_epoch(self) -> int:
        """Optimiser steps an epoch takes: the last one on what remains (as transformers)."""
        return math.ceil(self.batches / self.accumulation)

    def passes_before(self, step: int) -> int:
        """Forward passes made before optimiser step ``step`` (0-based) starts."""
        epochs, within = divmod(step, self.per_epoch)
        return epochs * self.batches + within * self.accumulation


def _plan(n_examples: int, config: TrainConfig) -> _Plan:
    batches = math.ceil(n_examples / config.batch_size)
    per_epoch = math.ceil(batches / config.gradient_accumulation_steps)
    # max_steps replaces epochs when given (as in transformers): the data is cycled as needed
    total = (
        per_epoch * config.epochs + config.head_warmup_steps
        if config.max_steps is None
        else config.max_steps
    )
    return _Plan(batches, config.gradient_accumulation_steps, total)


def _param_groups(model: M3TrainModel, config: TrainConfig) -> list[dict[str, Any]]:
    head_lr = config.head_learning_rate or config.learning_rate
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = (
            head_lr
            if name.startswith(("colbert_linear.", "sparse_linear."))
            else config.learning_rate
        )
        no_decay = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((lr, 0.0 if no_decay else config.weight_decay), []).append(param)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then decay over the steps after the heads-only phase (constant during it)."""
    frozen = config.head_warmup_steps
    total -= frozen
    warmup = int(total * config.warmup_ratio)

    def factor(step: int) -> float:
        if step < frozen:
            return 1.0
        step -= frozen
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _tokens(
    model: M3TrainModel, texts: Sequence[str], max_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    enc = model.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=min(max_length, model.max_length),
        return_tensors="pt",
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _float(reps: M3Reps) -> M3Reps:
    """fp32 representations: the loss (exp, finfo.min masks) runs in full precision."""
    return M3Reps(
        None if reps.dense is None else reps.dense.float(),
        None if reps.sparse is None else reps.sparse.float(),
        None if reps.colbert is None else reps.colbert.float(),
        reps.mask,
    )


def evaluate_model(
    model: M3TrainModel,
    dev: Any,
    *,
    modes: Sequence[str] = ("hybrid",),
    k_values: Sequence[int] = (10,),
    device: str | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` on a BEIR dataset (`m3rag.eval.load_beir`), per mode.

    The model is saved to a temporary folder and loaded by `M3Encoder`, so what is measured is
    exactly what a user of the saved model gets.
    """
    from m3rag.encoder import M3Encoder
    from m3rag.eval import evaluate, index_corpus
    from m3rag.index import Collection

    with tempfile.TemporaryDirectory(prefix="m3rag-train-eval-") as tmp:
        folder = model.save(Path(tmp) / "model")
        encoder = M3Encoder(folder, device=device, dtype="float32")
        with Collection.create(Path(tmp) / "index", encoder=encoder) as col:
            index_corpus(dev, col)
            report = evaluate(dev, col, encoder=encoder, modes=modes, k_values=k_values)
    return report.metrics


def _prune(output: Path, keep: int, run_id: str) -> None:
    """Keep the newest ``keep`` checkpoints of this run (other runs' are not touched)."""
    mine = [p for _, p in checkpoints(output) if checkpoint_run_id(p) == run_id]
    for old in mine[: max(0, len(mine) - keep)]:
        remove_dir(old)


def latest_checkpoint(output: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoint-<step>`` folder of the run in ``output``, if any.

    Only the run that ``output/training_args.json`` records counts; the temporary folders of an
    interrupted save never do. A damaged checkpoint is returned, for resuming to report it.
    """
    out = Path(output)
    try:
        run = read_run(out)
    except CheckpointError:
        run = None
    for _, path in reversed(checkpoints(out)):
        if not ((path / STATE_JSON).is_file() or (path / LEGACY_STATE).is_file()):
            continue
        owner = checkpoint_run_id(path)
        if run is not None and owner is not None and owner != run.run_id:
            continue
        return path
    return None


def _optimizer_step(scaler: Any, optimizer: Any, scheduler: Any) -> None:
    """One update through the gradient scaler; the schedule moves only if the update ran.

    With fp16 the scaler skips the update when the scaled gradients overflowed (at its first
    steps, while it finds its scale): the learning rate then stays where it was, as in
    ``transformers.Trainer``, instead of the schedule running ahead of the updates.
    """
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if before is None or scaler.get_scale() >= before:
        scheduler.step()


def _check_finite_weights(model: M3TrainModel, step: int) -> None:
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            msg = (
                f"training diverged: {name} holds NaN or infinite weights after step {step}; "
                "nothing was saved from this step on: lower the learning rates (--lr, --head-lr)"
            )
            raise TrainingDivergedError(msg)


def _resume_point(
    resume_from: Path, config: TrainConfig, model_name_or_path: str | os.PathLike[str] | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """The checkpoint's state, checked against this call: (state, tensors, base model)."""
    if not resume_from.is_dir():
        msg = f"resume_from={resume_from} is not a checkpoint folder (checkpoint-<step>)"
        raise ValueError(msg)
    meta, tensors = read_state(resume_from)
    saved_model = meta.get("model")
    saved_config = meta.get("config")
    if not isinstance(saved_model, str) or not isinstance(saved_config, dict):
        msg = f"checkpoint {resume_from} is damaged: {STATE_JSON} lacks its model or config"
        raise CheckpointError(msg)
    if model_name_or_path is not None and model_reference(model_name_or_path) != saved_model:
        msg = (
            f"the run of {resume_from} trains {saved_model}, not {model_name_or_path}; a resumed "
            "run keeps its base model"
        )
        raise ValueError(msg)
    conflicts = config.resume_conflicts(saved_config)
    if conflicts:
        msg = (
            f"a resumed run keeps its config, and {', '.join(conflicts)} differ from the run of "
            f"{resume_from}; only {', '.join(sorted(RESUME_MAY_CHANGE))} may change"
        )
        raise ValueError(msg)
    return meta, tensors, saved_model


def finetune(
    examples: Sequence[TrainExample],
    model_name_or_path: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    dev: Any = None,
    resume_from: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune a BGE-M3 (or dense-only) model on ``examples``; write it to ``output``.

    Args:
        examples: From [`load_training_data`][m3rag.train.load_training_data] or mining.
        model_name_or_path: The base model (a dense-only one gets new heads); ``None`` with
            ``resume_from`` takes the run's own.
        output: The folder of the result, in the BGE-M3 layout; checkpoints go into
            ``output/checkpoint-<step>/``. It must be new or empty, unless it holds an m3rag run
            that ``resume_from`` continues (one of its checkpoints) or ``overwrite`` replaces;
            never the base model's folder.
        config: Hyper-parameters. A resumed run must keep its run's, except for
            ``RESUME_MAY_CHANGE`` (more steps or epochs, checkpointing, evaluation, device).
        dev: A BEIR dataset (`m3rag.eval.load_beir`) evaluated every ``eval_steps``; the best
            model is what ``output`` holds at the end.
        resume_from: A checkpoint folder to continue from (see `latest_checkpoint`).
        overwrite: Replace the m3rag run ``output`` holds (its contents are deleted).
        on_log: Called with each new logged record (step, lr, loss parts).

    Raises:
        ValueError: No examples, a bad config, groups that cannot be drawn (no negatives or
            teacher scores), an ``output`` the rule refuses, a resume that contradicts its run
            or has nothing left to train.
        CheckpointError: The checkpoint to resume is damaged or of an old (pickle) format.
        TrainingDivergedError: The loss or the weights became NaN or infinite.
    """
    cfg = config or TrainConfig()
    check_examples(examples, group_size=cfg.group_size, teacher_scores=cfg.teacher_scores)
    if dev is None and (cfg.eval_steps is not None or cfg.early_stopping_patience is not None):
        msg = "eval_steps and early_stopping_patience need a dev split (dev=, --dev)"
        raise ValueError(msg)
    out = Path(output)
    ckpt = Path(resume_from) if resume_from is not None else None
    in_place = ckpt is not None and out.is_dir() and ckpt.resolve().parent == out.resolve()
    previous = check_output(out, model_name_or_path, resume=in_place, overwrite=overwrite)
    plan = _plan(len(examples), cfg)
    meta: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = {}
    if ckpt is not None:
        meta, tensors, base_ref = _resume_point(ckpt, cfg, model_name_or_path)
        if int(meta["step"]) >= plan.total:
            msg = (
                f"checkpoint {ckpt} is at step {meta['step']} and this run plans {plan.total} "
                "steps: nothing is left to train; raise max_steps or epochs (--max-steps, "
                "--epochs) to train further"
            )
            raise ValueError(msg)
    elif model_name_or_path is None:
        msg = "model_name_or_path is needed unless resume_from is given"
        raise ValueError(msg)
    else:
        base_ref = model_reference(model_name_or_path)
    from m3rag._torchutil import resolve_device

    started = time.perf_counter()
    device = resolve_device(cfg.device)
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    # the caller's generators are left as they were: loading and training draw from a fork
    with torch.random.fork_rng(devices=cuda):
        try:
            model = M3TrainModel(ckpt or base_ref, seed=cfg.seed, lexical_init=cfg.lexical_init)
        except ModelError as exc:
            if ckpt is None:
                raise
            msg = f"checkpoint {ckpt} is damaged: its model cannot be loaded ({exc})"
            raise CheckpointError(msg) from exc
        model.to(device)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()

        # the folder, once everything is known to load
        if previous is not None and overwrite and not in_place:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_temp(out)
        run_id = previous.run_id if (in_place and previous is not None) else new_run_id()
        write_run(out, RunInfo(run_id, base_ref, cfg.to_dict()))

        torch.manual_seed(cfg.seed)  # dropout: the run is a function of its seed
        loop = _Run(examples, model, out, cfg, plan, device, dev, run_id, base_ref, on_log)
        if ckpt is not None and meta is not None:
            loop.restore(meta, tensors, ckpt)
        return loop.run(started)


class _Run:
    """One call's training loop (state shared by the step, the evaluation and the saves)."""

    def __init__(
        self,
        examples: Sequence[TrainExample],
        model: M3TrainModel,
        out: Path,
        cfg: TrainConfig,
        plan: _Plan,
        device: torch.device,
        dev: Any,
        run_id: str,
        base_ref: str,
        on_log: Callable[[dict[str, float]], None] | None,
    ) -> None:
        self.examples, self.model, self.out, self.cfg, self.plan = examples, model, out, cfg, plan
        self.device, self.dev, self.run_id, self.base_ref, self.on_log = (
            device,
            dev,
            run_id,
            base_ref,
            on_log,
        )
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.learning_rate)
        self.scheduler = _scheduler(self.optimizer, cfg, plan.total)
        # fp16 gradients underflow (and overflow) wherever they are computed: the scaler guards
        # them on every device, so the path a GPU takes is the one the CPU tests run
        self.use_scaler = cfg.precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_scaler)
        loss_cfg = cfg.loss
        if cfg.head_warmup_steps and loss_cfg.self_distill:
            # no distillation from an ensemble of untrained heads: it starts with the whole
            # model (the loss counts forward passes, gradient accumulation makes several a step)
            start = max(
                loss_cfg.self_distill_start_step, plan.passes_before(cfg.head_warmup_steps) - 1
            )
            loss_cfg = replace(loss_cfg, self_distill_start_step=start)
        self.loss_fn = UnifiedLoss(loss_cfg)
        self.step, self.bad = 0, 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
        try:
            load_optimizer_state(self.optimizer, meta["optimizer"], tensors)
            self.scheduler.load_state_dict(meta["scheduler"])
            if self.use_scaler:
                self.scaler.load_state_dict(meta["scaler"])
            self.step = int(meta["step"])
            self.loss_fn.step = int(meta["loss_step"])
            self.best, self.best_step = meta["best"], meta["best_step"]
            self.bad = int(meta["bad"])
            restore_rng(tensors, self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            msg = f"checkpoint {ckpt} is damaged: its trainer state cannot be restored ({exc})"
            raise CheckpointError(msg) from exc
        self.history, self.evals = read_log(ckpt)
        logger.info("resumed at step %d from %s", self.step, ckpt)

    def _train_mode(self) -> None:
        self.model.train()
        if not self.cfg.dropout:
            self.model.backbone.eval()

    def save_model(self) -> None:
        """Publish the model into the output folder, whole or not at all."""
        _check_finite_weights(self.model, self.step)
        tmp = temp_dir(self.out, "model")
        try:
            self.model.save(tmp)
            publish_model(tmp, self.out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone once published; else half-written

    def save_checkpoint(self) -> None:
        _check_finite_weights(self.model, self.step)
        tmp = temp_dir(self.out, f"checkpoint-{self.step}")
        try:
            self.model.save(tmp)
            opt_meta, tensors = optimizer_state(self.optimizer)
            tensors.update(rng_state(self.device))
            meta = {
                "run_id": self.run_id,
                "model": self.base_ref,
                "config": self.cfg.to_dict(),
                "step": self.step,
                "loss_step": self.loss_fn.step,
                "best": self.best,
                "best_step": self.best_step,
                "bad": self.bad,
                "optimizer": opt_meta,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_scaler else None,
            }
            write_state(tmp, meta, tensors)
            write_json(tmp / LOG_FILE, {"history": self.history, "evals": self.evals})
            # make room first: an interruption leaves fewer checkpoints, never a broken newest one
            _prune(self.out, self.cfg.save_total_limit - 1, self.run_id)
            publish_dir(tmp, self.out / f"checkpoint-{self.step}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run_eval(self) -> bool:
        """Evaluate; publish the model when it improves; True to stop early."""
        cfg = self.cfg
        self.model.eval()
        cuda = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # evaluation leaves the training RNG alone
            metrics = evaluate_model(
                self.model, self.dev, modes=(cfg.eval_mode,), device=cfg.device
            )
        self._train_mode()
        value = metrics[cfg.eval_mode][cfg.eval_metric]
        self.evals.append({"step": float(self.step), **metrics[cfg.eval_mode]})
        logger.info("step %d: dev %s %s = %.4f", self.step, cfg.eval_mode, cfg.eval_metric, value)
        if self.best is None or value > self.best:
            self.best, self.best_step, self.bad = value, self.step, 0
            self.save_model()
            return False
        self.bad += 1
        return cfg.early_stopping_patience is not None and self.bad >= cfg.early_stopping_patience

    def forward(self, groups: list[Group], passes: int) -> dict[str, torch.Tensor]:
        """One batch's loss, backpropagated as ``1 / passes`` of the step's."""
        cfg, model, device = self.cfg, self.model, self.device
        queries = [g.query for g in groups]
        passages = [p for g in groups for p in g.passages]
        q_ids, q_mask = _tokens(model, queries, cfg.query_max_length, device)
        p_ids, p_mask = _tokens(model, passages, cfg.passage_max_length, device)
        teacher = (
            torch.tensor([g.scores for g in groups], dtype=torch.float32)
            if cfg.teacher_scores
            else None
        )
        amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            q_reps, p_reps = model(q_ids, q_mask, p_ids, p_mask, cfg.loss.heads)
        parts = self.loss_fn(_float(q_reps), _float(p_reps), teacher)
        loss = float(parts["loss"].detach())
        if not math.isfinite(loss):
            msg = (
                f"training diverged: the loss is {loss} at step {self.step + 1}; the run stops "
                "and nothing of this step is saved: lower the learning rates (--lr, --head-lr) "
                "or check the teacher scores"
            )
            raise TrainingDivergedError(msg)
        scaled: torch.Tensor = self.scaler.scale(parts["loss"] / passes)
        scaled.backward()  # type: ignore[no-untyped-call]
        return parts

    def train_step(self, chunk: list[list[Group]]) -> dict[str, float]:
        """One optimiser step on ``chunk`` (up to ``gradient_accumulation_steps`` batches)."""
        cfg = self.cfg
        for groups in chunk:
            parts = self.forward(groups, len(chunk))
        if cfg.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        _optimizer_step(self.scaler, self.optimizer, self.scheduler)
        self.step += 1
        record = {"step": float(self.step), "lr": float(self.scheduler.get_last_lr()[0])}
        record.update({key: float(v.detach()) for key, v in parts.items()})
        self.history.append(record)
        if self.on_log is not None:
            self.on_log(record)
        return record

    def run(self, started: float) -> TrainResult:
        cfg, plan = self.cfg, self.plan
        progress = None
        if cfg.show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=plan.total, initial=self.step, desc="Fine-tuning", unit="step")
        try:
            self._train_mode()
            stopped = False
            accum = cfg.gradient_accumulation_steps
            while self.step < plan.total and not stopped:
                epoch, within = divmod(self.step, plan.per_epoch)
                batches = _batches(self.examples, cfg, epoch)
                for k in range(within, plan.per_epoch):
                    if cfg.head_warmup_steps:
                        self.model.freeze_backbone(frozen=self.step < cfg.head_warmup_steps)
                    record = self.train_step(batches[k * accum : (k + 1) * accum])
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{record['loss']:.4f}")
                    if self.dev is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0:
                        stopped = self.run_eval()
                    if cfg.save_steps and self.step % cfg.save_steps == 0:
                        self.save_checkpoint()
                    if stopped or self.step >= plan.total:
                        break
        finally:
            if progress is not None:
                progress.close()
        if (
            self.dev is not None
            and not stopped
            and (not self.evals or self.evals[-1]["step"] != self.step)
        ):
            self.run_eval()
        if self.dev is None:
            self.save_model()
        write_json(
            self.out / LOG_FILE,
            {"history": self.history, "evals": self.evals, "best_step": self.best_step},
        )
        return TrainResult(
            self.out,
            self.step,
            time.perf_counter() - started,
            self.history,
            self.evals,
            self.best_step,
            self.best,
            stopped,
        )
