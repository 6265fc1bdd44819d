"""Fixtures of the index tests: a milvus-lite server for MilvusStore (or a real one)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lite_binary() -> str | None:
    here = Path(sys.executable).parent / "milvus-lite"
    if here.exists():
        return str(here)
    return shutil.which("milvus-lite")


def _wait(uri: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"milvus-lite server exited with {proc.returncode}")
        try:
            client = MilvusClient(uri=uri, timeout=2)
            client.list_collections()
            client.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def milvus_lite_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a milvus-lite server started for the session."""
    pytest.importorskip("pymilvus")
    binary = _lite_binary()
    if binary is None:
        pytest.skip("milvus-lite is not installed (pip install 'm3rag[milvus]')")
    data = tmp_path_factory.mktemp("milvus-lite")
    port = _free_port()
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "server",
            "--data-dir",
            str(data / "db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        _wait(uri, proc)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(
    scope="session",
    params=["lite", pytest.param("server", marks=pytest.mark.milvus_server)],
)
def milvus_uri(request: pytest.FixtureRequest) -> str:
    """The server every MilvusStore test runs on: milvus-lite, and a real one when configured."""
    if request.param == "server":
        uri = os.environ.get("M3RAG_MILVUS_URI")
        if not uri:
            pytest.skip("set M3RAG_MILVUS_URI to run the MilvusStore suite on a real server")
        return uri
    value: str = request.getfixturevalue("milvus_lite_uri")
    return value
