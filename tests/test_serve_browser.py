"""The search page in a real browser: Playwright drives Debian's chromium (``/usr/bin/chromium``; .ci/run
installs it) against a real uvicorn process. Upload a PACS sketch, see k results with loaded thumbnails,
switch the domain filter and see the results change; errors appear on the page; keyboard reachable. With an
export that has a text artifact: type words, press Enter (or the button) and see the results the service
gives for that text; without one the text box stays hidden."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from runtime_fixtures import pacs_sample  # noqa: E402
from serve_fixtures import SERVE_CLASSES, build_gallery, free_port, tiny_served_setup, uvicorn_process  # noqa: E402
from text_fixtures import vanilla_export_with_text  # noqa: E402

CHROMIUM = Path(os.environ.get("TKI_CHROMIUM", "/usr/bin/chromium"))
K = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory, pacs_dir):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set TKI_CHROMIUM)")
    root = tmp_path_factory.mktemp("serve_browser")
    model, gallery, _ = tiny_served_setup(root, pacs_dir)
    port = free_port()
    with uvicorn_process(["--model", str(model), "--gallery", str(gallery), "--reload-interval", "0"], port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, pacs_dir):
    """A real server of an export with a text artifact (tki-export --head none of the tiny CLIP)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set TKI_CHROMIUM)")
    root = tmp_path_factory.mktemp("serve_browser_text")
    model = vanilla_export_with_text(root)
    gallery = build_gallery(model, pacs_sample(pacs_dir, per_class=2, classes=SERVE_CLASSES), pacs_dir,
                            root / "gallery")
    port = free_port()
    with uvicorn_process(["--model", str(model), "--gallery", str(gallery), "--reload-interval", "0"], port):
        yield f"http://127.0.0.1:{port}"


def _results(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results li",
        "els => els.map(li => ({key: li.dataset.key, domain: li.dataset.domain, "
        "loaded: li.querySelector('img').complete && li.querySelector('img').naturalWidth > 0}))",
    )


def _wait_for_results(page, n: int, domain: str | None = None) -> list[dict]:
    cond = ("([n, d]) => { const li = [...document.querySelectorAll('#results li')]; "
            "return li.length === n && li.every(x => x.querySelector('img').complete && "
            "x.querySelector('img').naturalWidth > 0 && (!d || x.dataset.domain === d)); }")
    page.wait_for_function(cond, arg=[n, domain], timeout=20_000)
    return _results(page)


def test_page_searches_with_a_sketch_filters_by_domain_and_shows_errors(server, pacs_dir, tmp_path):
    sketch = sorted((pacs_dir / "sketch" / "dog").iterdir())[0]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            console_errors: list[str] = []
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(server + "/")
            page.wait_for_function("document.querySelectorAll('#domain option').length > 1", timeout=20_000)
            domains = page.eval_on_selector_all("#domain option", "els => els.map(o => o.value).filter(v => v)")
            assert domains == ["art_painting", "cartoon", "photo", "sketch"]
            assert "gallery of 48 images" in page.inner_text("#model-info")
            assert page.is_hidden("#query-text")  # this export has no text artifact: no text box

            # keyboard: Tab reaches the file input, k, the domain filter and the button, in that order
            order = []
            page.locator("body").focus()
            for _ in range(6):
                page.keyboard.press("Tab")
                order.append(page.evaluate("document.activeElement && document.activeElement.id"))
            assert [i for i in order if i in ("query-file", "k", "domain", "search-button")][:4] == [
                "query-file", "k", "domain", "search-button"]

            page.fill("#k", str(K))
            page.set_input_files("#query-file", str(sketch))
            first = _wait_for_results(page, K)
            assert len({r["key"] for r in first}) == K
            assert "ms" in page.inner_text("#status") and page.is_hidden("#error")
            assert page.get_attribute("#query-preview", "alt") == f"query image {sketch.name}"

            page.select_option("#domain", "photo")
            photos = _wait_for_results(page, K, "photo")
            assert all(r["domain"] == "photo" for r in photos)
            assert [r["key"] for r in photos] != [r["key"] for r in first]
            assert "from domain photo" in page.inner_text("#status")
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # the keyboard alone can change the filter and search again
            page.focus("#domain")
            page.keyboard.press("ArrowDown")  # photo -> sketch
            _wait_for_results(page, K, "sketch")

            # an upload that is not an image: the service's message appears on the page, results cleared
            bad = tmp_path / "notes.png"
            bad.write_text("this is not an image\n" * 10)
            page.set_input_files("#query-file", str(bad))
            page.wait_for_selector("#error:not([hidden])", timeout=20_000)
            assert "not an image" in page.inner_text("#error")
            assert page.eval_on_selector_all("#results li", "els => els.length") == 0
            assert console_errors == []
        finally:
            browser.close()


def test_page_searches_by_words_with_enter_and_the_button(text_server):
    import httpx

    def served(text: str, k: int, domain: str | None = None) -> list[str]:
        body = {"text": text, "k": k} | ({"where": {"domain": domain}} if domain else {})
        r = httpx.post(text_server + "/v1/search", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return [str(key) for key in r.json()["results"][0]["keys"]]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            console_errors: list[str] = []
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(text_server + "/")
            page.wait_for_selector("#query-text", state="visible", timeout=20_000)
            assert page.get_attribute("#query-text", "maxlength") == "1000"  # from /v1/info limits

            # Tab reaches the text box right after the image input
            page.focus("#query-file")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "query-text"

            page.fill("#k", str(K))
            page.fill("#query-text", "a dog")
            page.press("#query-text", "Enter")
            first = _wait_for_results(page, K)
            assert [r["key"] for r in first] == served("a dog", K)
            assert "for \u201ca dog\u201d" in page.inner_text("#status") and page.is_hidden("#error")

            # the domain filter re-runs the text query; the button submits too
            page.select_option("#domain", "sketch")
            sketches = _wait_for_results(page, K, "sketch")
            assert [r["key"] for r in sketches] == served("a dog", K, "sketch")
            page.fill("#query-text", "a guitar")
            page.click("#search-button")
            page.wait_for_function("document.querySelector('#status').innerText.includes('a guitar')", timeout=20_000)
            guitars = _wait_for_results(page, K, "sketch")
            assert [r["key"] for r in guitars] == served("a guitar", K, "sketch")

            # blank words: the page says so and sends nothing
            page.fill("#query-text", "   ")
            page.press("#query-text", "Enter")
            page.wait_for_selector("#error:not([hidden])", timeout=20_000)
            assert "type some words" in page.inner_text("#error")
            assert console_errors == []
        finally:
            browser.close()
