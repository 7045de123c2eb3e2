"""The book builds, and a real headless Chromium shows its pages with their figures."""
import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from triphase.runner import run
from conftest import REPO_ROOT
from test_runner import book_copy  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture
def built_book(tiny_organism, book_copy):  # noqa: F811
    config = {"series": ["organism-tiny"], "checkpoints": 4, "notebooks": ["00_organism"], "device": "cpu",
              "parameters": {"00_organism": {"max_new_tokens": 5, "n_sample_checkpoints": 2}}}
    run(config, root=book_copy, build=True, progress=False)
    return book_copy / "_build" / "html"


@pytest.mark.slow
def test_book_builds_with_intro_and_organism_chapter(built_book):
    assert (built_book / "index.html").exists()
    intro = (built_book / "book" / "intro.html").read_text()
    assert "Triple Phase Transitions" in intro and "Nakagi" in intro
    organism = built_book / "book" / "executed" / "organism-tiny" / "00_organism.html"
    html = organism.read_text()
    assert "The model organism" in html and "<img" in html


@pytest.fixture
def served(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", built_book
    server.shutdown()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (CI installs it)")
def test_pages_render_in_headless_chromium(served):
    from playwright.sync_api import sync_playwright

    base, html_root = served
    pages = sorted(p.relative_to(html_root).as_posix() for p in html_root.rglob("*.html")
                   if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts)
    assert "book/intro.html" in pages and any(p.endswith("00_organism.html") for p in pages)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for rel in pages:
            response = page.goto(f"{base}/{rel}", wait_until="load")
            assert response is not None and response.ok, rel
            main_text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
            assert len(main_text.strip()) > 50, f"{rel} has no content"
            if rel.endswith("00_organism.html"):
                images = page.eval_on_selector_all("main img", "imgs => imgs.map(i => [i.src, i.complete, i.naturalWidth])")
                assert images, "organism page shows no images"
                broken = [src for src, complete, width in images if not complete or width == 0]
                assert not broken, f"images failed to load: {broken}"
                page.screenshot(path=str(ARTIFACTS / "organism_page.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "organism_page.png").stat().st_size > 10_000
