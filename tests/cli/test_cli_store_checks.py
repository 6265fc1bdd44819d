"""``--store``: the server is asked before any model loads, errors are one line, no secrets.

No model is needed: loading one fails these tests (``load_encoder`` is replaced by a tripwire),
so a command that would load the default model (about 2 GB) before finding that the collection
is missing or the server is down is caught.
"""

from __future__ import annotations

import os
import socket
import string
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from m3rag.cli import app

pytest.importorskip("pymilvus")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

runner = CliRunner()


class ModelLoaded(Exception):
    """Raised where a model would load."""


@pytest.fixture(autouse=True)
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(*_: Any, **__: Any) -> Any:
        raise ModelLoaded

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module in ("_search", "_serve", "_index", "_eval"):
        monkeypatch.setattr(f"m3rag.cli.{module}.load_encoder", load)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def missing(milvus_lite_uri: str) -> str:
    return f"milvus://{milvus_lite_uri.removeprefix('http://')}/nope_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("Paris is the capital of France.")
    return tmp_path


def test_a_missing_collection_is_reported_before_any_model_loads(missing: str) -> None:
    for args in (
        ["search", "q", "--store", missing],
        ["ask", "q", "--store", missing, "--no-rerank"],
        ["info", "--store", missing],
        ["serve", "--store", missing],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        text = _flat(result.output)
        assert "no Milvus collection" in text, text
        # what to do, on the command line (not the library's create=True)
        assert f"m3rag index PATH... --store {missing}" in text and "create=True" not in text


def test_index_creates_a_missing_collection(missing: str, docs: Path) -> None:
    result = runner.invoke(app, ["index", str(docs), "--store", missing])
    assert "unexpected ModelLoaded" in result.output, result.output  # it went on to the model


def test_an_unreachable_server_is_reported_before_any_model_loads(
    dead_port: int, docs: Path
) -> None:
    store = f"milvus://127.0.0.1:{dead_port}/x"
    for args in (
        ["search", "q", "--store", store],
        ["index", str(docs), "--store", store],
        ["serve", "--store", store],
        ["eval", str(docs), "--store", store, "--modes", "dense"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 4, (args, result.output, result.exception)
        assert "Milvus connect" in _flat(result.output) or "Fail connecting" in result.output


def test_server_errors_are_one_line_without_debug(milvus_lite_uri: str) -> None:
    store = f"milvus://{milvus_lite_uri.removeprefix('http://')}/x?db=nodb"
    cmd = [sys.executable, "-m", "m3rag"]
    args = ["search", "q", "--mode", "bm25", "--store", store]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    plain = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 4, plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), plain.stderr
    assert "nodb" in lines[0]
    debug = subprocess.run(
        [*cmd, "--debug", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert debug.returncode == 4
    assert "Traceback" in debug.stderr and "_log_rpc_error" in debug.stderr  # pymilvus's own


MARK = "SECRET"
_piece = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:/?#[]@ ", max_size=8
)
SPECS = [
    "milvuss://u:{s}@h:1/x",
    "milvus://u:{s}@h:1/x",
    "milvus://h:1/?token={s}",
    "milvus://h:1/x?token={s}",
    "milvus://h:1/x?{s}",
    "milvus://h:1/x#{s}",
    "milvus://[::1]:1/x?token={s}",
    "milvus://h:0/x?token={s}",
    "milvus://h:notaport/x?token={s}",
]


def test_store_uris_never_show_a_secret() -> None:
    @hypothesis.settings(max_examples=60, deadline=None, database=None)
    @hypothesis.given(st.sampled_from(SPECS), st.builds(lambda a, b: a + MARK + b, _piece, _piece))
    def check(form: str, secret: str) -> None:
        spec = form.format(s=secret)
        hypothesis.assume("db=" not in secret)  # "?db=..." is a database, not a secret
        for args in (["search", "q", "--mode", "bm25", "--store", spec], ["info", "--store", spec]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2, (spec, result.output)
            assert secret not in result.output and MARK not in result.output, result.output

    check()
