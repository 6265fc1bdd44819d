"""The search page served at ``/``: one self-contained HTML file, no build step.

It posts to ``/search`` and renders every hit with its per-path scores, its evidence with the
query terms marked (the server's spans count code points, and so does the page), and where the
reranker moved it (fused rank -> final rank). Text from the index is inserted with
``textContent`` only, never as HTML.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>m3rag search</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; }
form { display: grid; grid-template-columns: 1fr auto; gap: .5rem; }
input, textarea, button { font: inherit; padding: .4rem; }
#opts { display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; grid-column: 1 / 3; }
.hit { border-top: 1px solid #ddd; padding: .6rem 0; }
.meta { color: #555; font-size: 13px; }
table.paths { border-collapse: collapse; font-size: 13px; margin: .3rem 0; }
table.paths td, table.paths th { padding: 0 .6rem 0 0; text-align: right; }
mark { background: #ffe58a; }
#status { color: #a00; min-height: 1.2em; }
</style>
</head>
<body>
<h1>m3rag search</h1>
<form id="search">
  <input id="q" name="q" placeholder="Ask the index…" autofocus aria-label="query">
  <button id="go" type="submit">Search</button>
  <div id="opts">
    <label>k <input id="k" type="number" min="1" value="10" style="width:4rem"></label>
    <label>filter <input id="filter" placeholder='{"lang": "en"}' style="width:16rem"></label>
    <label><input id="rerank" type="checkbox" checked> rerank</label>
    <label>API key <input id="key" type="password" style="width:10rem"></label>
  </div>
</form>
<p id="status" role="status"></p>
<ol id="hits"></ol>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
$("key").value = sessionStorage.getItem("m3rag-key") || "";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

// The server's spans count code points (Python's str); a JS string counts UTF-16 units, in
// which a character beyond the BMP (an emoji) is two: slice the code points.
function evidence(text, spans) {
  const p = el("p", undefined, "evidence");
  const chars = Array.from(text);
  const part = (a, b) => chars.slice(a, b).join("");
  let at = 0;
  for (const [a, b] of spans || []) {
    p.append(document.createTextNode(part(at, a)));
    p.append(el("mark", part(a, b)));
    at = b;
  }
  p.append(document.createTextNode(part(at)));
  return p;
}

function render(body) {
  const list = $("hits");
  list.replaceChildren();
  $("status").textContent = body.hits.length
    ? `${body.hits.length} hits of ${body.candidates} candidates`
    : "no hits";
  const fusedOrder = [...body.hits].sort((a, b) => b.fused_score - a.fused_score).map((h) => h.id);
  body.hits.forEach((hit, rank) => {
    const li = el("li", undefined, "hit");
    li.dataset.id = hit.id;
    li.append(el("strong", hit.id, "hit-id"));
    let line = ` score ${hit.score.toFixed(4)} · fused ${hit.fused_score.toFixed(4)}`;
    if (hit.rerank_score !== null) {
      const was = fusedOrder.indexOf(hit.id) + 1;
      line += ` · rerank ${hit.rerank_score.toFixed(4)} (fused #${was} → #${rank + 1})`;
    }
    li.append(el("span", line, "meta"));
    const table = el("table", undefined, "paths");
    const head = el("tr");
    const raw = el("tr");
    const ranks = el("tr");
    head.append(el("th", ""));
    raw.append(el("th", "raw"));
    ranks.append(el("th", "rank"));
    for (const [path, s] of Object.entries(hit.paths)) {
      head.append(el("th", path + (s.recalled ? "*" : "")));
      raw.append(el("td", s.raw.toFixed(3)));
      ranks.append(el("td", "#" + s.rank));
    }
    table.append(head, raw, ranks);
    li.append(table);
    li.append(evidence(hit.text, hit.highlights));
    if (Object.keys(hit.metadata).length) {
      li.append(el("div", JSON.stringify(hit.metadata), "meta"));
    }
    list.append(li);
  });
}

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = $("q").value;
  if (!query.trim()) { $("status").textContent = "type a query"; return; }
  const request = { query, k: Number($("k").value) || 10, rerank: $("rerank").checked };
  const filter = $("filter").value.trim();
  if (filter) {
    try { request.filter = JSON.parse(filter); }
    catch (e) {
      $("status").textContent = "the filter must be JSON, e.g. {\\"lang\\": \\"en\\"}";
      return;
    }
  }
  const key = $("key").value;
  sessionStorage.setItem("m3rag-key", key);
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  $("status").textContent = "searching…";
  const init = { method: "POST", headers, body: JSON.stringify(request) };
  const response = await fetch("search", init);
  const body = await response.json();
  if (!response.ok) {
    // a server without a reranker: search again without one
    if (response.status === 424 && request.rerank) {
      $("rerank").checked = false;
      $("search").requestSubmit();
      return;
    }
    $("status").textContent = body.error || response.statusText;
    return;
  }
  render(body);
});
</script>
</body>
</html>
"""
