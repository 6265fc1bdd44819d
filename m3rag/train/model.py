"""The trainable BGE-M3 model: a backbone plus the ColBERT and lexical heads.

Loads any checkpoint `M3Encoder` loads (with the same file checks) and computes the heads with
the encoder's own code (`m3rag.encoder.m3.head_outputs`), so a fine-tuned model scores at
inference exactly as it was trained. A dense-only base (a sentence-transformers folder such as
all-MiniLM-L6-v2) gets freshly initialised heads -- ``colbert_linear`` ``Linear(h, h)`` and
``sparse_linear`` ``Linear(h, 1)``, the BGE-M3 shapes -- and is saved as a three-head model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from m3rag._hub import resolve_model_dir
from m3rag._modelfiles import check_weights, load_linear_head, load_pretrained, load_tokenizer
from m3rag.encoder._checkpoint import COLBERT_FILE, SPARSE_FILE, inspect_checkpoint
from m3rag.encoder.m3 import head_outputs
from m3rag.train.loss import M3Reps, lexical_vocab_scores

__all__ = ["LEXICAL_INITS", "M3TrainModel"]

LexicalInit = Literal["default", "uniform"]
LEXICAL_INITS: tuple[LexicalInit, ...] = ("default", "uniform")
# The weight of every token under ``lexical_init="uniform"``: BGE-M3's trained lexical weights are
# of this order (0.1-0.3), so the scores over tau = 0.02 start in a trainable range.
UNIFORM_LEXICAL_WEIGHT = 0.1

_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


class M3TrainModel(torch.nn.Module):
    """Backbone + ``colbert_linear`` + ``sparse_linear``, trained in float32.

    Args:
        model_name_or_path: A BGE-M3-layout checkpoint or a dense-only sentence-transformers
            folder (then the heads are new, drawn from ``torch.nn.Linear``'s default
            initialisation under ``seed``).
        seed: Seeds the new heads' initialisation.
        trust_remote_code: As for `M3Encoder`.
        lexical_init: How a *new* lexical head starts (a base with heads keeps its own):
            ``"default"`` is ``torch.nn.Linear``'s random initialisation, as FlagEmbedding;
            ``"uniform"`` gives every token the same weight 0.1 (zero weights, bias 0.1), an
            unweighted term match that training then reweights. Behind the ReLU a random head
            zeroes about half of the tokens (and they get no gradient), so it starts as a poor
            matcher; the uniform start ranks better from step 0 and trains further.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str],
        *,
        seed: int = 0,
        trust_remote_code: bool = False,
        lexical_init: LexicalInit = "default",
    ) -> None:
        super().__init__()
        if lexical_init not in LEXICAL_INITS:
            msg = f"lexical_init must be one of {LEXICAL_INITS}, got {lexical_init!r}"
            raise ValueError(msg)
        from transformers import AutoModel

        folder = resolve_model_dir(model_name_or_path)
        self.source = folder
        info = inspect_checkpoint(folder)
        self.info = info
        weights = check_weights(folder, info.config)
        hidden = info.hidden_size
        self.new_heads = info.kind != "m3"
        if self.new_heads:
            generator = torch.Generator().manual_seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                self.colbert_linear = torch.nn.Linear(hidden, hidden)
                self.sparse_linear = torch.nn.Linear(hidden, 1)
            if lexical_init == "uniform":
                with torch.no_grad():
                    self.sparse_linear.weight.zero_()
                    self.sparse_linear.bias.fill_(UNIFORM_LEXICAL_WEIGHT)
        else:
            self.colbert_linear = load_linear_head(
                folder / COLBERT_FILE, hidden, None, torch.float32
            )
            self.sparse_linear = load_linear_head(folder / SPARSE_FILE, hidden, 1, torch.float32)
        self.tokenizer = load_tokenizer(
            folder, info.config, needs=("cls", "sep", "pad"), trust_remote_code=trust_remote_code
        )
        self.backbone = load_pretrained(
            AutoModel, folder, weights, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        tok = self.tokenizer
        specials = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
        self.register_buffer(
            "special_ids",
            torch.tensor(sorted(i for i in specials if i is not None), dtype=torch.long),
            persistent=False,
        )
        self.pooling = info.pooling
        self.max_length = info.max_length

    def _special_ids(self) -> torch.Tensor:
        ids = self.special_ids
        if not isinstance(ids, torch.Tensor):  # pragma: no cover - registered in __init__
            msg = "special_ids buffer missing"
            raise TypeError(msg)
        return ids

    def freeze_backbone(self, *, frozen: bool = True) -> None:
        """Train the heads alone (``True``) or the whole model again (``False``).

        A frozen backbone's parameters get no gradient and its forward pass records no graph.
        """
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the backbone's activations in the backward pass (less memory, more time)."""
        self.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    def _side(
        self, ids: torch.Tensor, mask: torch.Tensor, heads: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        hidden = self.backbone(input_ids=ids, attention_mask=mask, return_dict=True)
        return head_outputs(
            hidden.last_hidden_state,
            mask,
            heads,  # type: ignore[arg-type]
            pooling=self.pooling,
            sparse_linear=self.sparse_linear,
            colbert_linear=self.colbert_linear,
        )

    def forward(
        self,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        p_ids: torch.Tensor,
        p_mask: torch.Tensor,
        heads: tuple[str, ...] = ("dense", "sparse", "colbert"),
    ) -> tuple[M3Reps, M3Reps]:
        """Representations of a batch of queries [B, Lq] and passages [B*G, Lp]."""
        q = self._side(q_ids, q_mask, heads)
        p = self._side(p_ids, p_mask, heads)
        q_sparse = p_sparse = None
        if "sparse" in heads:
            q_sparse, p_sparse = lexical_vocab_scores(
                q_ids, q["sparse"], p_ids, p["sparse"], self._special_ids()
            )
        return (
            M3Reps(q.get("dense"), q_sparse, q.get("colbert"), q_mask),
            M3Reps(p.get("dense"), p_sparse, p.get("colbert"), p_mask),
        )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the BGE-M3 file layout into ``folder``.

        That is ``model.safetensors``, ``config.json``, the tokenizer, ``colbert_linear.pt`` and
        ``sparse_linear.pt`` (plain state dicts), and
        sentence-transformers metadata declaring the pooling.

        `M3Encoder` and FlagEmbedding's ``BGEM3FlagModel`` both load the folder (pass
        ``pooling_method="mean"`` to the latter for a model fine-tuned from a mean-pooling base).
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        for name, layer in ((COLBERT_FILE, self.colbert_linear), (SPARSE_FILE, self.sparse_linear)):
            state = {
                k: v.detach().to("cpu", torch.float32).clone()
                for k, v in layer.state_dict().items()
            }
            torch.save(state, out / name)
        self._write_st_metadata(out)
        return out

    def _write_st_metadata(self, out: Path) -> None:
        """modules.json + 1_Pooling: what `inspect_checkpoint` reads the pooling and length from."""
        src = self.source
        if src.resolve() != out.resolve():
            for name in _ST_FILES:
                if (src / name).is_file():
                    shutil.copyfile(src / name, out / name)
        modules_file = out / "modules.json"
        modules: list[dict[str, Any]]
        if modules_file.is_file():
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        else:
            modules = [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
            modules_file.write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
        for module in modules:
            if str(module.get("type", "")).endswith(".Pooling"):
                pool_dir = out / str(module.get("path", "1_Pooling"))
                pool_dir.mkdir(parents=True, exist_ok=True)
                conf = {
                    "word_embedding_dimension": self.info.hidden_size,
                    "pooling_mode_cls_token": self.pooling == "cls",
                    "pooling_mode_mean_tokens": self.pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                }
                (pool_dir / "config.json").write_text(json.dumps(conf, indent=2) + "\n", "utf-8")
            elif str(module.get("type", "")).endswith(".Normalize"):
                (out / str(module.get("path", "2_Normalize"))).mkdir(parents=True, exist_ok=True)
