"""The search page in a real headless browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from m3rag import Collection, HybridRetriever, Reranker
from m3rag.serve import ServeConfig, create_app
from m3rag.serve.page import PAGE

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


@st.composite
def marked_texts(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    """A text with characters beyond the BMP (two UTF-16 units each in JS) and spans over it,
    counted in code points as the server counts them."""
    text = draw(st.text(alphabet=st.sampled_from("ab <>é😀𝔘中"), max_size=30))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    return text, list(itertools.pairwise(cuts))[::2]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=marked_texts())
@example(  # the reviewer's case: after the emoji the marks slid by one unit each
    case=(
        "The capital <img src=x onerror=alert(1)> of France 😀😀 is Paris capital",
        [(4, 11), (57, 62), (63, 70)],
    )
)
def test_the_evidence_marks_the_spans_by_code_point(browser, case) -> None:  # type: ignore[no-untyped-def]
    text, spans = case
    page = browser.contexts[0].pages[0] if browser.contexts else browser.new_page()
    if page.evaluate("typeof evidence") != "function":
        page.set_content(PAGE)
    got = page.evaluate(
        """([text, spans]) => {
            const p = evidence(text, spans);
            return [p.textContent, [...p.querySelectorAll("mark")].map((m) => m.textContent)];
        }""",
        [text, spans],
    )
    assert got == [text, [text[a:b] for a, b in spans]]
