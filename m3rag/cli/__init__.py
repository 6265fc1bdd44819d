"""The ``m3rag`` command line: index, search, ask, describe, evaluate, mine, fine-tune.

Results go to stdout, progress and messages to stderr. Every error ends in one line and a
documented exit code (a traceback only with ``--debug``):

0 success · 1 nothing to do (no files, nothing indexed, no evidence) · 2 bad usage or input, or
no index at the path · 3 the model (or the LLM endpoint, or the Ray cluster) cannot be loaded or
reached · 4 the index is locked, damaged, built with another model, or cannot be written · 70 an
unexpected error (a bug: please report it) · 130 interrupted.
"""

from __future__ import annotations

from m3rag.cli import _eval, _index, _search, _serve, _train
from m3rag.cli._app import app, main

__all__ = ["app", "main"]

# importing them registers their commands on the app
_COMMANDS = (_index, _search, _eval, _serve, _train)
