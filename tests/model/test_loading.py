"""Loading: local folders, hub ids offline, missing or unsafe head files, dense-only models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from m3rag import M3Encoder, MissingHeadError, ModelLoadError

pytestmark = pytest.mark.model


def _copy(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def test_missing_head_is_an_error_not_a_random_head(tiny_m3_path: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_m3_path, tmp_path / "m", skip=("sparse_linear.pt",))
    with pytest.raises(MissingHeadError, match=r"sparse_linear\.pt"):
        M3Encoder(folder)


def test_no_heads_and_no_pooling_is_an_error(tiny_m3_path: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_m3_path, tmp_path / "m", skip=("sparse_linear.pt", "colbert_linear.pt"))
    with pytest.raises(MissingHeadError, match="neither"):
        M3Encoder(folder)


def test_pickled_code_in_a_head_file_is_refused(tiny_m3_path: Path, tmp_path: Path) -> None:
    import pickle

    folder = _copy(tiny_m3_path, tmp_path / "m", skip=("sparse_linear.pt",))

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    (folder / "sparse_linear.pt").write_bytes(pickle.dumps({"weight": Evil()}))
    with pytest.raises(MissingHeadError, match="cannot read head file"):
        M3Encoder(folder)


def test_wrong_head_shape_is_an_error(tiny_m3_path: Path, tmp_path: Path) -> None:
    import torch

    folder = _copy(tiny_m3_path, tmp_path / "m", skip=("sparse_linear.pt",))
    torch.save({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, folder / "sparse_linear.pt")
    with pytest.raises(MissingHeadError, match="Linear"):
        M3Encoder(folder)


def test_hub_id_offline_names_the_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"'BAAI/bge-m3-does-not-exist'.*HF_HUB_OFFLINE"):
        M3Encoder("BAAI/bge-m3-does-not-exist", cache_dir=tmp_path)


def test_missing_local_folder_and_bad_types(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        M3Encoder(str(tmp_path / "nope" / "deeper" / "model"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        M3Encoder(tmp_path / "f")
    with pytest.raises(TypeError, match="model_name_or_path"):
        M3Encoder(123)  # type: ignore[arg-type]


def test_hub_cache_layout_loads_offline(
    tiny_m3_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lay the checkpoint out as the hub cache does and load it by id with HF_HUB_OFFLINE=1.
    repo = tmp_path / "models--acme--tiny-m3"
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    snap.parent.mkdir(parents=True)
    _copy(tiny_m3_path, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = M3Encoder("acme/tiny-m3", cache_dir=tmp_path, device="cpu")
    assert enc.heads == ("dense", "sparse", "colbert")
    assert len(enc.encode(["hi"])) == 1


def test_trust_remote_code_is_off_by_default(
    tiny_m3_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    seen: list[object] = []
    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    M3Encoder(tiny_m3_path, device="cpu")
    assert seen == [False]


@pytest.mark.oracle
def test_real_minilm_matches_sentence_transformers(minilm_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [
        "A man is eating food.",
        "The quick brown fox jumps over the lazy dog. " * 40,  # beyond 256 tokens: truncated
        "",
        "北京是中国的首都",
        "Scientists discovered that coffee improves memory consolidation in mice.",
    ]
    st_model = SentenceTransformer(str(minilm_path), device="cpu")
    want = st_model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    enc = M3Encoder(minilm_path, device="cpu")
    assert enc.pooling == "mean" and enc.dim == 384 and enc.max_length == 256
    out = enc.encode_corpus(texts)
    assert out.dense_vecs is not None
    np.testing.assert_allclose(out.dense_vecs, want, atol=1e-5, rtol=0)
    assert out.truncated.tolist() == [False, True, False, False, False]
    q = enc.encode_queries(texts[:1])
    assert q.dense_vecs is not None
    np.testing.assert_allclose(q.dense_vecs[0], want[0], atol=1e-5, rtol=0)
