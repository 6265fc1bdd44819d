"""A real server on 127.0.0.1 at a free port: uvicorn in a thread, stopped at teardown; and a
wait for a batcher's workers to go idle."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``create_app(...)`` served by uvicorn on loopback; ``url`` is its base URL."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def port() -> int:
    """A port free on 127.0.0.1 a moment ago."""
    return free_port()


@pytest.fixture
def live() -> Iterator[Any]:
    """``live(app)`` starts a server; every one started is stopped after the test."""
    started: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture
def wait_idle() -> Callable[..., None]:
    """``wait_idle(batcher, *workers)`` waits until those workers of the batcher (by index;
    default: every one still serving) wait for a job.

    A job's answer comes before its worker counts the batch done and goes back for the next:
    a test sending requests one at a time waits for that, so each finds the workers idle.
    """

    def wait(batcher: Any, *workers: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            with batcher._cond:
                idle = set(batcher._idle)
                if set(workers) <= idle if workers else len(idle) == batcher._serving:
                    return
            assert time.monotonic() < deadline, "the batcher's workers never went idle"
            time.sleep(0.001)

    return wait
