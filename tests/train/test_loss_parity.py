"""m3rag's unified loss and gradients against FlagEmbedding's own M3 fine-tuning model."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from m3rag.train.loss import LossConfig, M3Reps, UnifiedLoss  # noqa: E402
from m3rag.train.model import M3TrainModel  # noqa: E402

QUERIES = ["what is bge m3", "北京是哪个国家的首都", "tiny models for tests"]
PASSAGES = [
    "BGE M3 is an embedding model with three heads.",
    "A random negative about cooking pasta.",
    "Another negative, on the weather in spring time and more.",
    "北京是中国的首都。",
    "东京是日本的首都。",
    "Paris is the capital of France.",
    "Tiny checkpoints make tests fast and offline.",
    "Large models are slow on CPU.",
    "x",
]
GROUP = 3


def _batch(tokenizer):
    q = tokenizer(QUERIES, padding=True, truncation=True, max_length=16, return_tensors="pt")
    p = tokenizer(PASSAGES, padding=True, truncation=True, max_length=24, return_tensors="pt")
    return q, p


def _reference(model: M3TrainModel, **kwargs):
    from FlagEmbedding.finetune.embedder.encoder_only.m3 import EncoderOnlyEmbedderM3Model

    base = {
        "model": copy.deepcopy(model.backbone),
        "colbert_linear": copy.deepcopy(model.colbert_linear),
        "sparse_linear": copy.deepcopy(model.sparse_linear),
    }
    ref = EncoderOnlyEmbedderM3Model(
        base,
        tokenizer=model.tokenizer,
        temperature=0.02,
        sentence_pooling_method=model.pooling,
        normalize_embeddings=True,
        **kwargs,
    )
    ref.train()
    ref.model.eval()  # no dropout on either side: the comparison is of the loss, not the noise
    return ref


def _ours(model: M3TrainModel, config: LossConfig, teacher=None):
    q, p = _batch(model.tokenizer)
    model.zero_grad()
    q_reps, p_reps = model(
        q["input_ids"], q["attention_mask"], p["input_ids"], p["attention_mask"], config.heads
    )
    out = UnifiedLoss(config)(q_reps, p_reps, teacher)
    out["loss"].backward()
    grads = {
        "backbone": {n: t.grad for n, t in model.backbone.named_parameters()},
        "colbert": {n: t.grad for n, t in model.colbert_linear.named_parameters()},
        "sparse": {n: t.grad for n, t in model.sparse_linear.named_parameters()},
    }
    return out["loss"].detach(), grads


def _ref_grads(ref):
    return {
        "backbone": {n: t.grad for n, t in ref.model.named_parameters()},
        "colbert": {n: t.grad for n, t in getattr(ref.colbert_linear, "named_parameters", dict)()},
        "sparse": {n: t.grad for n, t in getattr(ref.sparse_linear, "named_parameters", dict)()},
    }


def _assert_grads_close(ours, theirs):
    checked = 0
    for part in ours:
        for name, g in ours[part].items():
            r = theirs[part].get(name)
            if g is None or r is None:
                assert (g is None or not g.any()) and (r is None or not r.any()), (part, name)
                continue
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=f"{part}.{name}")
            checked += 1
    assert checked > 10


@pytest.fixture
def train_model(tiny_m3_path):
    model = M3TrainModel(tiny_m3_path)
    model.train()
    model.backbone.eval()
    return model


CASES = {
    "unified+self-distill": (
        LossConfig(mode="unified", self_distill=True),
        {"unified_finetuning": True, "use_self_distill": True},
    ),
    "unified": (
        LossConfig(mode="unified", self_distill=False),
        {"unified_finetuning": True, "use_self_distill": False},
    ),
    "dense": (LossConfig(mode="dense"), {"unified_finetuning": False}),
}


@pytest.mark.oracle
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kd", [None, "m3_kd_loss", "kl_div"])
def test_loss_and_grads_match_flagembedding(train_model, case, kd):
    config, kwargs = CASES[case]
    teacher = None
    if kd is not None:
        config = LossConfig(**{**config.__dict__, "kd_loss_type": kd})
        kwargs = {**kwargs, "kd_loss_type": kd}
        teacher = torch.tensor([[3.0, 1.0, 0.5], [2.0, 2.5, -1.0], [0.1, 0.0, 0.2]])
    ref = _reference(train_model, **kwargs)
    q, p = _batch(train_model.tokenizer)
    theirs = ref(q, p, teacher_scores=None if teacher is None else teacher.flatten().tolist())
    theirs.loss.backward()
    loss, grads = _ours(train_model, config, teacher)
    torch.testing.assert_close(loss, theirs.loss.detach(), atol=1e-5, rtol=1e-5)
    _assert_grads_close(grads, _ref_grads(ref))


@pytest.mark.oracle
@pytest.mark.parametrize(("mode", "score"), [("sparse", "sparse"), ("colbert", "colbert")])
def test_single_head_modes_match_flagembedding_head_loss(train_model, mode, score):
    """FlagEmbedding has no sparse-/colbert-only switch; its per-head loss is the oracle."""
    ref = _reference(train_model, unified_finetuning=True)
    q, p = _batch(train_model.tokenizer)
    _, q_sparse, q_col = ref.encode(q)
    _, p_sparse, p_col = ref.encode(p)
    if mode == "sparse":
        _, expected = ref._compute_in_batch_neg_loss(
            q_sparse, p_sparse, compute_score_func=ref.compute_sparse_score
        )
    else:
        _, expected = ref._compute_in_batch_neg_loss(
            q_col,
            p_col,
            compute_score_func=ref.compute_colbert_score,
            q_mask=q["attention_mask"],
        )
    expected.backward()
    loss, grads = _ours(train_model, LossConfig(mode=mode))
    torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
    _assert_grads_close(grads, _ref_grads(ref))


def test_training_scores_equal_inference_scores(train_model, tiny_encoder):
    """Per pair (no padding), the training forward scores as M3Encoder.compute_score (tau 1)."""
    loss = UnifiedLoss(LossConfig(temperature=1.0))
    tok = train_model.tokenizer
    for b, query in enumerate(QUERIES):
        passage = PASSAGES[b * GROUP]
        q, p = tok([query], return_tensors="pt"), tok([passage], return_tensors="pt")
        with torch.no_grad():
            q_reps, p_reps = train_model(
                q["input_ids"], q["attention_mask"], p["input_ids"], p["attention_mask"]
            )
            got = (
                float(loss.dense_scores(q_reps.dense, p_reps.dense)),
                float(loss.sparse_scores(q_reps.sparse, p_reps.sparse)),
                float(loss.colbert_scores(q_reps.colbert, p_reps.colbert, q_reps.mask)),
            )
        expected = tiny_encoder.compute_score([(query, passage)])
        want = (expected.dense[0], expected.sparse[0], expected.colbert[0])
        assert got == pytest.approx([float(x) for x in want], abs=1e-5)


@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.oracle
@pytest.mark.parametrize("kd", [None, "m3_kd_loss", "kl_div"])
def test_cross_device_negatives_match_flagembedding(train_model, process_group, kd):
    """One rank only (a CPU test), but through the gathering code path of both sides."""
    config = LossConfig(negatives_cross_device=True, **({"kd_loss_type": kd} if kd else {}))
    kwargs = {"negatives_cross_device": True, "use_self_distill": True}
    teacher = None
    if kd is not None:
        kwargs["kd_loss_type"] = kd
        teacher = torch.tensor([[3.0, 1.0, 0.5], [2.0, 2.5, -1.0], [0.1, 0.0, 0.2]])
    ref = _reference(train_model, **kwargs)
    q, p = _batch(train_model.tokenizer)
    theirs = ref(q, p, teacher_scores=None if teacher is None else teacher.flatten().tolist())
    theirs.loss.backward()
    loss, grads = _ours(train_model, config, teacher)
    torch.testing.assert_close(loss, theirs.loss.detach(), atol=1e-5, rtol=1e-5)
    _assert_grads_close(grads, _ref_grads(ref))


def test_cross_device_negatives_need_a_process_group():
    reps = M3Reps(torch.eye(2), None, None, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"torch\.distributed"):
        UnifiedLoss(LossConfig(mode="dense", negatives_cross_device=True))(reps, reps)
