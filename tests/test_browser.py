"""The service's search page in a real headless browser (Debian's Chromium driven by Playwright).

Serves an index of a few Caltech-101 classes on 127.0.0.1, uploads a Caltech photo that is not in the index through
the page's file input, and checks that the results shown are mostly of the photo's class; then clicks a result
("more like this"). Screenshots are saved under build/test-output/browser/ (or $SIMSEARCH_TEST_OUTPUT/browser/).

Skipped when /usr/bin/chromium is missing (install it with scripts/setup-browser), when the playwright package is
missing, or when ../shared/data/caltech101 is absent. Playwright never downloads a browser here: it launches
the system Chromium by path.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import CALTECH, REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLASSES = ["accordion", "airplanes", "Leopards", "Motorbikes", "pizza", "soccer_ball", "starfish", "sunflower", "watch"]
PER_CLASS = 8
QUERY = ("sunflower", "image_0040.jpg")  # not among the first PER_CLASS images, so not in the index

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (run scripts/setup-browser)"),
    pytest.mark.skipif(not (CALTECH / "images").is_dir(), reason="../shared/data/caltech101 is absent"),
]


def output_dir() -> Path:
    base = Path(os.environ.get("SIMSEARCH_TEST_OUTPUT", REPO / "build" / "test-output"))
    out = base / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def caltech_subset_index(tmp_path_factory, real_backbone):
    """The first PER_CLASS photos of a few Caltech classes, in class folders (the labels) of hard links to the
    shared files (a copy only where a hard link is impossible; symlinks out of a root are never indexed)."""
    from simsearch.index import build_index

    base = tmp_path_factory.mktemp("browser")
    root = base / "caltech"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for f in sorted((CALTECH / "images" / c).glob("*.jpg"))[:PER_CLASS]:
            try:
                os.link(f, root / c / f.name)
            except OSError:
                shutil.copyfile(f, root / c / f.name)
    build_index([root], base / "index", backbone=real_backbone)
    return base / "index"


@pytest.fixture(scope="module")
def live_server(caltech_subset_index, real_backbone):
    """The real service (uvicorn) on 127.0.0.1 with a port chosen by the OS; yields its base URL."""
    import uvicorn

    from simsearch.server import create_app

    app = create_app(caltech_subset_index, backbone=real_backbone, preload=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def _shown(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results .result",
        "els => els.map(e => ({id: +e.dataset.id, label: e.dataset.label,"
        " score: +e.querySelector('.score').textContent, loaded: e.querySelector('img').naturalWidth > 0}))",
    )


def _wait_for_results(page, not_ids=()) -> list[dict]:
    page.wait_for_function(
        "n => { const r = [...document.querySelectorAll('#results .result')];"
        " return r.length >= n && r.every(e => { const i = e.querySelector('img'); return i.complete && i.naturalWidth > 0; }); }",
        arg=PER_CLASS,
        timeout=60_000,
    )
    return _shown(page)


def test_search_page_in_headless_chromium(live_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    query = CALTECH / "images" / QUERY[0] / QUERY[1]
    out = output_dir()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a new, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server)
            page.wait_for_function("document.getElementById('info').textContent.includes('images')")
            assert f"{len(CLASSES) * PER_CLASS} images" in page.inner_text("#info")

            # upload through the page's file input, as a person choosing a file does
            page.set_input_files("#file-input", str(query))
            results = _wait_for_results(page)
            page.screenshot(path=str(out / "search-upload.png"), full_page=True)
            labels = [r["label"] for r in results[:PER_CLASS]]
            assert labels[0] == QUERY[0], labels
            assert sum(lab == QUERY[0] for lab in labels) >= PER_CLASS * 3 // 4, labels
            assert all(r["loaded"] for r in results)  # every thumbnail was served and decoded
            scores = [r["score"] for r in results]
            assert scores == sorted(scores, reverse=True)
            assert "uploaded: image_0040.jpg" in page.inner_text("#query-title")

            # click the first result: "more like this" for that item
            first = results[0]["id"]
            page.click(f"#results .result[data-id='{first}']")
            page.wait_for_function(f"document.getElementById('query-title').textContent.includes('item {first}')")
            page.wait_for_function(
                f"![...document.querySelectorAll('#results .result')].some(e => +e.dataset.id === {first})"
            )
            again = _wait_for_results(page)
            page.screenshot(path=str(out / "search-more-like-this.png"), full_page=True)
            assert first not in [r["id"] for r in again]
            assert sum(r["label"] == QUERY[0] for r in again[:PER_CLASS]) >= PER_CLASS // 2

            # a file that is not an image: the page shows the server's reason
            bad = tmp_path / "not-an-image.jpg"
            bad.write_text("hello")
            page.set_input_files("#file-input", str(bad))
            page.wait_for_selector("#error:not([hidden])")
            assert "not an image" in page.inner_text("#error")
            assert errors == []
        finally:
            browser.close()
    print(f"screenshots: {out / 'search-upload.png'}, {out / 'search-more-like-this.png'}")
