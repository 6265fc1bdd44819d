"""The search page in a real headless browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m3rag import Collection, HybridRetriever, Reranker
from m3rag.serve import ServeConfig, create_app

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"{CHROMIUM} is absent (apt-get install chromium; .ci/run installs it)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api")

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = {
    "paris": "Paris is the capital of France and its largest city.",
    "berlin": "Berlin is the capital of Germany.",
    "tokyo": "Tokyo is the capital of Japan.",
    "cake": "A <b>chocolate</b> cake recipe with three eggs.",
}


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_type_a_query_and_see_the_hits(
    browser, live, tiny_encoder, tiny_reranker_path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    col = Collection.create(tmp_path / "c", encoder=tiny_encoder)
    col.add(
        list(DOCS.values()),
        ids=list(DOCS),
        metadata=[{"lang": "en", "n": i} for i in range(len(DOCS))],
    )
    col.commit()
    reranker = Reranker(tiny_reranker_path, device="cpu")
    key = "page-key-0123456789"
    server = live(
        create_app(tiny_encoder, reranker=reranker, collection=col, config=ServeConfig(api_key=key))
    )
    want = HybridRetriever(col, encoder=tiny_encoder, reranker=reranker).retrieve(
        "capital of France", k=3
    )

    page = browser.new_page()
    page.goto(server.url + "/")
    page.fill("#key", key)
    page.fill("#q", "capital of France")
    page.fill("#k", "3")
    page.click("#go")
    page.wait_for_selector("#hits li")
    ids = page.locator("#hits li .hit-id").all_text_contents()
    assert ids == want.ids
    first = page.locator("#hits li").first
    # per-path scores, the reranker's move, and the query terms marked in the evidence
    headers = first.locator("table.paths th").all_text_contents()
    for path in want.paths:
        assert any(h.rstrip("*") == path for h in headers)
    assert "rerank" in first.locator(".meta").first.text_content()
    marked = {m.lower() for m in page.locator("#hits mark").all_text_contents()}
    assert {"capital", "france"} <= marked
    assert "hits of" in page.locator("#status").text_content()

    # a filter narrows the hits; the stored HTML is shown as text, never run as markup
    page.fill("#filter", '{"n": 3}')
    page.fill("#q", "chocolate cake")
    page.click("#go")
    page.wait_for_function("document.querySelectorAll('#hits li').length === 1")
    assert page.locator("#hits li .hit-id").all_text_contents() == ["cake"]
    assert page.locator("#hits li b").count() == 0
    assert "<b>" in page.locator("#hits li .evidence").text_content()

    # a bad filter is reported on the page, not sent
    page.fill("#filter", "{oops")
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent.includes('JSON')")

    # without the key the server's 401 message is shown
    page.fill("#filter", "")
    page.fill("#key", "")
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
    col.close()
