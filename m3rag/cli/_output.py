"""What the command line prints: result tables and highlighted evidence, as rich Text.

Nothing here parses markup: queries, ids, file names and texts are user data, printed as text
(a query such as ``"[bold] search"`` is shown as typed). Highlighting is word-boundary aware for
scripts that separate words, and substring based for CJK, which does not.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from m3rag.highlight import match_spans

_HIGHLIGHT = "bold yellow"


def highlight(text: str, query: str, width: int = 240) -> Text:
    """A one-paragraph snippet of ``text`` around the first match, matches in bold yellow."""
    snippet = " ".join(text.split())
    spans = match_spans(snippet, query)
    prefix = suffix = ""
    if len(snippet) > width:
        start = max(0, spans[0][0] - width // 4) if spans else 0
        prefix = "…" if start else ""
        suffix = "…" if start + width < len(snippet) else ""
        snippet = snippet[start : start + width]
        spans = match_spans(snippet, query)
    out = Text(prefix)
    offset = len(prefix)
    out.append(snippet)
    for a, b in spans:
        out.stylize(_HIGHLIGHT, offset + a, offset + b)
    out.append(suffix)
    return out


def results_table(query: str, results: Any) -> Table:
    """The table ``m3rag search`` prints: rank, document, score, every path, evidence."""
    title = Text(query)
    title.append(f" ({results.candidates} candidates)")
    table = Table(title=title, show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("document")
    table.add_column("score", justify="right")
    for p in results.paths:
        table.add_column(p, justify="right")
    table.add_column("evidence")
    for rank, hit in enumerate(results, 1):
        cells: list[Text] = [Text(str(rank)), Text(hit.id), Text(f"{hit.score:.4f}")]
        for p in results.paths:
            s = hit.paths.get(p)
            cells.append(Text("-" if s is None else f"{s.raw:.3f}\n#{s.rank}"))
        cells.append(highlight(hit.text, query))
        table.add_row(*cells)
    return table
