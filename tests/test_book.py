"""The book builds from an installed wheel outside the checkout, and a real headless Chromium shows its pages."""
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from installed import installed_wheel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO_ROOT / "test-artifacts"


#: every chapter, on the tiny organism x the tiny participant, with small statistics settings
SMALL_RUN = {"series": ["organism-tiny"], "checkpoints": 4, "device": "cpu",
             "dataset_options": {"preset": "tiny"},
             "parameters": {"00_organism": {"max_new_tokens": 5, "n_sample_checkpoints": 2},
                            "01_brain_alignment": {"n_perm": 100, "n_boot": 100, "layers": [0, 2]},
                            "02_internal_states": {"n_stories": 3, "token_budget": 512, "probe_splits": 3,
                                                   "induction_sequences": 4},
                            "03_downstream_tasks": {"n_items": 8, "few_shot": [0]},
                            "04_phases": {"n_boot": 20, "n_null": 19}}}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of this checkout installed into a fresh virtual environment outside it."""
    return installed_wheel(tmp_path_factory.mktemp("wheel_install"))


@pytest.fixture(scope="module")
def built_book(installed, tiny_organism, tmp_path_factory):
    """The whole book as a user of the wheel makes it: `triphase init`, `triphase run`, outside the checkout."""
    folder = tmp_path_factory.mktemp("outside") / "my-book"
    env = {k: v for k, v in os.environ.items() if k != "TRIPHASE_BOOK_ROOT"}
    made = installed.run("init", folder, cwd=folder.parent, env=env)
    assert made.returncode == 0, made.stderr
    (folder / "small.yaml").write_text(yaml.safe_dump(SMALL_RUN))
    result = installed.run("--quiet", "run", "small.yaml", cwd=folder, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder / "_build" / "html"


@pytest.mark.slow
def test_wheel_carries_the_template_and_init_refuses_to_overwrite(installed, tmp_path):
    template = installed.package / "_template"
    for name in ("_config.yml", "_toc.yml", "notebooks/04_phases.ipynb", "book/intro.md", "book/references.bib"):
        assert (template / name).is_file(), name
    assert not (template / "book" / "executed").exists()
    first = installed.run("init", tmp_path / "b", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "b" / "run.yaml").is_file()
    again = installed.run("init", tmp_path / "b", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a book" in again.stderr
    assert "Traceback" not in again.stderr


EXECUTED_PAGES = ("organism-tiny/00_organism.html",
                  "organism-tiny/simulated-sim01/01_brain_alignment.html",
                  "organism-tiny/simulated-sim01/02_internal_states.html",
                  "organism-tiny/simulated-sim01/03_downstream_tasks.html",
                  "synthesis/04_phases.html")
NARRATIVE_PAGES = ("intro", "methods_brain", "methods_internal", "methods_tasks", "methods_phases",
                   "real_tier", "workshop", "api")


@pytest.mark.slow
def test_book_builds_with_every_chapter(built_book):
    assert (built_book / "index.html").exists()
    intro = (built_book / "book" / "intro.html").read_text()
    assert "Triple Phase Transitions" in intro and "Nakagi" in intro
    for page in NARRATIVE_PAGES:
        assert (built_book / "book" / f"{page}.html").exists(), page
    for page in EXECUTED_PAGES:
        html = (built_book / "book" / "executed" / page).read_text()
        assert "<img" in html, f"{page} has no figure"
        assert "Traceback" not in html, f"{page} shows an error"
        assert "IProgress not found" not in html, f"{page} shows tqdm's widget warning"
        # a progress bar shows once, in its final state, not once per redraw
        assert html.count("[00:") <= 12, f"{page} shows {html.count('[00:')} progress-bar redraws"
    api = (built_book / "book" / "api.html").read_text()
    assert "train_organism" in api and "detect_phases" in api  # generated from docstrings


@pytest.fixture(scope="module")
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
    # the root index.html is only a redirect to the first page: checked separately below
    pages = sorted(p.relative_to(html_root).as_posix() for p in html_root.rglob("*.html")
                   if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts
                   and p.relative_to(html_root).as_posix() != "index.html")
    for page in EXECUTED_PAGES:
        assert f"book/executed/{page}" in pages
    assert "book/intro.html" in pages
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/index.html")
        page.wait_for_url("**/book/intro.html")
        for rel in pages:
            response = page.goto(f"{base}/{rel}", wait_until="load")
            assert response is not None and response.ok, rel
            page.wait_for_load_state("load")
            main_text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
            assert len(main_text.strip()) > 50, f"{rel} has no content"
            if "/executed/" in rel:
                images = page.eval_on_selector_all("main img", "imgs => imgs.map(i => [i.src, i.complete, i.naturalWidth])")
                assert images, f"{rel} shows no images"
                broken = [src for src, complete, width in images if not complete or width == 0]
                assert not broken, f"{rel}: images failed to load: {broken}"
                page.screenshot(path=str(ARTIFACTS / (Path(rel).stem + ".png")), full_page=True)
        browser.close()
    assert (ARTIFACTS / "00_organism.png").stat().st_size > 10_000
