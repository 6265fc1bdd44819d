"""The README's set-up commands and the quickstart's, run exactly as written (plus --model).

A README or quickstart edit that breaks the first thing a new user types fails CI here. The
commands run in a scratch folder where ``examples`` and ``.venv`` point at this checkout's, so
relative paths resolve as they do for a user in a fresh clone, and nothing is written into the
repository.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]


def _first_block(page: Path, heading: str | None = None) -> str:
    text = page.read_text(encoding="utf-8")
    if heading is not None:
        text = text[text.index(heading) :]
    match = re.search(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.DOTALL)
    assert match, f"no shell block in {page}"
    return match.group(1)


def _m3rag_commands(block: str) -> list[list[str]]:
    """Each ``m3rag``/``.venv/bin/m3rag`` command of a block, split as a shell would."""
    commands = []
    for line in block.splitlines():
        for part in line.split("&&"):
            argv = shlex.split(part.strip())
            if argv and Path(argv[0]).name == "m3rag":
                commands.append(argv)
    return commands


def _scratch(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (work / ".venv").symlink_to(Path(sys.prefix))
    return work


def _run(argv: list[str], cwd: Path, model: Path) -> subprocess.CompletedProcess[str]:
    exe = argv[0]
    if exe == "m3rag":  # the quickstart assumes an activated environment
        exe = str(Path(sys.prefix) / "bin" / "m3rag")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'integrations'}"}
    return subprocess.run(
        [exe, *argv[1:], "--model", str(model)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("page", "heading"),
    [("README.md", "## Set up"), ("docs/quickstart.md", None)],
)
def test_setup_commands_run_as_written(
    page: str, heading: str | None, tmp_path: Path, tiny_m3_path: Path
) -> None:
    commands = _m3rag_commands(_first_block(ROOT / page, heading))
    assert [c[1] for c in commands] == ["index", "search"], commands
    work = _scratch(tmp_path)
    for argv in commands:
        done = _run(argv, work, tiny_m3_path)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
    # the search printed hits: the bundled sample's documents, with every path's score
    assert "hybrid-search.md" in done.stdout
    for path in ("dense", "lexical", "colbert", "bm25"):
        assert path in done.stdout
    # the index went where the command said, not into the repository
    assert (work / "m3rag-demo" / "manifest.json").is_file()
    assert not (ROOT / "m3rag-demo").exists()
