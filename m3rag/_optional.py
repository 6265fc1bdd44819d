"""The one place that turns a missing optional dependency into an actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType

from m3rag.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str | None = None, purpose: str) -> ModuleType:
    """Import ``module`` or raise [`MissingDependencyError`][] saying how to install it.

    Args:
        module: The importable module name, e.g. ``"tantivy"``.
        extra: The m3rag extra that brings it in, if any.
        purpose: What needs it, for the message (e.g. ``"Collection"``).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f'pip install "m3rag[{extra}]"' if extra else f"pip install {module}"
        msg = f"{purpose} needs the {module!r} package, which is not installed: {hint}"
        raise MissingDependencyError(msg) from exc
