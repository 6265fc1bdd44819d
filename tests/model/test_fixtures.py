"""The test checkpoints really have the BAAI/bge-m3 and bge-reranker-v2-m3 file layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.model


def test_m3_layout(tiny_m3_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    names = {p.name for p in tiny_m3_path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "colbert_linear.pt",
        "sparse_linear.pt",
    } <= names
    config = json.loads((tiny_m3_path / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta"
    assert config["architectures"] == ["XLMRobertaModel"]
    assert config["max_position_embeddings"] == 8194
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 0, 2)
    for head, shape in (("colbert_linear.pt", (32, 32)), ("sparse_linear.pt", (1, 32))):
        state = torch.load(tiny_m3_path / head, weights_only=True)
        assert set(state) == {"weight", "bias"}
        assert state["weight"].dtype == torch.float16  # stored in fp16 as the real heads
        assert tuple(state["weight"].shape) == shape
    tok = AutoTokenizer.from_pretrained(tiny_m3_path)
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids("<mask>") == len(tok) - 1 == config["vocab_size"] - 1
    ids = tok("北京 東京 القاهرة 🎉")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tok("q", "p")["input_ids"].count(2) == 3  # <s> q </s></s> p </s>
    # trained on the scripts it will see: CJK and Arabic are not all <unk>
    assert sum(i == 3 for i in tok("北京是中国的首都 القاهرة")["input_ids"]) == 0


def test_reranker_layout(tiny_reranker_path: Path) -> None:
    config = json.loads((tiny_reranker_path / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert config.get("num_labels", len(config.get("id2label", {}))) == 1
    assert config["max_position_embeddings"] == 8194
    assert (tiny_reranker_path / "model.safetensors").is_file()
