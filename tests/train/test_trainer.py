"""A few training steps on the tiny checkpoint: layout, loading, resuming, evaluation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m3rag.testing import multilingual_corpus  # noqa: E402
from m3rag.train import LossConfig, TrainConfig, TrainExample, finetune  # noqa: E402

pytestmark = pytest.mark.model


def _examples(n: int = 6) -> list[TrainExample]:
    texts = multilingual_corpus(4 * n, seed=3, max_words=12)
    return [
        TrainExample(texts[4 * i], (texts[4 * i + 1],), (texts[4 * i + 2], texts[4 * i + 3]))
        for i in range(n)
    ]


FAST = {"batch_size": 3, "group_size": 2, "query_max_length": 16, "passage_max_length": 24}


def _state(folder):
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        for k, v in torch.load(folder / name, weights_only=True).items():
            state[f"{name}:{k}"] = v
    return state


def test_finetune_changes_the_weights_and_m3encoder_loads_the_result(tiny_m3_path, tmp_path):
    from m3rag import M3Encoder

    result = finetune(
        _examples(),
        tiny_m3_path,
        tmp_path / "out",
        TrainConfig(max_steps=2, learning_rate=1e-3, **FAST),
    )
    assert result.steps == 2
    assert len(result.history) == 2
    assert {"dense", "sparse", "colbert", "ensemble", "self_distill"} <= set(result.history[0])
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "colbert_linear.pt", "sparse_linear.pt"):
        assert (out / name).is_file()
    before, after = _state(tiny_m3_path), _state(out)
    changed = [k for k in after if k in before and not torch.equal(before[k].float(), after[k])]
    assert any(k.startswith("colbert_linear.pt") for k in changed)
    assert any(k.startswith("sparse_linear.pt") for k in changed)
    assert any(k.startswith("encoder.") for k in changed)
    enc = M3Encoder(out, device="cpu")
    assert enc.heads == ("dense", "sparse", "colbert")
    assert enc.pooling == "cls"


@pytest.mark.oracle
def test_bge_m3_flag_model_loads_the_result_and_agrees(tiny_m3_path, tmp_path):
    from FlagEmbedding import BGEM3FlagModel

    from m3rag import M3Encoder

    finetune(_examples(), tiny_m3_path, tmp_path / "out", TrainConfig(max_steps=1, **FAST))
    texts = ["a short text", "北京是中国的首都。"]
    ours = M3Encoder(tmp_path / "out", device="cpu").encode(texts, sparse=True, colbert=True)
    ref = BGEM3FlagModel(str(tmp_path / "out"), use_fp16=False, devices="cpu")
    theirs = ref.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(ours.dense_vecs, theirs["dense_vecs"], atol=1e-6)
    for a, b in zip(ours.colbert_vecs, theirs["colbert_vecs"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(ours.lexical_weights, theirs["lexical_weights"], strict=True):
        assert a.keys() == {int(k) for k in b}
        np.testing.assert_allclose([a[int(k)] for k in b], list(b.values()), atol=1e-6)


def _dense_only(tiny_m3_path, folder):
    """The tiny checkpoint as a mean-pooling sentence-transformers folder without heads."""
    shutil.copytree(tiny_m3_path, folder)
    (folder / "colbert_linear.pt").unlink()
    (folder / "sparse_linear.pt").unlink()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules), "utf-8")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True}), "utf-8"
    )
    return folder


def test_dense_only_base_becomes_a_three_head_mean_pooling_model(tiny_m3_path, tmp_path):
    from m3rag import M3Encoder

    base = _dense_only(tiny_m3_path, tmp_path / "st")
    assert M3Encoder(base, device="cpu").heads == ("dense",)
    finetune(_examples(), base, tmp_path / "out", TrainConfig(max_steps=1, **FAST))
    enc = M3Encoder(tmp_path / "out", device="cpu")
    assert enc.heads == ("dense", "sparse", "colbert")
    assert enc.pooling == "mean"
    out = enc.encode(["hello world"], sparse=True, colbert=True)
    assert out.colbert_vecs[0].shape[1] == enc.dim


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert"])
def test_single_head_modes_train_only_their_head(tiny_m3_path, tmp_path, mode):
    result = finetune(
        _examples(),
        tiny_m3_path,
        tmp_path / "out",
        TrainConfig(loss=LossConfig(mode=mode), max_steps=1, learning_rate=1e-3, **FAST),
    )
    assert set(result.history[0]) == {"step", "lr", "loss", mode}
    before, after = _state(tiny_m3_path), _state(tmp_path / "out")
    for head in ("colbert", "sparse"):
        moved = not torch.equal(
            before[f"{head}_linear.pt:weight"].float(), after[f"{head}_linear.pt:weight"]
        )
        assert moved == (head == mode)


def _resumed_run_matches(tiny_m3_path, tmp_path, cfg):
    """Train 4 steps twice, and again from the first run's step-2 checkpoint: all end alike.

    Bit for bit, dropout included: the torch generator is seeded from the run's seed and its
    state travels with the checkpoint.
    """
    examples = _examples(6)  # 2 batches an epoch: the resumed run replays the next epoch
    torch.manual_seed(1)  # whatever the caller's generator holds, the run's seed decides
    full = finetune(examples, tiny_m3_path, tmp_path / "full", cfg)
    assert (tmp_path / "full" / "checkpoint-2" / "trainer_state.json").is_file()
    torch.manual_seed(2)
    twice = finetune(examples, tiny_m3_path, tmp_path / "twice", cfg)
    torch.manual_seed(3)
    resumed = finetune(
        examples,
        tiny_m3_path,
        tmp_path / "again",
        cfg,
        resume_from=tmp_path / "full" / "checkpoint-2",
    )
    assert resumed.steps == 4
    assert twice.history == full.history
    assert resumed.history == full.history  # the steps before the checkpoint included
    a, b, c = _state(tmp_path / "full"), _state(tmp_path / "twice"), _state(tmp_path / "again")
    for k in a:
        assert torch.equal(b[k], a[k]), k
        assert torch.equal(c[k], a[k]), k
    return full


RESUMABLE = {"max_steps": 4, "save_steps": 2, "learning_rate": 1e-3}


def test_runs_repeat_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_m3_path, tmp_path):
    cfg = TrainConfig(save_total_limit=3, **RESUMABLE, **FAST)
    assert cfg.dropout
    _resumed_run_matches(tiny_m3_path, tmp_path, cfg)


def test_training_leaves_the_callers_torch_generator_alone(tiny_m3_path, tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    finetune(_examples(), tiny_m3_path, tmp_path / "out", TrainConfig(max_steps=1, **FAST))
    assert torch.equal(torch.rand(3), expected)


def test_teacher_scores_and_gradient_accumulation_run(tiny_m3_path, tmp_path):
    examples = [TrainExample(e.query, e.pos, e.neg, (1.0,), (0.5, -0.5)) for e in _examples(4)]
    result = finetune(
        examples,
        tiny_m3_path,
        tmp_path / "out",
        TrainConfig(
            max_steps=1,
            teacher_scores=True,
            gradient_accumulation_steps=2,
            schedule="cosine",
            precision="bf16",
            **{**FAST, "batch_size": 2},
        ),
    )
    assert result.steps == 1
    assert np.isfinite(result.history[0]["loss"])


def test_dev_evaluation_keeps_the_best_model_and_stops_early(tiny_m3_path, tmp_path):
    from m3rag.eval import BeirDataset

    examples = _examples(6)
    corpus = {f"d{i}": p for i, e in enumerate(examples) for p in e.pos}
    dev = BeirDataset(
        "dev",
        corpus,
        dict.fromkeys(corpus, ""),
        {f"q{i}": e.query for i, e in enumerate(examples)},
        {f"q{i}": {f"d{i}": 1} for i in range(len(examples))},
    )
    # a vanishing learning rate: the metric cannot improve, so patience 1 stops at step 2
    cfg = TrainConfig(
        max_steps=5,
        eval_steps=1,
        early_stopping_patience=1,
        learning_rate=1e-12,
        head_learning_rate=1e-12,
        dropout=False,
        **{**FAST, "batch_size": 2},
    )
    result = finetune(examples, tiny_m3_path, tmp_path / "out", cfg, dev=dev)
    assert result.stopped_early
    assert result.steps == 2
    assert [e["step"] for e in result.evals] == [1.0, 2.0]
    assert result.best_step == 1
    assert result.best_metric == result.evals[0]["ndcg@10"]


def test_head_warmup_trains_the_heads_alone_without_self_distillation(tiny_m3_path, tmp_path):
    cfg = TrainConfig(
        max_steps=3,
        head_warmup_steps=2,
        save_steps=1,
        save_total_limit=3,
        learning_rate=1e-3,
        **FAST,
    )
    result = finetune(_examples(), tiny_m3_path, tmp_path / "out", cfg)
    assert result.steps == 3
    # no distillation from the untrained heads' ensemble while they warm up, then as usual
    assert ["self_distill" in r for r in result.history] == [False, False, True]
    assert [r["lr"] for r in result.history[:2]] == [1e-3, 1e-3]  # constant while frozen
    base, warm, end = (
        _state(tiny_m3_path),
        _state(tmp_path / "out" / "checkpoint-2"),
        _state(tmp_path / "out"),
    )
    backbone = [k for k in base if ":" not in k]
    assert all(torch.equal(base[k].float(), warm[k]) for k in backbone)
    assert not all(torch.equal(warm[k], end[k]) for k in backbone)
    for head in ("colbert_linear.pt:weight", "sparse_linear.pt:weight"):
        assert not torch.equal(base[head].float(), warm[head])


def test_head_warmup_is_checked():
    with pytest.raises(ValueError, match="head_warmup_steps must be an int"):
        TrainConfig(head_warmup_steps=-1)
    with pytest.raises(ValueError, match="leaves no step"):
        TrainConfig(max_steps=2, head_warmup_steps=2)
    with pytest.raises(ValueError, match="trains no head"):
        TrainConfig(loss=LossConfig(mode="dense"), head_warmup_steps=1)


def test_uniform_lexical_init_gives_every_token_the_same_weight(tiny_m3_path, tmp_path):
    from m3rag import M3Encoder
    from m3rag.train.model import M3TrainModel

    base = _dense_only(tiny_m3_path, tmp_path / "st")
    model = M3TrainModel(base, lexical_init="uniform")
    assert torch.count_nonzero(model.sparse_linear.weight) == 0
    assert model.sparse_linear.bias.item() == pytest.approx(0.1)
    enc = M3Encoder(model.save(tmp_path / "m"), device="cpu")
    weights = enc.encode(["alpha beta gamma"], sparse=True).lexical_weights[0]
    assert weights and set(np.round(list(weights.values()), 6)) == {0.1}
    # a base with heads keeps its own lexical head
    kept = M3TrainModel(tiny_m3_path, lexical_init="uniform")
    assert torch.count_nonzero(kept.sparse_linear.weight) > 0
    with pytest.raises(ValueError, match="lexical_init"):
        M3TrainModel(base, lexical_init="zeros")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lexical_init"):
        TrainConfig(lexical_init="zeros")  # type: ignore[arg-type]


def test_fp16_trains_with_a_scaler_that_checkpoints_and_resumes(tiny_m3_path, tmp_path):
    # the gradient scaler runs on every device: on this CPU it is the path a GPU takes. Its
    # first steps overflow and are skipped; the schedule must not step past them (PyTorch
    # warns, and the suite turns warnings into errors)
    cfg = TrainConfig(save_total_limit=3, precision="fp16", **RESUMABLE, **FAST)
    full = _resumed_run_matches(tiny_m3_path, tmp_path, cfg)
    assert all(np.isfinite(r["loss"]) for r in full.history)
    state = json.loads((tmp_path / "full" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint


@pytest.mark.parametrize(("epochs", "steps"), [(1, 2), (2, 4), (3, 6)])
def test_accumulation_steps_at_each_epoch_end_as_planned(
    tiny_m3_path, tmp_path, monkeypatch, epochs, steps
):
    # 6 batches of 1 with 4 per step: each epoch takes a full and a partial step (transformers'
    # Trainer does the same); the schedule plans exactly the steps taken, so it ends at 0
    clipped = []
    real = torch.nn.utils.clip_grad_norm_

    def counting(params, max_norm):
        clipped.append(max_norm)
        return real(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting)
    from m3rag.train.model import M3TrainModel

    passes = []
    forward = M3TrainModel.forward

    def counted(self, *args, **kwargs):
        passes.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(M3TrainModel, "forward", counted)
    cfg = TrainConfig(
        epochs=epochs, gradient_accumulation_steps=4, warmup_ratio=0, **{**FAST, "batch_size": 1}
    )
    result = finetune(_examples(6), tiny_m3_path, tmp_path / "out", cfg)
    assert result.steps == steps
    assert [r["step"] for r in result.history] == [float(s) for s in range(1, steps + 1)]
    assert result.history[-1]["lr"] == 0.0
    assert len(clipped) == steps  # the partial steps are clipped too
    assert len(passes) == 6 * epochs  # every batch of every epoch, once


def test_a_partial_step_averages_over_its_own_batches(tiny_m3_path, tmp_path):
    # the second step of an epoch of 3 batches with 2 per step has 1 batch: it weighs it fully,
    # as one batch with gradient_accumulation_steps=1 would (same data, same first update)
    common = {"learning_rate": 1e-3, "dropout": False, "schedule": "constant", "warmup_ratio": 0}
    one = {**FAST, "batch_size": 2}
    a = finetune(
        _examples(2),
        tiny_m3_path,
        tmp_path / "a",
        TrainConfig(max_steps=1, gradient_accumulation_steps=2, **common, **one),
    )
    b = finetune(
        _examples(2), tiny_m3_path, tmp_path / "b", TrainConfig(max_steps=1, **common, **one)
    )
    assert a.history == b.history
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0, msg=k)


def test_a_diverging_run_stops_and_saves_nothing(tiny_m3_path, tmp_path):
    from m3rag.train.state import TrainingDivergedError

    cfg = TrainConfig(max_steps=3, learning_rate=1e30, **FAST)
    with pytest.raises(TrainingDivergedError, match="the loss is nan at step 2"):
        finetune(_examples(), tiny_m3_path, tmp_path / "out", cfg)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["training_args.json"]


def test_non_finite_weights_are_never_saved(tiny_m3_path):
    from m3rag.train.model import M3TrainModel
    from m3rag.train.state import TrainingDivergedError
    from m3rag.train.trainer import _check_finite_weights

    model = M3TrainModel(tiny_m3_path)
    _check_finite_weights(model, 1)
    with torch.no_grad():
        model.sparse_linear.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"sparse_linear\.weight holds NaN or infinite"):
        _check_finite_weights(model, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
        ({"head_learning_rate": float("inf")}, "head_learning_rate must be a finite"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm must be a finite"),
        ({"max_steps": 0}, "max_steps must be an int >= 1"),
        ({"save_total_limit": 0}, "save_total_limit"),
    ],
)
def test_config_refuses_non_finite_and_empty_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="temperature must be a finite"):
        LossConfig(temperature=float("inf"))
    with pytest.raises(ValueError, match="teacher_weights must be 3 finite"):
        LossConfig(teacher_weights=(1.0, float("nan"), 1.0))


def test_examples_are_checked_before_anything_loads_or_is_written(tmp_path):
    good = _examples(2)
    bare = TrainExample("q", ("p",), source="data.jsonl:7")
    with pytest.raises(ValueError, match=r"data\.jsonl:7: no negatives but group_size=2"):
        finetune([*good, bare], tmp_path / "no-model", tmp_path / "out", TrainConfig(**FAST))
    assert not (tmp_path / "out").exists()


def test_evaluation_options_need_a_dev_split(tiny_m3_path, tmp_path):
    for opts in ({"eval_steps": 1}, {"early_stopping_patience": 2}):
        with pytest.raises(ValueError, match="need a dev split"):
            finetune(_examples(), tiny_m3_path, tmp_path / "out", TrainConfig(**opts, **FAST))
    assert not (tmp_path / "out").exists()


def test_config_round_trips_through_its_dict():
    cfg = TrainConfig(loss=LossConfig(mode="sparse", teacher_weights=(1, 0.5, 1)), max_steps=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"nope": 1})
