"""The clients of the APIs the server imitates work against it unchanged, with m3rag's vectors.

OpenAI's own SDK (which asks for base64 by default), LangChain's ``OpenAIEmbeddings``,
LlamaIndex's ``OpenAIEmbedding`` and Hugging Face's ``InferenceClient`` (text-embeddings-inference
routes) each talk to a live server on 127.0.0.1 and get the in-process dense vectors back.
"""

from __future__ import annotations

import numpy as np
import pytest

from m3rag import M3Encoder
from m3rag.serve import ServeConfig, create_app

pytestmark = pytest.mark.model

TEXTS = ["What is BGE M3?", "北京是中国的首都。", "Paris is in France."]
KEY = "client-key-0123456789"


@pytest.fixture
def url(live, tiny_encoder: M3Encoder) -> str:  # type: ignore[no-untyped-def]
    app = create_app(tiny_encoder, config=ServeConfig(api_key=KEY, model_name="bge-m3"))
    return str(live(app).url)


@pytest.fixture(scope="module")
def want(tiny_encoder: M3Encoder) -> np.ndarray:
    out = tiny_encoder.encode_corpus(TEXTS, sparse=False, colbert=False)
    assert out.dense_vecs is not None
    return out.dense_vecs


def test_openai_sdk(url: str, want: np.ndarray) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    for fmt in (openai.NOT_GIVEN, "float", "base64"):
        res = client.embeddings.create(model="bge-m3", input=TEXTS, encoding_format=fmt)
        got = [d.embedding for d in sorted(res.data, key=lambda d: d.index)]
        if fmt == "base64":  # the SDK leaves base64 undecoded when it is asked for explicitly
            got = [np.frombuffer(__import__("base64").b64decode(g), dtype="<f4") for g in got]
        np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, atol=1e-5)
        assert res.usage.prompt_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="bge-m3", input="x"
        )


def test_langchain_openai_embeddings(url: str, want: np.ndarray) -> None:
    lc_openai = pytest.importorskip("langchain_openai")
    emb = lc_openai.OpenAIEmbeddings(
        model="bge-m3",
        base_url=f"{url}/v1",
        api_key=KEY,
        check_embedding_ctx_length=False,  # else it sends tiktoken ids, meant for OpenAI's models
        max_retries=0,
    )
    np.testing.assert_allclose(np.asarray(emb.embed_documents(TEXTS)), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(emb.embed_query(TEXTS[0])), want[0], atol=1e-5)


def test_llamaindex_openai_embedding(url: str, want: np.ndarray) -> None:
    li_openai = pytest.importorskip("llama_index.embeddings.openai")
    emb = li_openai.OpenAIEmbedding(
        model_name="bge-m3", api_base=f"{url}/v1", api_key=KEY, max_retries=0
    )
    np.testing.assert_allclose(np.asarray(emb.get_text_embedding_batch(TEXTS)), want, atol=1e-5)


def test_huggingface_inference_client(
    url: str, want: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = pytest.importorskip("huggingface_hub")
    # the suite runs with HF_HUB_OFFLINE=1 (no Hub downloads); this client talks to loopback only
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    client = hub.InferenceClient(base_url=url, api_key=KEY)
    got = np.asarray(client.feature_extraction(TEXTS[1]))
    np.testing.assert_allclose(got.reshape(-1), want[1], atol=1e-5)

    batch = np.asarray(client.feature_extraction(TEXTS))  # type: ignore[arg-type]
    np.testing.assert_allclose(batch.reshape(len(TEXTS), -1), want, atol=1e-5)
    with pytest.raises(hub.errors.HfHubHTTPError):
        hub.InferenceClient(base_url=url, api_key="wrong").feature_extraction("x")
