"""``m3rag finetune`` and ``m3rag mine``: BGE-M3's unified fine-tuning and hard-negative mining."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from m3rag.cli._app import (
    DEFAULT_MODEL,
    EXIT_INDEX,
    EXIT_USAGE,
    DeviceOption,
    app,
    check_device,
    check_index_path,
    fail,
    handled,
    load_encoder,
    loading,
    note,
    open_collection,
    out,
    stored_model,
)

if TYPE_CHECKING:
    from m3rag.train import TrainConfig


def _window(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-"))
    except ValueError as exc:
        raise fail(f"--range must look like 10-100, got {text!r}", EXIT_USAGE) from exc
    if not 0 <= lo < hi:
        raise fail(f"--range {text!r}: the start must be >= 0 and below the end", EXIT_USAGE)
    return lo, hi


def _check_writable(output: Path) -> None:
    """Fail before the work when ``output`` cannot be written (its folder missing, read-only)."""
    try:
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".m3rag-probe-"):
            pass
    except OSError as exc:
        raise fail(f"--output {output} cannot be written: {exc}", EXIT_USAGE) from exc


def _load_data(data: Path, split: str) -> list[object]:
    from m3rag.train import load_training_data

    try:
        return list(load_training_data(data, split=split))
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


@app.command("mine")
@handled
def mine(
    data: Annotated[
        Path, typer.Argument(help="Training data: BGE-M3 JSONL, or a BEIR folder with qrels.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The mined JSONL file.")],
    index: Annotated[
        Path,
        typer.Option(
            "--index",
            help="The collection to mine from; for BEIR data it is built from the corpus when "
            "it does not exist.",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Query encoder (default: the index's model)."),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="dense, lexical, colbert, bm25, or hybrid (the fused score).")
    ] = "dense",
    range_: Annotated[
        str, typer.Option("--range", help="Ranks to sample from, start-end (0-based).")
    ] = "10-100",
    negatives: Annotated[int, typer.Option(help="Hard negatives per query.")] = 15,
    split: Annotated[str, typer.Option(help="The qrels split of BEIR data.")] = "train",
    seed: Annotated[int, typer.Option(help="Seed of the random draw.")] = 0,
    device: DeviceOption = None,
) -> None:
    """Mine hard negatives from a collection and write them in the training format.

    Each query is searched as ``m3rag eval`` would; ``--negatives`` hits are drawn from ranks
    ``--range`` minus the query's positives (by id for BEIR data, by text otherwise).
    """
    from m3rag.train import mine_hard_negatives, write_jsonl

    window = _window(range_)
    if negatives < 1:
        raise fail(f"--negatives must be >= 1, got {negatives}", EXIT_USAGE)
    check_device(device)
    check_index_path(index, must_exist=False)
    if output.is_dir():
        raise fail(f"--output {output} is a folder; give a .jsonl file name", EXIT_USAGE)
    _check_writable(output)
    examples = _load_data(data, split)
    exists = (index / "manifest.json").exists()
    if not exists and not (data / "corpus.jsonl").is_file():
        raise fail(
            f"no collection at {index}; index your corpus first (m3rag index) or give a BEIR "
            "folder, whose corpus is indexed for you",
            EXIT_USAGE,
        )
    name = model or (stored_model(index) if exists else None) or DEFAULT_MODEL
    encoder = None if mode == "bm25" else load_encoder(name, device, None)
    if exists:
        col = open_collection(index, encoder, read_only=True)
    else:
        from m3rag.eval import index_corpus, load_beir
        from m3rag.index import Collection

        col = Collection.create(index, encoder=encoder, heads=None if encoder else ())
        with col:
            note(f"indexing the corpus of {data} into {index}")
            index_corpus(load_beir(data, split=split), col)
        col = open_collection(index, encoder, read_only=True)
    with col:
        mined = mine_hard_negatives(
            examples,  # type: ignore[arg-type]
            col,
            encoder=encoder,
            mode=mode,
            window=window,
            negatives=negatives,
            seed=seed,
        )
    n = write_jsonl(mined, output)
    short = sum(len(e.neg) < negatives for e in mined)
    note(
        f"{n} queries written to {output}"
        + (f" ({short} with fewer than {negatives} negatives in the window)" if short else "")
    )


# --option -> the TrainConfig field it sets ("loss.x": a LossConfig field)
_OPTION_FIELDS = {
    "mode": ("--mode", "loss.mode"),
    "temperature": ("--temperature", "loss.temperature"),
    "self_distill": ("--self-distill", "loss.self_distill"),
    "kd_loss": ("--kd-loss", "loss.kd_loss_type"),
    "epochs": ("--epochs", "epochs"),
    "max_steps": ("--max-steps", "max_steps"),
    "batch_size": ("--batch-size", "batch_size"),
    "group_size": ("--group-size", "group_size"),
    "grad_accum": ("--grad-accum", "gradient_accumulation_steps"),
    "lr": ("--lr", "learning_rate"),
    "head_lr": ("--head-lr", "head_learning_rate"),
    "head_warmup_steps": ("--head-warmup-steps", "head_warmup_steps"),
    "lexical_init": ("--lexical-init", "lexical_init"),
    "warmup": ("--warmup", "warmup_ratio"),
    "schedule": ("--schedule", "schedule"),
    "teacher_scores": ("--teacher-scores", "teacher_scores"),
    "query_max_length": ("--query-max-length", "query_max_length"),
    "passage_max_length": ("--passage-max-length", "passage_max_length"),
    "precision": ("--precision", "precision"),
    "gradient_checkpointing": ("--gradient-checkpointing", "gradient_checkpointing"),
    "eval_steps": ("--eval-steps", "eval_steps"),
    "patience": ("--patience", "early_stopping_patience"),
    "save_steps": ("--save-steps", "save_steps"),
    "seed": ("--seed", "seed"),
    "device": ("--device", "device"),
}


def _given(ctx: typer.Context, name: str) -> bool:
    """The option was on the command line (or in the environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _config_dict(values: dict[str, Any]) -> dict[str, Any]:
    """The options' values as a ``TrainConfig.to_dict``-shaped dict (``loss.*`` nested)."""
    out: dict[str, Any] = {"loss": {}}
    for name, (_, key) in _OPTION_FIELDS.items():
        section, _, leaf = key.rpartition(".")
        (out["loss"] if section else out)[leaf] = values[name]
    return out


def _resume_config(
    ctx: typer.Context, output: Path, saved: dict[str, Any], values: dict[str, Any]
) -> TrainConfig:
    """The run's own config, with the options a resume may change applied; others refused."""
    from m3rag.train.trainer import RESUME_MAY_CHANGE, TrainConfig

    merged = json.loads(json.dumps(saved))
    merged["loss"] = dict(merged.get("loss", {}))
    conflicts = []
    for name, (option, key) in _OPTION_FIELDS.items():
        if not _given(ctx, name):
            continue
        section, _, leaf = key.rpartition(".")
        target = merged["loss"] if section else merged
        if key in RESUME_MAY_CHANGE:
            target[leaf] = values[name]
        elif target.get(leaf) != values[name]:
            conflicts.append(f"{option} (the run's: {target.get(leaf)!r}, given: {values[name]!r})")
    if conflicts:
        may_change = [o for o, key in _OPTION_FIELDS.values() if key in RESUME_MAY_CHANGE]
        raise fail(
            f"--resume continues the run in {output} with its own options, and these differ: "
            f"{'; '.join(conflicts)}. Drop them, or start over with --overwrite (only "
            f"{', '.join(may_change)} may change on a resume)",
            EXIT_USAGE,
        )
    if _given(ctx, "epochs") and not _given(ctx, "max_steps"):
        merged["max_steps"] = None  # --epochs asks for epochs: max_steps would replace them
    merged["show_progress"] = True
    try:
        return TrainConfig.from_dict(merged)
    except ValueError as exc:
        raise fail(f"--resume: {output}'s run config: {exc}", EXIT_INDEX) from exc


@app.command("finetune")
@handled
def finetune_(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="Training data: BGE-M3 JSONL, or a BEIR folder with qrels.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Folder of the result: new or empty (or a previous run with --resume or "
            "--overwrite).",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Base model: a BGE-M3 checkpoint or a dense-only sentence-transformers one "
            f"[default: {DEFAULT_MODEL}; with --resume: the run's].",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[str, typer.Option(help="unified, dense, sparse or colbert.")] = "unified",
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="Steps (replaces --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Queries per forward pass.")] = 8,
    group_size: Annotated[int, typer.Option(help="Passages per query (1 positive).")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Forward passes per optimiser step.")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-5,
    head_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the two heads (default --lr).")
    ] = None,
    head_warmup_steps: Annotated[
        int,
        typer.Option(
            help="First train the heads alone for N steps (backbone frozen, no self-distillation)."
        ),
    ] = 0,
    lexical_init: Annotated[
        str,
        typer.Option(
            help="A new lexical head's start: default (random) or uniform (every token 0.1)."
        ),
    ] = "default",
    warmup: Annotated[float, typer.Option(help="Warm-up share of the steps.")] = 0.1,
    schedule: Annotated[str, typer.Option(help="linear, cosine or constant.")] = "linear",
    temperature: Annotated[float, typer.Option(help="Score temperature.")] = 0.02,
    self_distill: Annotated[
        bool, typer.Option("--self-distill/--no-self-distill", help="Self-distillation.")
    ] = True,
    teacher_scores: Annotated[
        bool, typer.Option(help="Distil from pos_scores/neg_scores in the data.")
    ] = False,
    kd_loss: Annotated[str, typer.Option(help="m3_kd_loss or kl_div.")] = "m3_kd_loss",
    query_max_length: Annotated[int, typer.Option(help="Query truncation (tokens).")] = 64,
    passage_max_length: Annotated[int, typer.Option(help="Passage truncation (tokens).")] = 256,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 autocast.")] = "fp32",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations (less memory).")
    ] = False,
    dev: Annotated[
        Path | None, typer.Option(help="A BEIR folder evaluated every --eval-steps.")
    ] = None,
    dev_split: Annotated[str, typer.Option(help="The qrels split of --dev.")] = "dev",
    eval_steps: Annotated[
        int | None, typer.Option(help="Evaluate --dev every N steps (needs --dev).")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after N evaluations without improvement (needs --dev)."),
    ] = None,
    save_steps: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --output from its newest checkpoint, with its model and "
            "options."
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace the previous run in --output (its contents are deleted)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed (data order, sampling, dropout).")] = 0,
    device: DeviceOption = None,
) -> None:
    """Fine-tune a BGE-M3 (or dense-only) model with BGE-M3's unified loss.

    The result in --output has the BGE-M3 file layout, loadable by M3Encoder and FlagEmbedding.
    """
    from m3rag.train import TrainConfig, finetune, latest_checkpoint
    from m3rag.train.data import check_examples
    from m3rag.train.state import CheckpointError, check_output

    check_device(device)
    if resume and overwrite:
        raise fail(
            "--resume continues the run in --output, --overwrite replaces it: not both",
            EXIT_USAGE,
        )
    if dev is None and (eval_steps is not None or patience is not None):
        raise fail("--eval-steps and --patience evaluate a dev split: give --dev", EXIT_USAGE)
    try:
        run = check_output(output, model, resume=resume, overwrite=overwrite)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except CheckpointError as exc:
        raise fail(str(exc), EXIT_INDEX) from exc
    given = locals()
    values = {name: given[name] for name in _OPTION_FIELDS}
    resume_from = None
    if resume:
        from m3rag.train.state import model_reference

        if run is None:  # pragma: no cover - check_output refuses a resume without a run
            raise fail(f"--resume: no run in {output}", EXIT_USAGE)
        if model is not None and model_reference(model) != run.model:
            raise fail(
                f"--resume continues the run in {output}, which trains {run.model}; drop "
                f"--model {model}, or start over with --overwrite",
                EXIT_USAGE,
            )
        config = _resume_config(ctx, output, run.config, values)
        resume_from = latest_checkpoint(output)
        if resume_from is None:
            raise fail(
                f"--resume: the run in {output} has no checkpoint-<step> yet (it stopped before "
                "its first --save-steps checkpoint); start over with --overwrite",
                EXIT_USAGE,
            )
        base = run.model
    else:
        base = model or DEFAULT_MODEL
        try:
            config = TrainConfig.from_dict({**_config_dict(values), "show_progress": True})
        except ValueError as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
    examples = _load_data(data, "train")
    try:
        check_examples(
            examples,  # type: ignore[arg-type]
            group_size=config.group_size,
            teacher_scores=config.teacher_scores,
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    dev_data = None
    if dev is not None:
        from m3rag.eval import load_beir

        try:
            dev_data = load_beir(dev, split=dev_split)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
    if resume_from is None:
        with loading(base):
            from m3rag.train.model import M3TrainModel

            M3TrainModel(base)  # load errors (exit 3) before any work; cheap next to training
    try:
        result = finetune(
            examples,  # type: ignore[arg-type]
            base,
            output,
            config,
            dev=dev_data,
            resume_from=resume_from,
            overwrite=overwrite,
        )
    except CheckpointError as exc:
        raise fail(str(exc), EXIT_INDEX) from exc
    except ValueError as exc:  # a resume with nothing left to train, a diverged run
        raise fail(str(exc), EXIT_USAGE) from exc
    summary = {
        "output": str(result.output),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "best_step": result.best_step,
        "best_metric": result.best_metric,
        "stopped_early": result.stopped_early,
    }
    out().print_json(json.dumps(summary, allow_nan=False))
