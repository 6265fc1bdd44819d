from __future__ import annotations

import subprocess
import sys

import m3rag.train


def test_train_all_is_pinned() -> None:
    assert sorted(m3rag.train.__all__) == sorted(
        [
            "LOSS_MODES",
            "Group",
            "LossConfig",
            "M3TrainModel",
            "TrainConfig",
            "TrainExample",
            "TrainResult",
            "finetune",
            "latest_checkpoint",
            "load_training_data",
            "mine_hard_negatives",
            "read_jsonl",
            "sample_group",
            "write_jsonl",
        ]
    )
    for name in m3rag.train.__all__:
        assert getattr(m3rag.train, name) is not None


def test_importing_m3rag_train_loads_no_torch_and_m3rag_not_train() -> None:
    code = (
        "import sys, m3rag; a = 'm3rag.train' in sys.modules; import m3rag.train;"
        "print(a, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
