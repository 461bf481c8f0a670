"""The service's search page in a real headless browser (Debian's Chromium driven by Playwright).

Serves an index of a few Caltech-101 classes on 127.0.0.1 and goes through every view of the page as a person
would: the label picker (with counts), an upload through the file input (results mostly of the photo's class), the
same file again, "more like this", the label filter, the back button and a shared address, "load more",
recommendations from liked / not liked results, an item's near-duplicates, the placeholder of a thumbnail that
cannot be made, a failed upload, and the offline API docs. Screenshots of each view are saved under
build/test-output/browser/ (or $SIMSEARCH_TEST_OUTPUT/browser/).

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
DUPLICATE = ("starfish", "image_0003.jpg")  # a resized copy of it is indexed too
DAMAGED = ("sunflower", "image_0005.jpg")  # damaged after indexing: its thumbnail cannot be made

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
    shared files (a copy only where a hard link is impossible; symlinks out of a root are never indexed), plus a
    resized copy of one photo (a near-duplicate) and one photo damaged after indexing (no thumbnail can be made:
    a new file replaces the link, the shared file is never written)."""
    from PIL import Image

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
    with Image.open(root / DUPLICATE[0] / DUPLICATE[1]) as img:
        img.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4)).save(root / DUPLICATE[0] / "copy.jpg")
    build_index([root], base / "index", backbone=real_backbone)
    damaged = root / DAMAGED[0] / DAMAGED[1]
    damaged.unlink()
    damaged.write_bytes(b"no longer an image")
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
        " score: +e.querySelector('.score').textContent,"
        " loaded: !!e.querySelector('img') && e.querySelector('img').naturalWidth > 0}))",
    )


def _wait_for_results(page, n: int = PER_CLASS) -> list[dict]:
    """At least ``n`` results, each with its thumbnail decoded or replaced by the placeholder."""
    page.wait_for_function(
        "n => { const r = [...document.querySelectorAll('#results .result')];"
        " return r.length >= n && r.every(e => { const i = e.querySelector('img');"
        " return e.querySelector('.placeholder') || (i && i.complete && i.naturalWidth > 0); }); }",
        arg=n,
        timeout=60_000,
    )
    return _shown(page)


def _ids_shown(page) -> list[int]:
    return page.eval_on_selector_all("#results .result", "els => els.map(e => +e.dataset.id)")


def _wait_count(page, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('#results .result').length >= {n}", timeout=60_000)


def _item_id(index_path, rel: str) -> int:
    import simsearch

    with simsearch.open_index(index_path) as idx:
        i = idx.id_for_path(rel)
    assert i is not None, rel
    return i


def test_search_page_in_headless_chromium(live_server, caltech_subset_index, tmp_path):
    """Every view of the page, as a person uses it; a screenshot of each is saved (and was looked at)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    query = CALTECH / "images" / QUERY[0] / QUERY[1]
    out = output_dir()
    shots = []

    def shot(page, name):
        page.wait_for_timeout(300)  # let thumbnails paint
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        shots.append(name)

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
            searches: list[str] = []
            page.on("request", lambda r: searches.append(r.url) if r.method == "POST" else None)

            # first load: the index's name (not its server path), the label picker with counts, no query panel
            page.goto(live_server)
            page.wait_for_function("document.getElementById('info').textContent.includes('images')")
            info = page.inner_text("#info")
            assert f"{len(CLASSES) * PER_CLASS + 1} images" in info and "index" in info
            assert str(caltech_subset_index.parent) not in info
            page.wait_for_function("document.querySelectorAll('#label option').length > 1")
            options = page.eval_on_selector_all("#label option", "os => os.map(o => o.textContent)")
            assert f"starfish ({PER_CLASS + 1})" in options and f"watch ({PER_CLASS})" in options
            assert not page.is_visible("#query") and not page.is_visible("#query-img")
            shot(page, "1-home")

            # upload through the page's file input, as a person choosing a file does
            page.set_input_files("#file-input", str(query))
            results = _wait_for_results(page)
            shot(page, "2-upload")
            labels = [r["label"] for r in results[:PER_CLASS]]
            assert labels[0] == QUERY[0], labels
            assert sum(lab == QUERY[0] for lab in labels) >= PER_CLASS * 3 // 4, labels
            # the index is augmented (the default): the raw top 5 come first, in raw order, then the augmented
            # ranking; scores stay raw cosines, so only those first five are sure to be in decreasing order
            scores = [r["score"] for r in results]
            assert scores[:5] == sorted(scores[:5], reverse=True) and scores[0] == max(scores)
            assert "uploaded: image_0040.jpg" in page.inner_text("#query-title")
            # the damaged sunflower is among the results: a placeholder instead of a broken image
            damaged = _item_id(caltech_subset_index, "/".join(DAMAGED))
            card = f"#results .result[data-id='{damaged}']"
            page.wait_for_selector(f"{card} .placeholder")
            assert page.inner_text(f"{card} .placeholder") == "no preview"
            assert all(r["loaded"] for r in _shown(page) if r["id"] != damaged)

            # choosing the same file again searches again
            n = len(searches)
            page.set_input_files("#file-input", str(query))
            page.wait_for_timeout(1000)
            assert len(searches) == n + 1
            upload_url = page.url

            # click a result: "more like this" for that item, in the address
            first = results[0]["id"]
            page.click(f"#results .result[data-id='{first}'] .open")
            page.wait_for_function(f"document.getElementById('query-title').textContent.includes('item {first}')")
            assert f"view=similar&item={first}" in page.url
            again = _wait_for_results(page)
            shot(page, "3-more-like-this")
            assert first not in [r["id"] for r in again]
            assert sum(r["label"] == QUERY[0] for r in again[:PER_CLASS]) >= PER_CLASS // 2
            assert page.get_attribute("#query-links a:nth-child(1)", "href") == f"items/{first}/image"
            assert page.get_attribute("#query-links a:nth-child(2)", "href") == f"items/{first}"
            image = page.request.get(f"{live_server}items/{first}/image")
            assert image.ok and image.headers["content-type"] == "image/jpeg"
            similar_url = page.url

            # the label picker re-runs the search, and the address says so
            page.select_option("#label", "Leopards")
            page.wait_for_function(
                "[...document.querySelectorAll('#results .result')].length > 0 && "
                "[...document.querySelectorAll('#results .result')].every(e => e.dataset.label === 'Leopards')"
            )
            assert "label=Leopards" in page.url
            assert len(_ids_shown(page)) == PER_CLASS
            shot(page, "4-label-filter")

            # the back button: the unfiltered search again, then the upload
            page.go_back()
            page.wait_for_function("document.getElementById('label').value === ''")
            assert page.url == similar_url
            _wait_count(page, 20)
            page.go_back()
            page.wait_for_function("document.getElementById('query-title').textContent.includes('uploaded')")
            assert page.url == upload_url
            _wait_count(page, 20)

            # a shared address opens the same search in a new tab; "load more" goes past the first page
            other = browser.new_page()
            other.on("pageerror", lambda e: errors.append(str(e)))
            other.goto(f"{live_server}?view=similar&item={first}&k=10")
            _wait_count(other, 10)
            page_one = _ids_shown(other)
            assert len(page_one) == 10 and page_one == [r["id"] for r in again[:10]]
            assert other.is_visible("#more")
            other.click("#more")
            _wait_count(other, 20)
            assert _ids_shown(other)[:10] == page_one and len(set(_ids_shown(other))) == 20
            shot(other, "5-load-more")
            other.close()

            # recommendations: like two starfish, not like a sunflower, then refresh
            page.goto(f"{live_server}?view=similar&item={_item_id(caltech_subset_index, 'starfish/image_0001.jpg')}")
            _wait_count(page, 20)
            shown = _shown(page)
            stars = [r["id"] for r in shown if r["label"] == "starfish"][:2]
            flower = next(r["id"] for r in shown if r["label"] != "starfish")
            for i in stars:
                page.click(f"#results .result[data-id='{i}'] .like")
            page.click(f"#results .result[data-id='{flower}'] .unlike")
            assert page.inner_text("#feedback-counts") == "2 liked · 1 not liked"
            page.click("#recommend")
            page.wait_for_function("document.getElementById('query-title').textContent.startsWith('recommended')")
            assert f"like={stars[0]}%2C{stars[1]}" in page.url and f"unlike={flower}" in page.url
            recs = _wait_for_results(page)
            assert not {r["id"] for r in recs} & {*stars, flower}
            assert sum(r["label"] == "starfish" for r in recs[:5]) >= 4
            shot(page, "6-recommend")
            page.click(f"#results .result[data-id='{recs[0]['id']}'] .like")
            page.click("#recommend")  # "Refresh recommendations"
            page.wait_for_function(f"!location.search.includes('like={stars[0]}%2C{stars[1]}&')")
            assert str(recs[0]["id"]) in page.url
            page.wait_for_function(
                f"![...document.querySelectorAll('#results .result')].some(e => +e.dataset.id === {recs[0]['id']})"
            )

            # near-duplicates of an item: its resized copy
            original = _item_id(caltech_subset_index, "/".join(DUPLICATE))
            copy = _item_id(caltech_subset_index, f"{DUPLICATE[0]}/copy.jpg")
            page.goto(f"{live_server}?view=similar&item={original}")
            _wait_count(page, 5)
            page.click(f"#results .result[data-id='{copy}'] .dups")
            page.wait_for_function("document.getElementById('query-title').textContent.includes('near-duplicates')")
            assert f"view=duplicates&item={copy}" in page.url and page.is_visible("#threshold")
            page.wait_for_function(f"document.querySelector(\"#results .result[data-id='{original}']\") !== null")
            assert _ids_shown(page) == [original]
            shot(page, "7-duplicates")

            # the damaged item itself: placeholders for the query image too
            page.goto(f"{live_server}?view=similar&item={damaged}")
            page.wait_for_selector("#query-thumb .placeholder")
            _wait_count(page, 5)
            shot(page, "8-placeholder")

            # a file that is not an image: the server's reason, and no results of the previous search under it
            bad = tmp_path / "not-an-image.jpg"
            bad.write_text("hello")
            page.set_input_files("#file-input", str(bad))
            page.wait_for_selector("#error:not([hidden])")
            assert "not an image" in page.inner_text("#error")
            assert _ids_shown(page) == [] and "not-an-image.jpg" in page.inner_text("#query-title")
            shot(page, "9-bad-upload")

            # the API docs, with nothing fetched from outside the service
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live_server) else None)
            page.goto(f"{live_server}docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            page.wait_for_selector('[data-path="/search/batch"]')
            assert outside == [] and "simsearch" in page.inner_text(".swagger-ui .info .title")
            shot(page, "10-docs")
            assert errors == []
        finally:
            browser.close()
    print("screenshots:", ", ".join(str(out / f"{n}.png") for n in shots))
