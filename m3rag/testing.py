"""Build tiny random checkpoints in the exact file layout of the real models, offline.

Used by the test suite, the examples and the benchmarks: model weights cannot be downloaded
everywhere, but the *code paths* (file layout, tokenizer, heads stored in fp16, XLM-R position ids
up to 8194) can be exercised exactly on random weights. The layouts follow ``BAAI/bge-m3``
(``XLMRobertaModel`` + ``colbert_linear.pt`` + ``sparse_linear.pt``) and ``BAAI/bge-reranker-v2-m3``
(``XLMRobertaForSequenceClassification``, ``num_labels=1``).

The tokenizer is an XLM-R style unigram sentencepiece model trained in-process with
``tokenizers`` on multilingual text (Latin, CJK, Arabic, Cyrillic, emoji), saved as a fast
tokenizer with ids ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and ``<mask>`` last.

Example:
    ```python
    from m3rag.testing import build_m3_checkpoint
    folder = build_m3_checkpoint("/tmp/tiny-m3")
    ```
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from m3rag.encoder.fake import FakeEncoder

__all__ = [
    "MULTILINGUAL_SAMPLES",
    "FakeEncoder",
    "build_m3_checkpoint",
    "build_reranker_checkpoint",
    "build_tokenizer",
    "multilingual_corpus",
]

# Seed sentences per language; the corpus generator recombines their words.
MULTILINGUAL_SAMPLES: dict[str, list[str]] = {
    "en": [
        "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
        "BM25 is a bag-of-words retrieval function that ranks a set of documents by the query terms in each one.",
        "The meeting discussed the budget for the new library building and the opening hours on weekends.",
        "Long documents are split into overlapping windows so that every passage fits in the model.",
        "What is the capital of France? Paris is the capital and most populous city of France.",
        "Rainfall in the northern valleys doubled this year, flooding several farms near the river.",
    ],
    "zh": [
        "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
        "混合检索结合了稠密向量、稀疏词权重和多向量交互三种方法。",
        "长文档会被切分成有重叠的窗口，每个片段都能放进模型里。",
        "今天的会议讨论了新图书馆的预算和周末的开放时间。",
        "机器学习模型需要大量的训练数据才能取得良好的效果。",
    ],
    "ja": [
        "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
        "検索システムは文書の中から質問に関連する部分を見つけます。",
        "今日はとても良い天気なので、公園で散歩をしました。",
        "この文章は日本語のテストのために書かれました。",
    ],
    "ar": [
        "القاهرة هي عاصمة مصر وأكبر مدنها من حيث عدد السكان.",
        "يساعد نظام البحث المستخدمين في العثور على المعلومات بسرعة.",
        "تمت مناقشة ميزانية المكتبة الجديدة في اجتماع اليوم.",
    ],
    "de": [
        "Die Bibliothek bleibt am Wochenende geöffnet, damit Studierende lernen können.",
        "Lange Dokumente werden in überlappende Abschnitte zerlegt.",
    ],
    "fr": [
        "La recherche hybride combine des vecteurs denses et des poids lexicaux.",
        "Paris est la capitale de la France et sa ville la plus peuplée.",
    ],
    "ru": [
        "Москва является столицей России и крупнейшим городом страны.",
        "Поисковая система находит документы, относящиеся к запросу.",
    ],
    "ko": [
        "서울은 대한민국의 수도이며 가장 큰 도시입니다.",
        "검색 시스템은 질문과 관련된 문서를 찾아 줍니다.",
    ],
    "emoji": [
        "Great job 🎉🎉 see you tomorrow 👋 ☕️",
        "🔥 hot take: retrieval beats generation 🤖📚",
        "天气很好 ☀️ 我们去公园吧 🌳",
    ],
}

_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def _space_free(lang: str) -> bool:
    return lang in {"zh", "ja"}


def multilingual_corpus(
    n: int,
    *,
    seed: int = 0,
    min_words: int = 3,
    max_words: int = 60,
) -> list[str]:
    """Return ``n`` reproducible pseudo-sentences mixing the languages of the samples.

    Each text picks one language and recombines words (characters for Chinese and Japanese) of
    that language's samples, with lengths drawn log-uniformly between ``min_words`` and
    ``max_words``, so a corpus has both short and long texts.

    Args:
        n: Number of texts.
        seed: Random seed.
        min_words: Minimum length in words (characters for CJK).
        max_words: Maximum length in words (characters for CJK).

    Returns:
        The texts.
    """
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for lang, sentences in MULTILINGUAL_SAMPLES.items():
        if _space_free(lang):
            pools[lang] = [ch for s in sentences for ch in s]
        else:
            pools[lang] = [w for s in sentences for w in s.split()]
    langs = sorted(pools)
    out: list[str] = []
    for _ in range(n):
        lang = rng.choice(langs)
        length = round(min_words * (max_words / min_words) ** rng.random())
        words = [rng.choice(pools[lang]) for _ in range(max(1, length))]
        out.append(("" if _space_free(lang) else " ").join(words))
    return out


def _training_text(extra: int = 400) -> list[str]:
    base = [s for sentences in MULTILINGUAL_SAMPLES.values() for s in sentences]
    return base + multilingual_corpus(extra, seed=1234, max_words=40)


def build_tokenizer(folder: str | os.PathLike[str], *, vocab_size: int = 1000) -> Path:
    """Train an XLM-R style unigram tokenizer in-process and save it as a fast tokenizer.

    Args:
        folder: Where to write ``tokenizer.json``, ``tokenizer_config.json`` and
            ``special_tokens_map.json``.
        vocab_size: Target vocabulary size before ``<mask>`` is appended.

    Returns:
        The folder.
    """
    import transformers
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(
        _training_text(),
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=_SPECIALS,
        unk_token="<unk>",
    )
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    # transformers 5 names the fast class XLMRobertaTokenizer; 4.x keeps the *Fast name.
    fast_class = (
        getattr(transformers, "XLMRobertaTokenizerFast", None) or transformers.XLMRobertaTokenizer
    )
    fast = fast_class(
        tokenizer_object=tok._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=8192,
    )
    fast.save_pretrained(out)
    # transformers 5 no longer writes this file, but the real checkpoints ship it.
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return out


def _tokenizer_and_config(
    folder: str | os.PathLike[str],
    architecture: str,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int | None,
    max_position_embeddings: int,
) -> tuple[Path, Any]:
    """Train and save the tokenizer, and build the matching XLM-R config (random weights follow)."""
    from transformers import XLMRobertaConfig

    out = build_tokenizer(folder, vocab_size=vocab_size)
    vocab = len(json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    config = XLMRobertaConfig(
        vocab_size=vocab + 1,  # <mask>, appended as an added token
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        hidden_act="gelu",
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        architectures=[architecture],
    )
    config.position_embedding_type = "absolute"  # as in the real config.json
    return out, config


def build_m3_checkpoint(
    folder: str | os.PathLike[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 1000,
    max_position_embeddings: int = 8194,
    seed: int = 0,
) -> Path:
    """Write a random checkpoint in the exact file layout of ``BAAI/bge-m3``.

    Files: ``config.json`` (``XLMRobertaModel``), ``model.safetensors``, the tokenizer files, and
    ``colbert_linear.pt`` (``Linear(h, h)``) / ``sparse_linear.pt`` (``Linear(h, 1)``) state dicts
    stored in fp16, as the real heads are.

    Args:
        folder: Output folder (created).
        hidden_size: Hidden size (1024 for the real model).
        num_layers: Number of transformer layers (24 for the real model).
        num_heads: Attention heads.
        intermediate_size: FFN size, default ``4 * hidden_size``.
        vocab_size: Tokenizer vocabulary target.
        max_position_embeddings: 8194 as the real model (8192 usable positions).
        seed: Seed for the weights.

    Returns:
        The folder.
    """
    import torch
    from transformers import XLMRobertaModel

    out, config = _tokenizer_and_config(
        folder,
        "XLMRobertaModel",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    model = XLMRobertaModel(config, add_pooling_layer=True)
    model.save_pretrained(out, safe_serialization=True)
    colbert = torch.nn.Linear(hidden_size, hidden_size)
    sparse = torch.nn.Linear(hidden_size, 1)
    # The real sparse head has a positive bias-free tendency; a small positive shift keeps about
    # half of the random token weights above zero, as on real text.
    with torch.no_grad():
        sparse.bias.fill_(0.05)
    torch.save({k: v.half() for k, v in colbert.state_dict().items()}, out / "colbert_linear.pt")
    torch.save({k: v.half() for k, v in sparse.state_dict().items()}, out / "sparse_linear.pt")
    return out


def build_reranker_checkpoint(
    folder: str | os.PathLike[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 1000,
    max_position_embeddings: int = 8194,
    seed: int = 1,
) -> Path:
    """Write a random cross-encoder in the layout of ``BAAI/bge-reranker-v2-m3``.

    ``XLMRobertaForSequenceClassification`` with ``num_labels=1``, ``model.safetensors`` and the
    same tokenizer recipe as `build_m3_checkpoint`. Use ``max_position_embeddings=514`` for
    the layout of ``bge-reranker-base`` / ``-large`` (512 tokens).

    Returns:
        The folder.
    """
    import torch
    from transformers import XLMRobertaForSequenceClassification

    out, config = _tokenizer_and_config(
        folder,
        "XLMRobertaForSequenceClassification",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    return out


def random_outputs(
    n: int,
    *,
    dim: int = 16,
    colbert_dim: int = 8,
    vocab_size: int = 500,
    lexical_tokens: int = 12,
    colbert_tokens: tuple[int, int] = (1, 12),
    seed: int = 0,
) -> Any:
    """Random `M3Output` with BGE-M3-like statistics, for index tests and benchmarks.

    Dense vectors are L2-normalised Gaussians; lexical token ids are Zipf-distributed over
    ``vocab_size`` (a few frequent tokens, a long tail) with weights in ``(0, 0.5]``; ColBERT
    matrices have a random number of L2-normalised rows.

    Returns:
        An ``M3Output`` with all three heads.
    """
    import numpy as np

    from m3rag.types import M3Output

    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    lexical = []
    for _ in range(n):
        count = max(1, int(rng.poisson(lexical_tokens)))
        ids = np.unique(rng.choice(vocab_size, size=count, p=p)) + 4  # skip the special ids
        weights = rng.uniform(0.001, 0.5, size=len(ids)).astype(np.float32)
        lexical.append({int(i): float(w) for i, w in zip(ids, weights, strict=True)})
    colbert = []
    for _ in range(n):
        t = int(rng.integers(colbert_tokens[0], colbert_tokens[1] + 1))
        m = rng.standard_normal((t, colbert_dim)).astype(np.float32)
        colbert.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    return M3Output.build(dense_vecs=dense, lexical_weights=lexical, colbert_vecs=colbert)
