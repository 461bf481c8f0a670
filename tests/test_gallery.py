"""Self-contained HTML galleries (simsearch.gallery): `simsearch query ... --html` and the duplicates page."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from conftest import TINY, copy_file, write_image
from PIL import Image

import simsearch
from simsearch.cli import main
from simsearch.duplicates import find_duplicates
from simsearch.gallery import thumbnail_jpeg, write_duplicates_gallery, write_query_gallery
from simsearch.index import build_index

ODD_LABEL = 'a<b>&"c'


@pytest.fixture
def gallery_index(tmp_path, _register_tiny_backbone):
    root = tmp_path / "photos"
    for n, rel in enumerate(["cats/c1.jpg", "cats/c2.jpg", "dogs/d1.png", f"{ODD_LABEL}/odd.jpg", "big/wide.jpg"]):
        write_image(root / rel, n + 1, size=(640, 320) if "wide" in rel else (96, 72))
    copy_file(root / "cats/c1.jpg", root / "dogs/c1_copy.jpg")
    build_index([root], tmp_path / "index", backbone=TINY, workers=1)
    return root, tmp_path / "index"


class _Page(HTMLParser):
    """Collects the images, links and cards of a gallery page."""

    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.cards, self.external = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])
        if tag == "div" and "card" in (a.get("class") or "").split():
            self.cards.append(a)
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])
        if tag in ("link", "script"):
            self.external.append(tag)


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_query_html_gallery(gallery_index, tmp_path):
    root, index = gallery_index
    out = tmp_path / "out" / "results.html"
    r = CliRunner().invoke(main, ["query", str(index), str(root / "cats/c1.jpg"), "-k", "3", "--html", str(out)])
    assert r.exit_code == 0, r.output
    assert "rank" in r.output  # the table is still printed
    page = _parse(out)
    assert page.external == []  # self-contained: no scripts, stylesheets or remote images
    assert len(page.cards) == 4 and len(page.imgs) == 4  # the query and 3 results
    for uri in page.imgs:
        img = _decode(uri)
        assert img.format == "JPEG" and max(img.size) <= 224
    text = out.read_text()
    for rank in ("#1", "#2", "#3"):
        assert f'<span class="rank">{rank}</span>' in text
    assert re.search(r'<span class="score">1\.0000</span>', text)  # the copy of the query image
    assert '<span class="label">cats</span>' in text or '<span class="label">dogs</span>' in text
    # each thumbnail links to its full image by a path relative to the HTML file
    for href in page.links:
        assert not href.startswith("/") and (out.parent / unquote(href)).resolve().is_file(), href
    hits = simsearch.open_index(index).search(str(root / "cats/c1.jpg"), k=3)
    assert [int(c["data-id"]) for c in page.cards[1:]] == [h.id for h in hits]


def test_query_html_by_id_with_json(gallery_index, tmp_path):
    _root, index = gallery_index
    with simsearch.open_index(index) as idx:
        i = idx.id_for_path("dogs/d1.png")
    out = tmp_path / "by-id.html"
    r = CliRunner().invoke(main, ["query", str(index), "--id", str(i), "--html", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert '"html"' in r.output and out.exists()
    page = _parse(out)
    assert page.cards[0]["data-id"] == str(i) and "query" in page.cards[0]["class"]
    assert i not in [int(c["data-id"]) for c in page.cards[1:]]


def test_gallery_escapes_text_and_survives_missing_files(gallery_index, tmp_path):
    root, index = gallery_index
    with simsearch.open_index(index) as idx:
        hits = idx.search(str(root / "cats/c2.jpg"), k=10)
        assert ODD_LABEL in {h.label for h in hits}
        (root / "dogs/d1.png").unlink()  # indexed, then deleted
        out = write_query_gallery(tmp_path / "g.html", idx, [str(root / "cats/c2.jpg")], hits, title="<Mine>")
    text = out.read_text()
    assert ODD_LABEL not in text and "a&lt;b&gt;&amp;&quot;c" in text
    assert "<title>&lt;Mine&gt;</title>" in text
    assert "image unavailable" in text
    assert len(_parse(out).imgs) == len(hits)  # the query and every result but the deleted one


def test_duplicates_gallery_limits_groups(gallery_index, tmp_path):
    _root, index = gallery_index
    with simsearch.open_index(index) as idx:
        groups = find_duplicates(idx, 0.999)
        assert len(groups) == 1 and groups[0].size == 2
        out = write_duplicates_gallery(tmp_path / "d.html", idx, groups, 0.999)
        assert _parse(out).external == [] and "Group 1: 2 items" in out.read_text()
        cut = write_duplicates_gallery(tmp_path / "cut.html", idx, groups * 3, 0.999, max_groups=2)
        assert "1 more groups not shown" in cut.read_text()
        empty = write_duplicates_gallery(tmp_path / "none.html", idx, [], 0.999)
        assert "No near-duplicates" in empty.read_text()


def test_thumbnail_jpeg_keeps_aspect_and_input(gallery_index):
    root, _ = gallery_index
    img = Image.open(root / "big/wide.jpg").convert("RGB")
    data = thumbnail_jpeg(img, 100)
    assert img.size == (640, 320)  # not modified in place
    assert Image.open(io.BytesIO(data)).size == (100, 50)
    assert Image.open(io.BytesIO(thumbnail_jpeg(root / "big/wide.jpg", 2000))).size == (640, 320)
    with pytest.raises(simsearch.ImageError):
        thumbnail_jpeg(b"not an image")
