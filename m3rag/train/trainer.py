"""The fine-tuning loop: groups -> tokens -> three heads -> unified loss -> AdamW.

Plain PyTorch, no ``transformers.Trainer`` (its pinned behaviours are what users leave
FlagEmbedding over): AdamW, a linear or cosine schedule with warm-up, gradient accumulation,
fp16/bf16 autocast (fp16 with a gradient scaler, on any device), gradient checkpointing, periodic
evaluation on a BEIR dev split through `m3rag.eval`, early stopping, and checkpoints that resume
the same run (model, optimiser, scheduler, step; the data order is a pure function of the seed
and the epoch, so the skipped batches are replayed, not stored).
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from m3rag._inputs import check_positive_int
from m3rag.train.data import Group, TrainExample, sample_group
from m3rag.train.loss import LossConfig, M3Reps, UnifiedLoss
from m3rag.train.model import LEXICAL_INITS, LexicalInit, M3TrainModel

__all__ = ["TrainConfig", "TrainResult", "evaluate_model", "finetune", "latest_checkpoint"]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["fp32", "fp16", "bf16"]


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
        seed: Data order, sampling and new heads.
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
        }
        for name, value in positive.items():
            check_positive_int(value, name)
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
        for name, opt in (
            ("max_steps", self.max_steps),
            ("eval_steps", self.eval_steps),
            ("save_steps", self.save_steps),
            ("early_stopping_patience", self.early_stopping_patience),
        ):
            if opt is not None and (isinstance(opt, bool) or not isinstance(opt, int) or opt < 1):
                msg = f"{name} must be a positive int or None, got {opt!r}"
                raise ValueError(msg)
        if not (self.learning_rate > 0) or (
            self.head_learning_rate is not None and not (self.head_learning_rate > 0)
        ):
            msg = "learning rates must be > 0"
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
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """What a run did.

    Attributes:
        output: The folder holding the fine-tuned model (BGE-M3 layout).
        steps: Optimiser steps taken in total (resumed ones included).
        seconds: Wall time of this call.
        history: Per logged step: ``step``, ``lr``, ``loss`` and the loss parts.
        evals: Per evaluation: ``step`` and the metrics of the watched mode.
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


def _prune(output: Path, keep: int) -> None:
    found = sorted(
        (p for p in output.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoint-<step>`` folder of a run, if any."""
    found = [
        p
        for p in Path(output).glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / STATE_FILE).is_file()
    ]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


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


def finetune(
    examples: Sequence[TrainExample],
    model_name_or_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    dev: Any = None,
    resume_from: str | os.PathLike[str] | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune a BGE-M3 (or dense-only) model on ``examples``; write it to ``output``.

    Args:
        examples: From [`load_training_data`][m3rag.train.load_training_data] or mining.
        model_name_or_path: The base model (a dense-only one gets new heads).
        output: The folder of the result, in the BGE-M3 layout; checkpoints go into
            ``output/checkpoint-<step>/``.
        config: Hyper-parameters.
        dev: A BEIR dataset (`m3rag.eval.load_beir`) evaluated every ``eval_steps``; the best
            model is what ``output`` holds at the end.
        resume_from: A checkpoint folder to continue from (see `latest_checkpoint`).
        on_log: Called with each logged record (step, lr, loss parts).

    Raises:
        ValueError: No examples, a bad config, or groups that cannot be drawn (no negatives).
    """
    cfg = config or TrainConfig()
    if not examples:
        msg = "no training examples"
        raise ValueError(msg)
    from m3rag._torchutil import resolve_device

    started = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    state: dict[str, Any] | None = None
    base: str | os.PathLike[str] = model_name_or_path
    if resume_from is not None:
        ckpt = Path(resume_from)
        if not (ckpt / STATE_FILE).is_file():
            msg = f"{ckpt} is not a checkpoint of a run (no {STATE_FILE}); give checkpoint-<step>"
            raise ValueError(msg)
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        base = ckpt
    model = M3TrainModel(base, seed=cfg.seed, lexical_init=cfg.lexical_init).to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    (out / "training_args.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", "utf-8")

    per_epoch = math.ceil(
        math.ceil(len(examples) / cfg.batch_size) / cfg.gradient_accumulation_steps
    )
    # max_steps replaces epochs when given (as in transformers): the data is cycled as needed
    total = (
        per_epoch * cfg.epochs + cfg.head_warmup_steps if cfg.max_steps is None else cfg.max_steps
    )
    epochs = math.ceil(total / per_epoch)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.learning_rate)
    scheduler = _scheduler(optimizer, cfg, total)
    # fp16 gradients underflow (and overflow) wherever they are computed: the scaler guards
    # them on every device, so the path a GPU takes is the one the CPU tests run
    use_scaler = cfg.precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    loss_cfg = cfg.loss
    if cfg.head_warmup_steps and loss_cfg.self_distill:
        # no distillation from an ensemble of untrained heads: it starts with the whole model
        # (the loss counts forward passes, gradient accumulation makes several per step)
        frozen_passes = cfg.head_warmup_steps * cfg.gradient_accumulation_steps
        start = max(loss_cfg.self_distill_start_step, frozen_passes - 1)
        loss_cfg = replace(loss_cfg, self_distill_start_step=start)
    loss_fn = UnifiedLoss(loss_cfg)
    step, best, best_step, bad = 0, None, None, 0
    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if use_scaler and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        loss_fn.step = int(state["loss_step"])
        best = state.get("best")
        best_step = state.get("best_step")
        bad = int(state.get("bad", 0))
        logger.info("resumed at step %d from %s", step, resume_from)

    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
    progress = None
    if cfg.show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=step, desc="Fine-tuning", unit="step")

    def save_checkpoint() -> None:
        ckpt = model.save(out / f"checkpoint-{step}")
        payload: dict[str, Any] = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "loss_step": loss_fn.step,
            "best": best,
            "best_step": best_step,
            "bad": bad,
        }
        if use_scaler:
            payload["scaler"] = scaler.state_dict()
        torch.save(payload, ckpt / STATE_FILE)
        _prune(out, cfg.save_total_limit)

    def run_eval() -> bool:
        """Evaluate; save the model to ``output`` when it improves; True to stop early."""
        nonlocal best, best_step, bad
        model.eval()
        metrics = evaluate_model(model, dev, modes=(cfg.eval_mode,), device=cfg.device)
        model.train()
        if not cfg.dropout:
            model.backbone.eval()
        value = metrics[cfg.eval_mode][cfg.eval_metric]
        evals.append({"step": float(step), **metrics[cfg.eval_mode]})
        logger.info("step %d: dev %s %s = %.4f", step, cfg.eval_mode, cfg.eval_metric, value)
        if best is None or value > best:
            best, best_step, bad = value, step, 0
            model.save(out)
            return False
        bad += 1
        return cfg.early_stopping_patience is not None and bad >= cfg.early_stopping_patience

    model.train()
    if not cfg.dropout:
        model.backbone.eval()
    stopped = False
    micro_done = step * cfg.gradient_accumulation_steps
    micro = 0
    heads = cfg.loss.heads
    for epoch in range(epochs):
        if step >= total or stopped:
            break
        for groups in _batches(examples, cfg, epoch):
            if micro < micro_done:  # replaying a resumed run's batches
                micro += 1
                continue
            if cfg.head_warmup_steps:
                model.freeze_backbone(frozen=step < cfg.head_warmup_steps)
            queries = [g.query for g in groups]
            passages = [p for g in groups for p in g.passages]
            q_ids, q_mask = _tokens(model, queries, cfg.query_max_length, device)
            p_ids, p_mask = _tokens(model, passages, cfg.passage_max_length, device)
            teacher = (
                torch.tensor([g.scores for g in groups], dtype=torch.float32)
                if cfg.teacher_scores
                else None
            )
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                q_reps, p_reps = model(q_ids, q_mask, p_ids, p_mask, heads)
            parts = loss_fn(_float(q_reps), _float(p_reps), teacher)
            scaled: torch.Tensor = scaler.scale(parts["loss"] / cfg.gradient_accumulation_steps)
            scaled.backward()  # type: ignore[no-untyped-call]
            micro += 1
            if micro % cfg.gradient_accumulation_steps:
                continue
            if cfg.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            _optimizer_step(scaler, optimizer, scheduler)
            step += 1
            record = {"step": float(step), "lr": float(scheduler.get_last_lr()[0])}
            record.update({k: float(v.detach()) for k, v in parts.items()})
            history.append(record)
            if on_log is not None:
                on_log(record)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
            if dev is not None and cfg.eval_steps and step % cfg.eval_steps == 0:
                stopped = run_eval()
            if cfg.save_steps and step % cfg.save_steps == 0:
                save_checkpoint()
            if stopped or step >= total:
                break
    if micro % cfg.gradient_accumulation_steps and step < total and not stopped:
        # a last partial accumulation: step on what was gathered
        _optimizer_step(scaler, optimizer, scheduler)
        step += 1
    if progress is not None:
        progress.close()
    if dev is not None and not stopped and (not evals or evals[-1]["step"] != step):
        run_eval()
    if dev is None:
        model.save(out)
    (out / "trainer_log.json").write_text(
        json.dumps({"history": history, "evals": evals, "best_step": best_step}, indent=2) + "\n",
        "utf-8",
    )
    return TrainResult(
        out,
        step,
        time.perf_counter() - started,
        history,
        evals,
        best_step,
        best,
        stopped,
    )
