"""``python -m m3rag`` runs the command line."""

from __future__ import annotations

from m3rag.cli import main

main()
