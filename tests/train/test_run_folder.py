"""A run's output folder on the tiny checkpoint: what it refuses, atomic saves, resuming."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from m3rag.testing import multilingual_corpus  # noqa: E402
from m3rag.train import TrainConfig, TrainExample, finetune, latest_checkpoint  # noqa: E402
from m3rag.train import trainer as trainer_module  # noqa: E402
from m3rag.train.state import CheckpointError  # noqa: E402

pytestmark = pytest.mark.model

FAST = {"batch_size": 3, "group_size": 2, "query_max_length": 16, "passage_max_length": 24}


def _examples(n: int = 6) -> list[TrainExample]:
    texts = multilingual_corpus(4 * n, seed=3, max_words=12)
    return [
        TrainExample(texts[4 * i], (texts[4 * i + 1],), (texts[4 * i + 2], texts[4 * i + 3]))
        for i in range(n)
    ]


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_output_must_not_be_the_base_model_or_a_foreign_folder(tiny_m3_path, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_m3_path, base)
    before = _digest(base)
    with pytest.raises(ValueError, match="is the base model's folder"):
        finetune(_examples(), base, base, TrainConfig(max_steps=1, **FAST), overwrite=True)
    assert _digest(base) == before

    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match="not empty and holds no m3rag fine-tuning run"):
        finetune(_examples(), base, user, TrainConfig(max_steps=1, **FAST), overwrite=True)
    assert sorted(os.listdir(user)) == ["config.json", "notes.txt"]
    assert (user / "config.json").read_text() == '{"mine": true}'


def test_a_previous_run_is_continued_or_replaced_never_mixed(tiny_m3_path, tmp_path):
    out = tmp_path / "out"
    cfg = TrainConfig(max_steps=6, save_steps=2, **FAST)
    finetune(_examples(), tiny_m3_path, out, cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    again = TrainConfig(max_steps=2, save_steps=1, **FAST)
    with pytest.raises(ValueError, match="continue it with --resume, replace it with --overwrite"):
        finetune(_examples(), tiny_m3_path, out, again)
    result = finetune(_examples(), tiny_m3_path, out, again, overwrite=True)
    assert result.steps == 2
    # the old run's checkpoints are gone, the new ones kept
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert latest_checkpoint(out) == out / "checkpoint-2"


def test_checkpoints_of_another_run_are_neither_resumed_nor_pruned(tiny_m3_path, tmp_path):
    out = tmp_path / "out"
    cfg = TrainConfig(max_steps=2, save_steps=1, **FAST)
    finetune(_examples(), tiny_m3_path, out, cfg)
    stray = out / "checkpoint-99"
    shutil.copytree(out / "checkpoint-2", stray)
    state = json.loads((stray / "trainer_state.json").read_text())
    state["run_id"] = "another-run"
    (stray / "trainer_state.json").write_text(json.dumps(state))
    assert latest_checkpoint(out) == out / "checkpoint-2"
    longer = TrainConfig(max_steps=4, save_steps=1, **FAST)
    result = finetune(_examples(), None, out, longer, resume_from=latest_checkpoint(out))
    assert result.steps == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-99",
    ]


def test_an_interrupted_checkpoint_save_leaves_no_checkpoint(tiny_m3_path, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = trainer_module.write_state
    calls = []

    def interrupted(folder, meta, tensors):
        calls.append(folder)
        if len(calls) == 3:
            (folder / "trainer_state.json").write_text('{"trunc')  # half written, then Ctrl-C
            raise KeyboardInterrupt
        real(folder, meta, tensors)

    monkeypatch.setattr(trainer_module, "write_state", interrupted)
    cfg = TrainConfig(max_steps=5, save_steps=1, **FAST)
    with pytest.raises(KeyboardInterrupt):
        finetune(_examples(), tiny_m3_path, out, cfg)
    # checkpoint-3 never appears; the limit of 2 holds; no temporary folder is left
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2", "training_args.json"]
    assert latest_checkpoint(out) == out / "checkpoint-2"
    monkeypatch.setattr(trainer_module, "write_state", real)
    result = finetune(_examples(), None, out, cfg, resume_from=out / "checkpoint-2")
    assert result.steps == 5


def test_an_interrupted_final_save_leaves_no_model(tiny_m3_path, tmp_path, monkeypatch):
    from m3rag.train.model import M3TrainModel

    def interrupted(self, folder):
        raise KeyboardInterrupt  # after the weights and heads, before the pooling metadata

    monkeypatch.setattr(M3TrainModel, "_write_st_metadata", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        finetune(_examples(), tiny_m3_path, out, TrainConfig(max_steps=1, **FAST))
    assert os.listdir(out) == ["training_args.json"]


def test_a_damaged_checkpoint_is_reported_by_name(tiny_m3_path, tmp_path):
    out = tmp_path / "out"
    cfg = TrainConfig(max_steps=2, save_steps=1, **FAST)
    finetune(_examples(), tiny_m3_path, out, cfg)
    blob = out / "checkpoint-2" / "trainer_state.safetensors"
    blob.write_bytes(blob.read_bytes()[:64])
    longer = TrainConfig(max_steps=3, save_steps=1, **FAST)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-2 is damaged: trainer_state.safetensors"
    ):
        finetune(_examples(), None, out, longer, resume_from=latest_checkpoint(out))
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"broken")
    shutil.copy(out / "checkpoint-1" / "trainer_state.safetensors", blob)
    with pytest.raises(CheckpointError, match="checkpoint-2 is damaged: its model"):
        finetune(_examples(), None, out, longer, resume_from=latest_checkpoint(out))


def test_a_resume_keeps_its_model_and_config(tiny_m3_path, tmp_path):
    out = tmp_path / "out"
    cfg = TrainConfig(max_steps=2, save_steps=2, **FAST)
    finetune(_examples(), tiny_m3_path, out, cfg)
    ckpt = out / "checkpoint-2"
    other = tmp_path / "other"
    shutil.copytree(tiny_m3_path, other)
    with pytest.raises(ValueError, match=r"not .*other; a resumed run keeps its base model"):
        finetune(_examples(), other, out, cfg, resume_from=ckpt)
    changed = TrainConfig(max_steps=3, head_learning_rate=1e-3, **{**FAST, "batch_size": 2})
    with pytest.raises(ValueError, match="batch_size, head_learning_rate differ"):
        finetune(_examples(), None, out, changed, resume_from=ckpt)
    with pytest.raises(ValueError, match="at step 2 and this run plans 2 steps: nothing is left"):
        finetune(_examples(), tiny_m3_path, out, cfg, resume_from=ckpt)
    # more steps and other checkpointing may change; the history is kept across the resume
    longer = TrainConfig(max_steps=3, save_steps=1, save_total_limit=3, **FAST)
    result = finetune(_examples(), None, out, longer, resume_from=ckpt)
    assert [r["step"] for r in result.history] == [1.0, 2.0, 3.0]
    log = json.loads((out / "trainer_log.json").read_text())
    assert [r["step"] for r in log["history"]] == [1.0, 2.0, 3.0]
    args = json.loads((out / "training_args.json").read_text())
    assert args["config"]["max_steps"] == 3
    assert args["model"] == str(tiny_m3_path.resolve())


def test_a_legacy_pickle_checkpoint_is_refused(tiny_m3_path, tmp_path):
    out = tmp_path / "out"
    finetune(_examples(), tiny_m3_path, out, TrainConfig(max_steps=1, save_steps=1, **FAST))
    ckpt = out / "checkpoint-1"
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (ckpt / name).unlink()
    torch.save({"step": 1}, ckpt / "trainer_state.pt")
    assert latest_checkpoint(out) == ckpt
    with pytest.raises(CheckpointError, match="pickle written by an older m3rag"):
        finetune(_examples(), None, out, TrainConfig(max_steps=2, **FAST), resume_from=ckpt)
