"""``m3rag serve`` as a process: loopback by default, the key from the environment, never logged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "integrations")])
    env.update(extra)
    return env


def model_children(pid: int) -> list[int]:
    """The processes ``pid`` started with multiprocessing's spawn (its model processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(("where", "mode"), [("--index", "--model-process"), ("--store", None)])
def test_serve_process_with_index_reranker_and_env_key(
    where, mode, tiny_m3_path, tiny_reranker_path, tiny_encoder, tmp_path, port, request
) -> None:  # type: ignore[no-untyped-def]
    from m3rag import Collection, MilvusStore

    docs = ["Paris is the capital of France.", "Berlin is in Germany."]
    if where == "--index":
        spec = str(tmp_path / "idx")
        col: Any = Collection.create(spec, encoder=tiny_encoder)
    else:  # a Milvus collection, named by a store URI
        uri = request.getfixturevalue("milvus_lite_uri")
        name = f"serve_{uuid.uuid4().hex[:10]}"
        spec = f"milvus://{uri.removeprefix('http://')}/{name}"
        col = MilvusStore(uri, name, encoder=tiny_encoder, create=True, lang="en")
    col.add(docs, ids=["p", "b"])
    col.commit()
    col.close()
    key = "env-key-" + "x" * 20
    cmd = [
        sys.executable,
        "-m",
        "m3rag",
        "serve",
        where,
        spec,
        "--model",
        str(tiny_m3_path),
        "--reranker",
        str(tiny_reranker_path),
        "--port",
        str(port),
        *([mode] if mode else []),
    ]
    child = subprocess.Popen(
        cmd, env=_env(M3RAG_API_KEY=key), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    models: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.post(url + "/search", json={"query": "capital of France"}).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(
            url + "/search", json={"query": "capital of France", "k": 2}, headers=auth, timeout=30
        )
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert {h["id"] for h in hits} == {"p", "b"} and hits[0]["rerank_score"] is not None
        r = httpx.post(url + "/documents", json={"documents": [{"text": "x"}]}, headers=auth)
        assert r.status_code == 403
        # with --model-process the encoder and the reranker each run in a child process
        models = model_children(child.pid)
        assert len(models) == (2 if mode == "--model-process" else 0)
    finally:
        child.terminate()
        out, err = child.communicate(timeout=30)
    for pid in models:  # stopped with the server
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        )
    assert key not in out and key not in err
    assert f"serving {tiny_m3_path}" in err and "API key required" in err
    assert '"POST /search HTTP/1.1" 200' in out  # uvicorn's access log, on by default


def _usage_error(*args: str) -> str:
    """``m3rag serve ARGS`` must refuse at once with exit code 2; its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "m3rag", "serve", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_serve_refuses_a_public_host_without_public(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    err = _usage_error("--model", str(tiny_m3_path), "--host", "0.0.0.0")  # noqa: S104 - refused
    assert "--public" in err


def test_allow_writes_needs_an_index(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    assert "--index" in _usage_error("--model", str(tiny_m3_path), "--allow-writes")


def test_a_bad_wait_policy_is_a_usage_error(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    err = _usage_error("--model", str(tiny_m3_path), "--wait-policy", "never")
    assert "wait_policy must be one of adaptive, always, got 'never'" in err


@pytest.mark.parametrize(
    ("option", "expected"),
    [([], "measured"), (["--batch-overhead", "none"], None), (["--batch-overhead", "7"], 7)],
)
def test_the_batch_budget_and_overhead_reach_both_models(
    option, expected, tiny_m3_path, tiny_reranker_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    import m3rag.serve
    from m3rag.cli import app

    served: dict[str, Any] = {}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the CLI sets it only where unset
    monkeypatch.setattr(
        m3rag.serve,
        "create_app",
        lambda encoder, reranker, **_: served.update(e=encoder, r=reranker),
    )
    monkeypatch.setattr(m3rag.serve, "run", lambda *_, **__: None)
    args = [
        "serve",
        "--model",
        str(tiny_m3_path),
        "--reranker",
        str(tiny_reranker_path),
        "--device",
        "cpu",
        "--max-batch-tokens",
        "3000",
    ]
    done = CliRunner().invoke(app, [*args, *option])
    assert done.exit_code == 0, done.output
    announced = "cutting forward passes by cost" in done.output
    assert announced == (expected is not None)
    assert ("(measured on each model)" in done.output) == (expected == "measured")
    if expected is not None:  # each model's own figure, named
        costs = (
            f"{served['e'].batch_overhead} token slots for the encoder, "
            f"{served['r'].batch_overhead} for the reranker"
        )
        assert costs in " ".join(done.output.split()), done.output
    for model in (served["e"], served["r"]):
        assert model.max_batch_tokens == 3000  # in-process, as in a model process
        if expected == "measured":
            assert isinstance(model.batch_overhead, int) and model.batch_overhead >= 0
        else:
            assert model.batch_overhead == expected


@pytest.mark.parametrize(("option", "expected"), [([], True), (["--no-access-log"], False)])
def test_the_access_log_switch_reaches_uvicorn(option, expected, tiny_m3_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    import m3rag.serve
    from m3rag.cli import app

    ran: dict[str, Any] = {}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(m3rag.serve, "create_app", lambda *_, **__: "app")
    monkeypatch.setattr(m3rag.serve, "run", lambda served, **kw: ran.update(kw, app=served))
    args = ["serve", "--model", str(tiny_m3_path), "--device", "cpu", "--batch-overhead", "none"]
    done = CliRunner().invoke(app, [*args, *option])
    assert done.exit_code == 0, done.output
    assert ran["app"] == "app" and ran["access_log"] is expected


@pytest.mark.parametrize("bad", ["-3", "1.5", "lots", "١٢"])
def test_a_bad_batch_overhead_is_a_usage_error(bad, tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from m3rag.cli import app

    done = CliRunner().invoke(app, ["serve", "--model", str(tiny_m3_path), "--batch-overhead", bad])
    assert done.exit_code == 2
    assert "--batch-overhead must be auto, none or a non-negative integer" in done.output


def test_model_workers_start_copies_that_split_the_cores(
    tiny_m3_path, tiny_reranker_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    import m3rag.serve
    from m3rag._torchutil import available_cores
    from m3rag.cli import app

    served: dict[str, Any] = {}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(m3rag.serve, "create_app", lambda *a, **kw: served.update(kw, e=a[0]))
    monkeypatch.setattr(m3rag.serve, "run", lambda *_, **__: None)
    args = ["serve", "--model", str(tiny_m3_path), "--reranker", str(tiny_reranker_path)]
    done = CliRunner().invoke(app, [*args, "--device", "cpu", "--model-workers", "2"])
    assert done.exit_code == 0, done.output
    threads = max(1, available_cores() // 2)
    assert f"2 model workers, each in its own process with {threads} torch thread" in done.output
    encoders = [served["e"], *served["encoder_replicas"]]
    rerankers = [served["reranker"], *served["reranker_replicas"]]
    for copies in (encoders, rerankers):
        assert len(copies) == 2
        assert len({c.process.pid for c in copies}) == 2  # a process each
        assert [c.torch_threads for c in copies] == [threads, threads]
        first = copies[0].batch_overhead
        assert isinstance(first, int) and first >= 0  # measured by the first copy alone,
        assert copies[1].batch_overhead == first  # and given to the others
        assert not any(c.alive for c in copies)  # the CLI stopped them when the server ended


def test_model_workers_out_of_range_are_a_usage_error(tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from m3rag.cli import app

    for bad in ("0", "65", "-1"):
        done = CliRunner().invoke(
            app, ["serve", "--model", str(tiny_m3_path), "--model-workers", bad]
        )
        assert done.exit_code == 2
        assert "--model-workers must be in 1..64" in done.output


@pytest.mark.parametrize(("option", "cores", "expected"), [([], 2, 2), ([], 1, 1), (["3"], 4, 3)])
def test_model_threads_share_one_model_and_split_the_cores(
    option, cores, expected, tiny_m3_path, tiny_reranker_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    import m3rag.serve
    from m3rag.cli import app
    from m3rag.serve.threads import ThreadReplica

    served: dict[str, Any] = {}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    for where in ("m3rag._torchutil", "m3rag.serve.threads"):
        monkeypatch.setattr(f"{where}.available_cores", lambda: cores)
    monkeypatch.setattr(m3rag.serve, "create_app", lambda *a, **kw: served.update(kw, e=a[0]))
    monkeypatch.setattr(m3rag.serve, "run", lambda *_, **__: None)
    args = ["serve", "--model", str(tiny_m3_path), "--reranker", str(tiny_reranker_path)]
    threads = ["--model-threads", *option] if option else []  # none: auto, the default
    done = CliRunner().invoke(app, [*args, "--device", "cpu", *threads])
    assert done.exit_code == 0, done.output
    encoders = [served["e"], *served["encoder_replicas"]]
    rerankers = [served["reranker"], *served["reranker_replicas"]]
    for copies in (encoders, rerankers):
        assert len(copies) == expected
        if expected == 1:  # one core: the model itself, as before model threads
            assert not isinstance(copies[0], ThreadReplica)
            continue
        assert all(isinstance(c, ThreadReplica) for c in copies)
        assert len({id(c.model._model) for c in copies}) == 1  # one copy of the weights
        assert len({id(c._tokenizer_lock) for c in copies}) == 1  # one lock on one tokenizer
        assert sum(c.torch_threads for c in copies) == cores  # the cores split between them
        overhead = copies[0].batch_overhead
        assert isinstance(overhead, int) and all(c.batch_overhead == overhead for c in copies)
    shown = f"{expected} model threads sharing one copy of each model, each with"
    assert (shown in done.output) == (expected > 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-threads", "0"], "--model-threads must be auto or in 1..64, got '0'"),
        (["--model-threads", "65"], "--model-threads must be auto or in 1..64"),
        (["--model-threads", "two"], "--model-threads must be auto or in 1..64"),
        (["--model-threads", "2", "--model-process"], "cannot be combined"),
        (["--model-threads", "2", "--model-workers", "2"], "cannot be combined"),
    ],
)
def test_bad_model_threads_are_a_usage_error(args, message, tiny_m3_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from m3rag.cli import app

    done = CliRunner().invoke(app, ["serve", "--model", str(tiny_m3_path), *args])
    assert done.exit_code == 2
    assert message in " ".join(done.output.split())


def test_a_copy_that_fails_to_start_stops_the_ones_started(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from m3rag.cli import _serve

    class Copy:
        def __init__(self, overhead: Any, threads: int) -> None:
            self.batch_overhead = 55 if overhead == "auto" else overhead
            self.torch_threads = threads

    calls: list[dict[str, Any]] = []

    def fake(kind: str, model: str, device: Any, budget: int, **options: Any) -> Copy:
        calls.append(options)
        if len(calls) == 3:
            raise MemoryError("no room for a third copy")
        return Copy(options["batch_overhead"], options["torch_threads"])

    monkeypatch.setattr(_serve, "load_model_process", fake)
    monkeypatch.setattr("m3rag._torchutil.available_cores", lambda: 8)
    started: list[Any] = []
    with pytest.raises(MemoryError):
        _serve.load_model_processes("encoder", "m", "cpu", 2048, 3, "auto", started)
    assert len(started) == 2  # the caller closes these
    assert [c["batch_overhead"] for c in calls] == ["auto", 55, 55]
    assert [c["torch_threads"] for c in calls] == [2, 2, 2]
