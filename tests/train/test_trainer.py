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


def test_resumed_run_ends_where_an_uninterrupted_one_does(tiny_m3_path, tmp_path):
    cfg = TrainConfig(
        max_steps=4, save_steps=2, learning_rate=1e-3, dropout=False, save_total_limit=3, **FAST
    )
    examples = _examples(6)  # 2 batches an epoch: the resumed run replays the next epoch
    finetune(
        examples,
        tiny_m3_path,
        tmp_path / "full",
        cfg,
    )
    assert (tmp_path / "full" / "checkpoint-2" / "trainer_state.pt").is_file()
    resumed = finetune(
        examples,
        tiny_m3_path,
        tmp_path / "again",
        cfg,
        resume_from=tmp_path / "full" / "checkpoint-2",
    )
    assert resumed.steps == 4
    assert len(resumed.history) == 2
    full, again = _state(tmp_path / "full"), _state(tmp_path / "again")
    for k in full:
        torch.testing.assert_close(again[k], full[k], atol=1e-6, rtol=1e-5, msg=k)


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
