"""``m3rag index --ray [ADDRESS] --store URI``: the options, checked before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from m3rag.cli import app
from m3rag.cli._app import optional_values

runner = CliRunner()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["index", "d", "--ray"], ["index", "d", "--ray", "local"]),
        (["index", "d", "--ray", "--index", "i"], ["index", "d", "--ray", "local", "--index", "i"]),
        (
            ["index", "--ray", "docs/", "--index", "i"],
            ["index", "--ray", "local", "docs/", "--index", "i"],
        ),
        (["index", "d", "--ray", "auto"], ["index", "d", "--ray", "auto"]),
        (["index", "d", "--ray", "ray://head:10001"], ["index", "d", "--ray", "ray://head:10001"]),
        (["index", "d", "--ray", "127.0.0.2:6379"], ["index", "d", "--ray", "127.0.0.2:6379"]),
        (["index", "d", "--ray=auto"], ["index", "d", "--ray=auto"]),
        (["search", "q", "--index", "i"], ["search", "q", "--index", "i"]),
    ],
)
def test_a_bare_ray_flag_means_a_local_cluster(argv: list[str], expected: list[str]) -> None:
    assert optional_values(argv) == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray", "docs/"], "--ray takes local, auto"),
        ([], "give --index DIR (or --store URI)"),
        (["--index", "i", "--store", "s"], "give either --index DIR or --store URI, not both"),
        (["--store", "milvus://u:p@127.0.0.1:19530/docs"], "M3RAG_MILVUS_TOKEN"),
        (["--store", "redis://127.0.0.1:6379/docs"], "is not a milvus:// URI"),
    ],
)
def test_bad_ray_and_store_options_exit_2_before_loading(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    (tmp_path / "a.txt").write_text("text")
    argv = ["index", str(tmp_path / "a.txt"), "--model", str(tmp_path / "no-model"), *extra]
    if "--index" not in extra and "--store" not in extra and extra:
        argv += ["--index", str(tmp_path / "i")]
    out = runner.invoke(app, argv)
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split())
