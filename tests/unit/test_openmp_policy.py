"""OpenMP's wait policy for processes where torch shares the cores (the server, its model child)."""

from __future__ import annotations

import os
import sys

import pytest

from m3rag._torchutil import prefer_passive_openmp


def test_openmp_waits_passively_unless_told_otherwise() -> None:
    env: dict[str, str] = {}
    assert prefer_passive_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ("ACTIVE", "PASSIVE", ""):
        env = {"OMP_WAIT_POLICY": chosen}
        assert not prefer_passive_openmp(env)
        assert env == {"OMP_WAIT_POLICY": chosen}  # the user's choice stands


def test_the_process_environment_is_set_only_before_torch_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # set, then deleted: monkeypatch records the variable's state either way and restores it
    monkeypatch.setenv("OMP_WAIT_POLICY", "placeholder")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", object())
    assert not prefer_passive_openmp()  # OpenMP has read it already: setting it would mislead
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert prefer_passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
