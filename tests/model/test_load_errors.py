"""Families of bad checkpoints, devices, dtypes and texts: each is a named m3rag error.

Every file of the BGE-M3 and bge-reranker layouts is deleted, truncated at random offsets, filled
with random bytes, or (JSON files) replaced by JSON of the wrong shape; each must give a
``ModelLoadError`` naming that file, never a raw exception from transformers, safetensors,
tokenizers or torch. The tiny checkpoints are built once per session and copied per example.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from m3rag import M3Encoder, MissingHeadError, ModelLoadError, Reranker
from m3rag._torchutil import available_devices, resolve_device, resolve_dtype

pytestmark = pytest.mark.model

M3_LAYOUT = (
    "colbert_linear.pt",
    "config.json",
    "model.safetensors",
    "sparse_linear.pt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
RERANKER_LAYOUT = (
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
# tokenizer.json alone is a complete tokenizer; these two only add metadata.
OPTIONAL = frozenset({"special_tokens_map.json", "tokenizer_config.json"})
TARGETS = [("m3", name) for name in M3_LAYOUT] + [("reranker", name) for name in RERANKER_LAYOUT]
JSON_TARGETS = [t for t in TARGETS if t[1].endswith(".json")]

FAMILY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def sources(tiny_m3_path: Path, tiny_reranker_path: Path) -> dict[str, Path]:
    return {"m3": tiny_m3_path, "reranker": tiny_reranker_path}


@contextmanager
def damaged(src: Path, name: str, mutate: Callable[[Path], None]) -> Iterator[Path]:
    """A copy of the checkpoint ``src`` with the file ``name`` mutated in place."""
    with tempfile.TemporaryDirectory(prefix="m3rag-damaged-") as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(src, folder)
        mutate(folder / name)
        yield folder


def load(kind: str, folder: Path) -> object:
    if kind == "m3":
        return M3Encoder(folder, device="cpu")
    return Reranker(folder, device="cpu")


def expect_named(kind: str, folder: Path, name: str) -> None:
    # pytest.raises(ModelLoadError) lets any other exception type through: a raw third-party
    # error fails the test.
    with pytest.raises(ModelLoadError) as info:
        load(kind, folder)
    assert name in str(info.value), str(info.value)


def test_layout_constants_match_the_fixture_checkpoints(sources: dict[str, Path]) -> None:
    # a new file in the layouts must join the families below
    assert tuple(sorted(p.name for p in sources["m3"].iterdir())) == M3_LAYOUT
    assert tuple(sorted(p.name for p in sources["reranker"].iterdir())) == RERANKER_LAYOUT


@pytest.mark.parametrize(("kind", "name"), TARGETS)
def test_deleting_a_file(sources: dict[str, Path], kind: str, name: str) -> None:
    with damaged(sources[kind], name, Path.unlink) as folder:
        if name in OPTIONAL:
            model = load(kind, folder)  # optional metadata: still a working model
            if isinstance(model, M3Encoder):
                assert len(model.encode(["hello"])) == 1
            else:
                assert isinstance(model, Reranker)
                assert model.compute_score([("q", "p")]).shape == (1,)
        else:
            expect_named(kind, folder, name)


@FAMILY
@given(target=st.sampled_from(TARGETS), data=st.data())
def test_truncating_a_file_at_any_offset(
    sources: dict[str, Path], target: tuple[str, str], data: st.DataObject
) -> None:
    kind, name = target
    content = (sources[kind] / name).read_bytes()
    # a JSON file loses at least its closing brace (trailing whitespace alone is harmless)
    end = len(content.rstrip()) if name.endswith(".json") else len(content)
    offset = data.draw(st.integers(0, end - 1), label="offset")
    with damaged(sources[kind], name, lambda f: f.write_bytes(content[:offset])) as folder:
        expect_named(kind, folder, name)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except ValueError:
        return False
    return True


@FAMILY
@given(target=st.sampled_from(TARGETS), raw=st.binary(max_size=4096))
def test_random_bytes_in_a_file(
    sources: dict[str, Path], target: tuple[str, str], raw: bytes
) -> None:
    kind, name = target
    assume(not _is_json(raw))  # JSON of any shape is the next family
    with damaged(sources[kind], name, lambda f: f.write_bytes(raw)) as folder:
        expect_named(kind, folder, name)


WRONG_JSON = st.one_of(
    st.lists(st.integers(), max_size=3),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.none(),
    st.booleans(),
)


@FAMILY
@given(target=st.sampled_from(JSON_TARGETS), value=WRONG_JSON)
def test_json_that_is_not_an_object(
    sources: dict[str, Path], target: tuple[str, str], value: object
) -> None:
    kind, name = target
    with damaged(sources[kind], name, lambda f: f.write_text(json.dumps(value))) as folder:
        expect_named(kind, folder, name)


CONFIG_FIELDS = ("model_type", "hidden_size", "vocab_size", "max_position_embeddings")
BAD_FIELD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(max_value=0),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=8),
)


@FAMILY
@given(
    kind=st.sampled_from(["m3", "reranker"]), field=st.sampled_from(CONFIG_FIELDS), data=st.data()
)
def test_config_fields_of_the_wrong_type(
    sources: dict[str, Path], kind: str, field: str, data: st.DataObject
) -> None:
    value = data.draw(BAD_FIELD, label="value")
    if field == "model_type":
        # any string naming a model type transformers knows is valid
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        assume(not (isinstance(value, str) and value in CONFIG_MAPPING))

    def mutate(path: Path) -> None:
        config = json.loads(path.read_text())
        config[field] = value
        path.write_text(json.dumps(config))

    with damaged(sources[kind], "config.json", mutate) as folder:
        expect_named(kind, folder, "config.json")


def _set_config(**fields: object) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        config = json.loads(path.read_text())
        for key, value in fields.items():
            if value is _DELETE:
                del config[key]
            else:
                config[key] = value
        path.write_text(json.dumps(config))

    return mutate


_DELETE = object()


@pytest.mark.parametrize("kind", ["m3", "reranker"])
@pytest.mark.parametrize(
    "fields",
    [
        {"layer_norm_eps": "x"},
        {"num_attention_heads": "2"},
        {"intermediate_size": "7"},
        {"num_hidden_layers": "2"},
        {"hidden_dropout_prob": [0.1]},
    ],
)
def test_other_config_fields_of_the_wrong_type_name_the_config(
    sources: dict[str, Path], kind: str, fields: dict[str, object]
) -> None:
    # transformers' strict config validation, first met in the tokenizer's load before
    with damaged(sources[kind], "config.json", _set_config(**fields)) as folder:
        with pytest.raises(ModelLoadError) as info:
            load(kind, folder)
        message = str(info.value)
        assert "config.json" in message and next(iter(fields)) in message
        assert "tokenizer" not in message


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_a_null_pad_token_id_is_refused_and_a_missing_one_defaults(
    sources: dict[str, Path], kind: str
) -> None:
    # XLM-R counts position ids from the pad id: every forward pass would fail on None
    with (
        damaged(sources[kind], "config.json", _set_config(pad_token_id=None)) as folder,
        pytest.raises(ModelLoadError, match=r"config\.json: pad_token_id is null"),
    ):
        load(kind, folder)
    # a deleted key is transformers' default, 1: the model works
    with damaged(sources[kind], "config.json", _set_config(pad_token_id=_DELETE)) as folder:
        model = load(kind, folder)
        assert isinstance(model, (M3Encoder, Reranker))
        assert len(model.compute_score([("q", "p")])) == 1


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_a_model_type_contradicting_the_architectures_is_refused(
    sources: dict[str, Path], kind: str
) -> None:
    # a BertModel takes every XLM-R tensor (the names agree) and computes other numbers
    with (
        damaged(sources[kind], "config.json", _set_config(model_type="bert")) as folder,
        pytest.raises(ModelLoadError, match=r"config\.json: model_type 'bert' contradicts"),
    ):
        load(kind, folder)


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_weights_with_more_layers_than_the_config_are_refused(
    sources: dict[str, Path], kind: str
) -> None:
    # transformers drops the second layer's tensors and only logs it
    with (
        damaged(sources[kind], "config.json", _set_config(num_hidden_layers=1)) as folder,
        pytest.raises(ModelLoadError) as info,
    ):
        load(kind, folder)
    message = str(info.value)
    assert "model.safetensors" in message and "encoder.layer.1." in message


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_an_unused_pooler_or_pretraining_head_in_the_weights_loads(
    sources: dict[str, Path], kind: str
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    def add_extras(path: Path) -> None:
        tensors = load_file(str(path))
        prefix = "roberta." if kind == "reranker" else ""
        tensors[f"{prefix}pooler.dense.weight"] = torch.zeros(32, 32)
        tensors[f"{prefix}pooler.dense.bias"] = torch.zeros(32)
        tensors["lm_head.bias"] = torch.zeros(4)
        tensors[f"{prefix}embeddings.position_ids"] = torch.arange(8)[None]
        save_file(tensors, str(path), metadata={"format": "pt"})

    with damaged(sources[kind], "model.safetensors", add_extras) as folder:
        model = load(kind, folder)
        assert isinstance(model, (M3Encoder, Reranker))
        assert len(model.compute_score([("q", "p")])) == 1


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_weights_from_another_model(
    sources: dict[str, Path], kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # same architecture, different width: the embedding shape disagrees with config.json
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    other = tmp_path_factory.mktemp("other")
    XLMRobertaModel(config).save_pretrained(other)

    def swap(path: Path) -> None:
        shutil.copy(other / "model.safetensors", path)

    with damaged(sources[kind], "model.safetensors", swap) as folder:
        expect_named(kind, folder, "model.safetensors")


def test_a_valid_but_empty_safetensors_is_refused(sources: dict[str, Path]) -> None:
    # transformers would load it and fill every tensor with random values
    from safetensors.torch import save_file

    def empty(path: Path) -> None:
        save_file({}, str(path))

    for kind in ("m3", "reranker"):
        with (
            damaged(sources[kind], "model.safetensors", empty) as folder,
            pytest.raises(ModelLoadError, match=r"model\.safetensors.*random values"),
        ):
            load(kind, folder)


@FAMILY
@given(
    head=st.sampled_from(["colbert_linear.pt", "sparse_linear.pt"]),
    shape=st.lists(st.integers(1, 40), max_size=3),
    bias=st.integers(1, 40),
    dtype=st.sampled_from(["float16", "float32", "int64"]),
)
def test_head_files_of_the_wrong_shape(
    sources: dict[str, Path], head: str, shape: list[int], bias: int, dtype: str
) -> None:
    import torch

    hidden = 32  # the tiny checkpoint's hidden size
    fits = len(shape) == 2 and shape[1] == hidden and bias == shape[0] and dtype != "int64"
    assume(not (fits and (head == "colbert_linear.pt" or shape[0] == 1)))

    def write(path: Path) -> None:
        tensor_dtype = getattr(torch, dtype)
        state = {"weight": torch.zeros(shape, dtype=tensor_dtype), "bias": torch.zeros(bias)}
        torch.save(state, path)

    with (
        damaged(sources["m3"], head, write) as folder,
        pytest.raises(MissingHeadError, match=re.escape(head)),
    ):
        M3Encoder(folder, device="cpu")


@FAMILY
@given(
    head=st.sampled_from(["colbert_linear.pt", "sparse_linear.pt"]),
    state=st.one_of(
        st.integers(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.sampled_from(["weight", "bias", "other"]), st.integers(), max_size=2),
    ),
)
def test_head_files_that_are_not_state_dicts(
    sources: dict[str, Path], head: str, state: object
) -> None:
    import torch

    with (
        damaged(sources["m3"], head, lambda f: torch.save(state, f)) as folder,
        pytest.raises(MissingHeadError, match=re.escape(head)),
    ):
        M3Encoder(folder, device="cpu")


# -- tokenizers that do not fit the model ------------------------------------------------------


@pytest.fixture(scope="module")
def bigger_tokenizer(tiny_m3_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer with 600 more tokens than the embedding matrix has rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_m3_path)
    tokenizer.add_tokens([f"extra_token_{i}" for i in range(600)])
    out = tmp_path_factory.mktemp("big-tok")
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_tokenizer_larger_than_the_embedding_matrix(
    sources: dict[str, Path], bigger_tokenizer: Path, kind: str
) -> None:
    def swap(path: Path) -> None:
        shutil.copy(bigger_tokenizer / "tokenizer.json", path)

    with (
        damaged(sources[kind], "tokenizer.json", swap) as folder,
        pytest.raises(ModelLoadError, match=r"tokenizer\.json has \d+ tokens.*rows"),
    ):
        load(kind, folder)


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_unparsable_tokenizer_json(sources: dict[str, Path], kind: str) -> None:
    def garble(path: Path) -> None:
        path.write_text(json.dumps({"model": 3, "version": "1.0"}))

    with damaged(sources[kind], "tokenizer.json", garble) as folder:
        expect_named(kind, folder, "tokenizer.json")


def test_tokenizer_without_a_pad_token(sources: dict[str, Path]) -> None:
    def drop_pad(path: Path) -> None:
        config = json.loads(path.read_text())
        config["pad_token"] = None
        path.write_text(json.dumps(config))
        special = path.parent / "special_tokens_map.json"
        tokens = json.loads(special.read_text())
        del tokens["pad_token"]
        special.write_text(json.dumps(tokens))

    with (
        damaged(sources["m3"], "tokenizer_config.json", drop_pad) as folder,
        pytest.raises(ModelLoadError, match=r"tokenizer\.json has no pad_token"),
    ):
        M3Encoder(folder, device="cpu")


@pytest.mark.parametrize("kind", ["m3", "reranker"])
def test_tokenizer_padding_with_another_id_than_the_model(
    sources: dict[str, Path], kind: str
) -> None:
    def repad(path: Path) -> None:
        config = json.loads(path.read_text())
        config["pad_token_id"] = 7
        path.write_text(json.dumps(config))

    with (
        damaged(sources[kind], "config.json", repad) as folder,
        pytest.raises(ModelLoadError, match=r"pads with id 1.*pad_token_id=7"),
    ):
        load(kind, folder)


# -- devices and dtypes -------------------------------------------------------------------------

KINDS = ["cpu", "cuda", "mps", "xpu", "gpu", "meta", "tpu", "CUDA", " cuda"]
INDICES = ["", ":0", ":1", ":7", ":x", ":-1", ":"]


def expected_device(device: str | int, available: list[str]) -> str | None:
    """The oracle: the canonical device if valid and present here, else ``None``."""
    if isinstance(device, int):
        device = f"cuda:{device}" if device >= 0 else "invalid"
    m = re.fullmatch(r"(cpu|cuda|mps|xpu)(?::(0|[1-9]\d*))?", device)
    if m is None:
        return None
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return "cpu" if index in (None, "0") else None
    present = [d for d in available if d.split(":")[0] == kind]
    if not present:
        return None
    if index is None:
        return kind
    return device if f"{kind}:{index}" in present or (kind == "mps" and index == "0") else None


DEVICES = st.one_of(
    st.builds(lambda k, i: k + i, st.sampled_from(KINDS), st.sampled_from(INDICES)),
    st.integers(-2, 9),
    st.text(max_size=8),
)


def _check_device(device: str | int) -> None:
    want = expected_device(device, available_devices())
    if want is None:
        with pytest.raises(ValueError, match=re.escape(repr(device))) as info:
            resolve_device(device)
        assert "cpu" in str(info.value)  # the available devices are listed
    else:
        assert str(resolve_device(device)) == want


@FAMILY
@given(device=DEVICES)
def test_device_strings_on_this_machine(device: str | int) -> None:
    _check_device(device)


@FAMILY
@given(device=DEVICES)
def test_device_strings_on_a_cpu_only_torch(device: str | int) -> None:
    import torch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setattr(torch.cuda, "device_count", lambda: 0)
        assert available_devices()[0] == "cpu"
        _check_device(device)


@pytest.mark.parametrize("cls", [M3Encoder, Reranker])
def test_unavailable_cuda_fails_before_any_load(
    cls: type, tiny_m3_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import transformers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("weights loaded before the device was checked")

    for auto in ("AutoModel", "AutoModelForSequenceClassification", "AutoTokenizer"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", forbidden)
    with pytest.raises(ValueError, match=r"device='cuda' is not available.*\['cpu'\]"):
        cls(tiny_m3_path, device="cuda")
    # and before the folder is even looked up
    with pytest.raises(ValueError, match="device='gpu'"):
        cls("/no/such/folder", device="gpu")


DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


@FAMILY
@given(
    dtype=st.one_of(
        st.builds(
            lambda name, upper, prefix: (
                ("torch." if prefix else "") + (name.upper() if upper else name)
            ),
            st.sampled_from(sorted(DTYPE_NAMES)),
            st.booleans(),
            st.booleans(),
        ),
        st.text(max_size=10),
        st.integers(),
        st.none(),
    )
)
def test_dtype_strings(dtype: object) -> None:
    import torch

    cpu = torch.device("cpu")
    if dtype is None:
        assert resolve_dtype(None, cpu) == torch.float32
        return
    name = DTYPE_NAMES.get(dtype.lower().removeprefix("torch.")) if isinstance(dtype, str) else None
    if name is None:
        with pytest.raises(
            ValueError, match=r"dtype must be one of .*got " + re.escape(repr(dtype))
        ):
            resolve_dtype(dtype, cpu)
    else:
        assert resolve_dtype(dtype, cpu) == getattr(torch, name)


# -- texts ---------------------------------------------------------------------------------------

SURROGATE_TEXT = st.tuples(
    st.text(max_size=8), st.characters(categories=["Cs"]), st.text(max_size=8)
)
ITEMS = st.one_of(
    st.text(max_size=12),
    SURROGATE_TEXT,
    st.integers(),
    st.none(),
    st.binary(max_size=4),
    st.lists(st.text(max_size=3), max_size=2),
)


def _materialise(items: list[object]) -> list[object]:
    """Join the (prefix, surrogate, suffix) tuples drawn from SURROGATE_TEXT into strings."""
    return [
        "".join(x) if isinstance(x, tuple) else x  # type: ignore[arg-type]
        for x in items
    ]


def _first_problem(raw: list[object]) -> tuple[int, type[Exception], str] | None:
    """The oracle: the first bad item's index, the error type and a fragment of the message."""
    for i, item in enumerate(raw):
        if isinstance(item, tuple):
            return i, ValueError, f"position {len(item[0])}"
        if not isinstance(item, str):
            return i, TypeError, f"got {type(item).__name__}"
    return None


@pytest.fixture(scope="module")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker(tiny_reranker_path, device="cpu")


@FAMILY
@given(raw=st.lists(ITEMS, max_size=5))
def test_text_batches_name_the_bad_index(tiny_encoder: M3Encoder, raw: list[object]) -> None:
    texts = _materialise(raw)
    problem = _first_problem(raw)
    for encode in (tiny_encoder.encode, tiny_encoder.encode_queries, tiny_encoder.encode_mcls):
        if problem is None:
            assert len(encode(texts)) == len(texts)  # type: ignore[arg-type]
            continue
        index, error, fragment = problem
        with pytest.raises(error, match=rf"texts\[{index}\].*{re.escape(fragment)}"):
            encode(texts)  # type: ignore[arg-type]


@FAMILY
@given(raw=st.lists(ITEMS, max_size=5))
def test_passages_for_the_reranker_name_the_bad_index(
    reranker: Reranker, raw: list[object]
) -> None:
    passages = _materialise(raw)
    problem = _first_problem(raw)
    if problem is None:
        assert len(reranker.rerank("query", passages)) == len(passages)  # type: ignore[arg-type]
        return
    index, error, fragment = problem
    with pytest.raises(error, match=rf"passages\[{index}\].*{re.escape(fragment)}"):
        reranker.rerank("query", passages)  # type: ignore[arg-type]


PAIRS = st.one_of(
    st.tuples(st.text(max_size=8), st.text(max_size=8)),
    st.tuples(SURROGATE_TEXT, st.text(max_size=8)),
    st.tuples(st.text(max_size=8), SURROGATE_TEXT),
    st.tuples(st.text(max_size=8)),
    st.tuples(st.text(max_size=4), st.text(max_size=4), st.text(max_size=4)),
    st.tuples(st.text(max_size=8), st.integers()),
    st.text(max_size=4),
    st.none(),
)


@FAMILY
@given(raw=st.lists(PAIRS, max_size=4))
def test_pairs_name_the_bad_index(
    tiny_encoder: M3Encoder, reranker: Reranker, raw: list[object]
) -> None:
    pairs: list[object] = []
    problem: tuple[int, type[Exception], str] | None = None
    for i, pair in enumerate(raw):
        if isinstance(pair, tuple) and len(pair) == 2 and any(isinstance(p, tuple) for p in pair):
            side = 0 if isinstance(pair[0], tuple) else 1
            bad = pair[side]
            pairs.append(tuple("".join(p) if isinstance(p, tuple) else p for p in pair))
            if problem is None:
                fragment = rf"pairs\[{i}\]\[{side}\].*position {len(bad[0])}"
                problem = (i, ValueError, fragment)
            continue
        pairs.append(pair)
        ok = isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        if not ok and problem is None:
            problem = (i, TypeError, rf"pairs\[{i}\] must be a \(query, passage\) pair")
    for score in (tiny_encoder.compute_score, reranker.compute_score):
        if problem is None:
            assert len(score(pairs)) == len(pairs)  # type: ignore[arg-type]
        else:
            with pytest.raises(problem[1], match=problem[2]):
                score(pairs)  # type: ignore[arg-type]


def test_a_lone_surrogate_in_a_single_text_or_query(
    tiny_encoder: M3Encoder, reranker: Reranker
) -> None:
    with pytest.raises(ValueError, match=r"texts has a lone surrogate '\\udc80' at position 3"):
        tiny_encoder.encode("abc\udc80")
    with pytest.raises(ValueError, match=r"query has a lone surrogate .* at position 0"):
        reranker.rerank("\ud83d", ["passage"])
    # empty strings stay valid, as in FlagEmbedding
    assert len(tiny_encoder.encode(["", "x"])) == 2
