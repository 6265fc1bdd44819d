"""The run folder: the output rule, atomic saves, and the pickle-free trainer state."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

torch = pytest.importorskip("torch")

from m3rag.train import state  # noqa: E402
from m3rag.train.state import (  # noqa: E402
    CheckpointError,
    RunInfo,
    check_output,
    load_optimizer_state,
    optimizer_state,
    publish_dir,
    publish_model,
    read_state,
    restore_rng,
    rng_state,
    write_run,
    write_state,
)


def _trained_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = [
        {"params": list(model[0].parameters()), "lr": 1e-2, "weight_decay": 0.01},
        {"params": list(model[1].parameters()), "lr": 3e-3, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for idx in a["state"]:
        assert a["state"][idx].keys() == b["state"][idx].keys()
        for key, value in a["state"][idx].items():
            other = b["state"][idx][key]
            assert type(value) is type(other)
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype
                assert torch.equal(value, other), (idx, key)
            else:
                assert value == other


def test_optimizer_state_round_trips_exactly_without_pickle(tmp_path):
    _, opt = _trained_optimizer()
    meta, tensors = optimizer_state(opt)
    write_state(tmp_path, {"optimizer": meta}, tensors)
    # JSON and safetensors only: no pickle (a torch.save zip holds data.pkl)
    assert sorted(os.listdir(tmp_path)) == ["trainer_state.json", "trainer_state.safetensors"]
    for name in os.listdir(tmp_path):
        assert not zipfile.is_zipfile(tmp_path / name)
    json.loads((tmp_path / "trainer_state.json").read_text("utf-8"))

    loaded_meta, loaded_tensors = read_state(tmp_path)
    _, fresh = _trained_optimizer(seed=1)  # other moments, same layout
    load_optimizer_state(fresh, loaded_meta["optimizer"], loaded_tensors)
    _assert_same_state(opt.state_dict(), fresh.state_dict())
    assert isinstance(fresh.param_groups[0]["betas"], tuple)


def test_rng_states_round_trip(tmp_path):
    cpu = torch.device("cpu")
    torch.manual_seed(5)
    saved = rng_state(cpu)
    expected = torch.rand(4)
    write_state(tmp_path, {}, saved)
    _, tensors = read_state(tmp_path)
    torch.manual_seed(123)
    restore_rng(tensors, cpu)
    assert torch.equal(torch.rand(4), expected)


def test_damaged_or_legacy_state_is_refused_clearly(tmp_path, monkeypatch):
    _, opt = _trained_optimizer()
    meta, tensors = optimizer_state(opt)
    write_state(tmp_path, {"optimizer": meta}, tensors)
    blob = tmp_path / "trainer_state.safetensors"
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"damaged: trainer_state.safetensors cannot be read"):
        read_state(tmp_path)
    (tmp_path / "trainer_state.json").write_text('{"format": "m3rag.trainer_state", "ver')
    with pytest.raises(CheckpointError, match=r"damaged: trainer_state.json") as info:
        read_state(tmp_path)
    assert "weights_only" not in str(info.value)

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({"step": 1}, legacy / "trainer_state.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("a legacy pickle must never be loaded")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match="pickle written by an older m3rag"):
        read_state(legacy)


def test_the_output_rule(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    assert check_output(tmp_path / "new", base) is None
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", base) is None
    with pytest.raises(ValueError, match="is the base model's folder"):
        check_output(base, base, overwrite=True)
    with pytest.raises(ValueError, match="not empty and holds no m3rag fine-tuning run"):
        check_output(base, "BAAI/bge-m3", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output(tmp_path / "file", base)
    with pytest.raises(ValueError, match="holds no run to continue"):
        check_output(tmp_path / "empty", base, resume=True)

    run = tmp_path / "run"
    run.mkdir()
    write_run(run, RunInfo("abc", str(base), {}))
    with pytest.raises(ValueError, match="continue it with --resume, replace it with --overwrite"):
        check_output(run, base)
    assert check_output(run, base, resume=True) == RunInfo("abc", str(base), {})
    assert check_output(run, base, overwrite=True) is not None
    # somebody else's training_args.json is not an m3rag run
    other = tmp_path / "hf"
    other.mkdir()
    (other / "training_args.json").write_text('{"learning_rate": 1}')
    with pytest.raises(ValueError, match="holds no m3rag fine-tuning run"):
        check_output(other, base, overwrite=True)


def test_publish_dir_replaces_whole_folders(tmp_path):
    target = tmp_path / "checkpoint-2"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp = state.temp_dir(tmp_path, "checkpoint-2")
    (tmp / "new.txt").write_text("new")
    publish_dir(tmp, target)
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


def test_a_failed_model_publish_never_leaves_a_loadable_mix(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "sparse_linear.pt"):
        (out / name).write_text("old")
    tmp = state.temp_dir(out, "model")
    for name in ("config.json", "model.safetensors", "sparse_linear.pt"):
        (tmp / name).write_text("new")
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(state.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        publish_model(tmp, out)
    assert not (out / "config.json").exists()  # moved in last: nothing loads the mix
    assert str(calls[0]).endswith(("model.safetensors", "sparse_linear.pt"))
    monkeypatch.setattr(state.os, "replace", real)
    tmp2 = state.temp_dir(out, "model")
    for name in ("config.json", "model.safetensors", "sparse_linear.pt"):
        (tmp2 / name).write_text("new")
    publish_model(tmp2, out)
    assert all((out / n).read_text() == "new" for n in ("config.json", "model.safetensors"))
    assert not tmp2.exists()


def test_a_folder_is_deleted_at_once(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    for name in ("config.json", "trainer_state.json"):
        (ckpt / name).write_text("{}")

    def interrupted(path, ignore_errors=False):
        next(iter(sorted(path.iterdir()))).unlink()  # one file gone, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(state.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        state.remove_dir(ckpt)
    assert not ckpt.exists()  # never half deleted under its name; the rest is temporary
    assert [p.name.startswith(".m3rag-tmp-") for p in tmp_path.iterdir()] == [True]


def test_atomic_writes_keep_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    state.write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert state.temp_dir(tmp_path, "x").stat().st_mode & 0o777 == 0o777 & ~mask
