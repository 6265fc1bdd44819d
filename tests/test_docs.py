"""The quickstart's Python blocks run (with the tiny checkpoint through M3RAG_MODEL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.mark.model
@pytest.mark.parametrize("page", ["quickstart.md", "howto/tune.md"])
def test_python_blocks_run(
    page: str,
    tiny_m3_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("M3RAG_MODEL", str(tiny_m3_path))
    blocks = _python_blocks(DOCS / page)
    assert blocks
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), namespace)  # noqa: S102 - our own docs
    if page == "quickstart.md":
        out = capsys.readouterr().out
        assert "candidates" in out and "rank" in out
