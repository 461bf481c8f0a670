"""The HTTP service (simsearch.server) through FastAPI's TestClient: every route, its limits and its errors.

Indexes are built with the tiny random-weight backbone (``tiny-test``): these tests check the service's
behaviour, not retrieval quality (an uploaded copy of an indexed image still finds that image first).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import LAYOUT, TINY, copy_file, pattern_image, write_image, write_truncated_jpeg
from PIL import Image

import simsearch
from simsearch.config import DUPLICATES
from simsearch.index import build_index

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient

from simsearch.server import ServiceState, create_app

LOCAL = "http://localhost"  # a Host the service answers by default (TestClient's own "testserver" is not)


def local(app, **kw) -> TestClient:
    return TestClient(app, base_url=LOCAL, **kw)


def _make_collection(root):
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed, size=(96, 72))
    copy_file(root / "cats/c1.jpg", root / "copies/c1_copy.jpg")  # an exact duplicate in another folder
    return root


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, _register_tiny_backbone):
    base = tmp_path_factory.mktemp("server")
    root = _make_collection(base / "photos")
    out = base / "index"
    build_index([root], out, backbone=TINY, batch_size=4, workers=2, augment="none")  # exact raw searches
    return out


@pytest.fixture(scope="module")
def client(index_path):
    with local(create_app(index_path)) as c:
        yield c


@pytest.fixture(scope="module")
def idx(index_path):
    with simsearch.open_index(index_path) as index:
        yield index


def _id(idx, rel: str) -> int:
    i = idx.id_for_path(rel)
    assert i is not None, rel
    return i


def _assert_error(r, status: int, code: str | None = None, words: str | None = None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if code:
        assert body["error"] == code
    if words:
        assert words.lower() in body["detail"].lower(), body["detail"]


def _jpeg_bytes(size=(80, 60), seed=11) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _smooth_jpeg(size) -> bytes:
    buf = io.BytesIO()
    pattern_image(5, size).save(buf, "JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ service routes


def test_import_simsearch_does_not_import_the_server_stack():
    code = "import simsearch, sys; assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_health_info_docs_and_page(client, idx):
    h = client.get("/health")
    assert h.status_code == 200 and h.json() == {"status": "ok", "count": 9, "generation": idx.manifest.generation}
    info = client.get("/info").json()
    assert info["count"] == 9 and info["backbone"] == TINY and info["dim"] == idx.manifest.dim
    assert info["server"]["max_upload_bytes"] == 20 * 1024 * 1024 and info["server"]["max_k"] == 1000
    assert info["server"]["reload"] is False
    spec = client.get("/openapi.json").json()
    for path in ["/search", "/search/batch", "/recommend", "/items/{item}", "/items/{item}/similar",
                 "/items/{item}/thumbnail", "/items/{item}/image", "/items/{item}/vector", "/items/{item}/duplicates",
                 "/labels", "/health", "/info", "/admin/reload"]:  # fmt: skip
        assert path in spec["paths"], path
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "vector" in spec["components"]["schemas"]["SearchRequest"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # offline: every script and style sheet of the docs page is served by the app itself, none from a CDN
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for a in assets:
        assert client.get(a).status_code == 200, a
    assert "cdn" not in docs.text.lower()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file-input"' in page.text and 'src="static/app.js"' in page.text and '<base href="/">' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_unknown_route_is_a_json_404(client):
    _assert_error(client.get("/nope"), 404, "not_found")
    _assert_error(client.post("/items/1"), 405, "method_not_allowed")


# ------------------------------------------------------------------------------ items


def test_item_metadata(client, idx):
    i = _id(idx, "dogs/puppies/p1.jpg")
    r = client.get(f"/items/{i}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == i and body["path"] == "dogs/puppies/p1.jpg" and body["label"] == "puppies"
    assert body["thumbnail"] == f"/items/{i}/thumbnail" and body["bytes"] > 0


@pytest.mark.parametrize("item", ["999", "-1", "abc", "1.5", str(2**64)])
def test_unknown_items(client, item):
    """A path names an item by id (digits) or by key (anything else): unknown ones are 404."""
    r = client.get(f"/items/{item}")
    _assert_error(r, 404, "not_found", "no item with id 999" if item == "999" else f"no item with key '{item}'")
    for sub in ("similar", "thumbnail", "duplicates", "vector", "image"):
        assert client.get(f"/items/{item}/{sub}").status_code == 404


def test_items_by_key(client, idx):
    i = _id(idx, "dogs/puppies/p1.jpg")
    key = idx.item(i).key
    assert client.get(f"/items/{key.replace('/', '%2F')}").status_code in (200, 404)  # (a key with a slash)
    by_id = client.get(f"/items/{i}/similar", params={"k": 3}).json()
    r = client.post("/recommend", json={"positive": [key], "k": 3})
    assert r.status_code == 200 and i not in [h["id"] for h in r.json()["results"]]
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in by_id["results"]]
    _assert_error(client.post("/recommend", json={"positive": ["no-such-key", 999]}), 404, words="id 999 or key")


def test_thumbnail_is_a_resized_jpeg(client, idx):
    i = _id(idx, "cats/c3.png")
    r = client.get(f"/items/{i}/thumbnail", params={"size": 32})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 32 and img.size == (32, 24)
    default = Image.open(io.BytesIO(client.get(f"/items/{i}/thumbnail").content))
    assert default.size == (96, 72)  # never enlarged
    for size in (0, 15, 1025, "x"):
        _assert_error(client.get(f"/items/{i}/thumbnail", params={"size": size}), 422)


def test_thumbnail_serves_only_indexed_files(tmp_path, _register_tiny_backbone):
    """A file deleted, or replaced by a link to a file outside the indexed folder, is not served."""
    root = tmp_path / "photos"
    write_image(root / "a/one.jpg", 1)
    write_image(root / "a/two.jpg", 2)
    secret = write_image(tmp_path / "outside/secret.jpg", 3)
    build_index([root], tmp_path / "index", backbone=TINY, workers=1)
    with local(create_app(tmp_path / "index")) as c, simsearch.open_index(tmp_path / "index") as idx:
        one, two = _id(idx, "a/one.jpg"), _id(idx, "a/two.jpg")
        assert c.get(f"/items/{one}/thumbnail").status_code == 200
        (root / "a/one.jpg").unlink()
        _assert_error(c.get(f"/items/{one}/thumbnail"), 404, "not_found", "missing")
        _assert_error(c.get(f"/items/{one}/image"), 404, "not_found", "missing")
        (root / "a/two.jpg").unlink()
        (root / "a/two.jpg").symlink_to(secret)
        _assert_error(c.get(f"/items/{two}/thumbnail"), 404, "not_found")
        _assert_error(c.get(f"/items/{two}/image"), 404, "not_found", "outside")
        assert str(tmp_path) not in c.get(f"/items/{two}/image").text  # no server paths in messages
        # there is no route that takes a path
        assert c.get("/thumbnail", params={"path": str(secret)}).status_code == 404
        assert c.get(f"/items/{secret}/thumbnail").status_code in (404, 422)


def test_similar_excludes_the_item_and_filters(client, idx):
    i = _id(idx, "cats/c1.jpg")
    r = client.get(f"/items/{i}/similar", params={"k": 5})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 5 and i not in [h["id"] for h in res]
    assert [h["rank"] for h in res] == [1, 2, 3, 4, 5]
    assert res[0]["path"] == "copies/c1_copy.jpg" and res[0]["score"] == pytest.approx(1.0, abs=1e-4)
    scores = [h["score"] for h in res]
    assert scores == sorted(scores, reverse=True)
    assert set(res[0]) == {"rank", "id", "score", "path", "label", "key", "attributes", "thumbnail", "image"}
    dogs = client.get(f"/items/{i}/similar", params={"k": 10, "label": "dogs"}).json()["results"]
    assert dogs and {h["label"] for h in dogs} == {"dogs"}
    two = client.get(f"/items/{i}/similar", params=[("k", 10), ("label", "dogs"), ("label", "birds")]).json()
    assert {h["label"] for h in two["results"]} == {"dogs", "birds"}
    prefix = client.get(f"/items/{i}/similar", params={"k": 10, "path_prefix": "dogs/"}).json()["results"]
    assert {h["path"] for h in prefix} == {"dogs/d1.jpg", "dogs/d2.png", "dogs/puppies/p1.jpg"}
    for k in (0, 1001, "ten"):
        _assert_error(client.get(f"/items/{i}/similar", params={"k": k}), 422, "invalid_request", "k")
    assert len(client.get(f"/items/{i}/similar", params={"k": 1000}).json()["results"]) == 8


# ------------------------------------------------------------------------------ search


def test_search_by_vector(client, idx):
    i = _id(idx, "birds/b2.jpg")
    vec = (idx.vector(i) * 3.0).tolist()  # any norm
    r = client.post("/search", json={"vector": vec, "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["k"] == 3 and len(body["results"]) == 3 and body["took_ms"] >= 0
    assert body["results"][0]["id"] == i and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    ex = client.post("/search", json={"vector": vec, "k": 3, "exclude": [i]}).json()["results"]
    assert i not in [h["id"] for h in ex]
    _assert_error(client.post("/search", json={"vector": vec, "filter": {"colour": "red"}}), 400, words="colour")
    cats = client.post("/search", json={"vector": vec, "k": 9, "filter": {"label": "cats"}}).json()["results"]
    assert len(cats) == 3 and {h["label"] for h in cats} == {"cats"}


def test_results_are_the_json_document_of_the_hits(idx):
    """Result pages are rendered by pydantic-core: the same document as ``json.dumps`` (keys in the hits' field
    order, compact, UTF-8); a non-finite number is null, not a failed response."""
    import json

    from simsearch.server.serialise import FastJSONResponse, hits_json

    hits = idx.search(0, k=5)
    content = {"results": hits_json(hits, "/api"), "k": 5, "took_ms": 1.25, "note": "café ✓"}
    r = FastJSONResponse(content)
    assert json.loads(r.body) == content and r.media_type == "application/json"
    assert list(json.loads(r.body)["results"][0]) == [
        *(f for f in vars(hits[0]) if f != "abspath"),
        "thumbnail",
        "image",
    ]
    assert b'", "' not in r.body and b'": ' not in r.body and "café ✓".encode() in r.body  # compact, UTF-8
    assert json.loads(FastJSONResponse({"x": [float("nan"), float("inf"), 0.5]}).body) == {"x": [None, None, 0.5]}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"vector": [0.5] * 7}, 400, "7 values"),
        ({"vector": []}, 422, "vector"),
        ({"k": 3}, 422, "vector"),
        ({"vector": "abc"}, 422, "vector"),
        ({"vector": ["a", "b"]}, 422, "vector"),
        ({"vector": None}, 422, "vector"),
        ({"vector": [1.0], "k": 1001}, 422, "k"),
        ({"vector": [1.0], "k": 0}, 422, "k"),
        ({"vector": [1.0], "k": "many"}, 422, "k"),
        ({"vector": [1.0], "exclude": [-1]}, 422, "exclude"),
        ({"vector": [1.0], "exclude": [2**70]}, 422, "exclude"),
        ({"vector": [1.0], "unknown": 1}, 422, "unknown"),
        ([1, 2, 3], 422, None),
    ],
)
def test_search_by_vector_errors(client, body, status, words):
    _assert_error(client.post("/search", json=body), status, words=words)


def test_search_vector_that_is_zero_or_not_finite(client, idx):
    dim = idx.manifest.dim
    _assert_error(client.post("/search", json={"vector": [0.0] * dim}), 400, "bad_request", "non-zero")
    for bad in ("NaN", "Infinity", "1e999"):
        body = '{"vector": [' + ", ".join([bad] + ["0.5"] * (dim - 1)) + "]}"
        r = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), r.text


def test_search_body_that_is_not_json(client):
    for body in (b"{not json", b"", b"\xff\xfe", b"null"):
        r = client.post("/search", content=body, headers={"content-type": "application/json"})
        _assert_error(r, 422, "invalid_request")
    _assert_error(client.post("/search", content=b"hello", headers={"content-type": "text/plain"}), 415)


def test_search_by_upload_finds_the_same_image(client, index_path, idx):
    i = _id(idx, "dogs/d2.png")
    data = (idx.item(i).abspath).read_bytes()
    r = client.post("/search", files={"image": ("d2.png", data, "image/png")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 4 and res[0]["id"] == i and res[0]["score"] == pytest.approx(1.0, abs=1e-3)
    # filters as form fields
    birds = client.post("/search", files={"image": ("d2.png", data)}, data={"k": "9", "label": "birds"}).json()
    assert {h["label"] for h in birds["results"]} == {"birds"}
    # a raw image body, with parameters in the query string
    raw = client.post("/search?k=2", content=data, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["results"][0]["id"] == i
    assert len(raw.json()["results"]) == 2


def test_search_by_upload_of_a_new_image(client):
    r = client.post("/search", files={"image": ("new.jpg", _jpeg_bytes(), "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["results"]) == 9  # k=10 default, 9 items


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_unusual_but_valid_images_are_searched(client):
    """Odd sizes and modes decode and search (no 500): 1x1, a thin strip, 16-bit, CMYK, palette with
    transparency, RGBA, an animated GIF, an EXIF-rotated JPEG, WebP."""
    base = pattern_image(3, (64, 48))
    rotated = base.copy()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    frames = [pattern_image(i, (40, 30)).convert("P") for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    images = {
        "1x1.png": _encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "strip.png": _encoded(Image.new("RGB", (4000, 2), (10, 200, 10)), "PNG"),
        "16bit.png": _encoded(Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)), "PNG"),
        "cmyk.jpg": _encoded(base.convert("CMYK"), "JPEG"),
        "palette.png": _encoded(base.convert("P"), "PNG", transparency=0),
        "rgba.png": _encoded(base.convert("RGBA"), "PNG"),
        "anim.gif": gif.getvalue(),
        "rotated.jpg": _encoded(rotated, "JPEG", exif=exif),
        "image.webp": _encoded(base, "WEBP"),
    }
    for name, data in images.items():
        r = client.post("/search", files={"image": (name, data)}, data={"k": "2"})
        assert r.status_code == 200, (name, r.text)
        assert len(r.json()["results"]) == 2


def test_bad_uploads_are_400_with_a_reason(client, tmp_path):
    trunc = write_truncated_jpeg(tmp_path / "t.jpg").read_bytes()
    cases = [
        (b"this is not an image", "not an image"),
        (b"", "empty"),
        (trunc, "cannot decode"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "image"),
    ]
    for data, words in cases:
        r = client.post("/search", files={"image": ("x.jpg", data, "image/jpeg")})
        _assert_error(r, 400, "bad_image", words)
        raw = client.post("/search", content=data, headers={"content-type": "image/jpeg"})
        _assert_error(raw, 400, "bad_image")


def test_multipart_without_an_image_field(client):
    _assert_error(client.post("/search", data={"k": "3"}, files={"other": ("x", b"1")}), 400, words="'image'")
    r = client.post("/search", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 400


@pytest.mark.parametrize(("k", "status"), [("0", 422), ("1001", 422), ("abc", 422), ("3", 200)])
def test_upload_k_limits(client, k, status):
    r = client.post("/search", files={"image": ("a.jpg", _jpeg_bytes())}, data={"k": k})
    assert r.status_code == status, r.text
    r = client.post(f"/search?k={k}", content=_jpeg_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == status, r.text


def test_upload_size_and_pixel_limits(index_path):
    big = _jpeg_bytes(size=(400, 300))
    app = create_app(index_path, max_upload_bytes=len(big) // 2, max_pixels=200 * 150)
    with local(app) as c:
        _assert_error(c.post("/search", files={"image": ("big.jpg", big)}), 413, "too_large", "limit")
        _assert_error(c.post("/search", content=big, headers={"content-type": "image/jpeg"}), 413, "too_large")

        def chunks():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        _assert_error(c.post("/search", content=chunks(), headers={"content-type": "image/jpeg"}), 413)
        small_but_many_pixels = _smooth_jpeg(size=(300, 200))  # 60,000 px > 30,000
        assert len(small_but_many_pixels) < len(big) // 2
        r = c.post("/search", files={"image": ("wide.jpg", small_but_many_pixels)})
        _assert_error(r, 400, "bad_image", "pixel limit")
        assert c.post("/search", files={"image": ("ok.jpg", _jpeg_bytes(size=(80, 60)))}).status_code == 200
        _assert_error(c.post("/search", content=b"1", headers={"content-length": "x"}), 400)


def test_default_upload_limit_is_20_mb(client):
    r = client.post("/search", content=b"\0" * (20 * 1024 * 1024 + 1), headers={"content-type": "image/jpeg"})
    _assert_error(r, 413, "too_large", "limit")


# ------------------------------------------------------------------------------ batch, recommend, duplicates


def test_batch_search(client, idx):
    ids = [_id(idx, p) for p in ("cats/c2.jpg", "dogs/d1.jpg", "birds/b1.jpg")]
    vectors = [idx.vector(i).tolist() for i in ids]
    r = client.post("/search/batch", json={"vectors": vectors, "k": 2})
    assert r.status_code == 200
    rows = r.json()["results"]
    assert len(rows) == 3 and [row[0]["id"] for row in rows] == ids and all(len(row) == 2 for row in rows)
    ex = client.post("/search/batch", json={"vectors": vectors, "k": 2, "exclude": ids}).json()["results"]
    assert not {h["id"] for row in ex for h in row} & set(ids)
    dim = idx.manifest.dim
    _assert_error(client.post("/search/batch", json={"vectors": [vectors[0], [1.0] * 3]}), 400, words="vector 1")
    _assert_error(client.post("/search/batch", json={"vectors": [vectors[0], [0.0] * dim]}), 400, words="vector 1")
    _assert_error(client.post("/search/batch", json={"vectors": []}), 422)
    _assert_error(client.post("/search/batch", json={"vectors": [[1.0]] * 1001}), 422)
    _assert_error(client.post("/search/batch", json={"vectors": vectors, "k": 1001}), 422)


def test_recommend(client, idx):
    pos = [_id(idx, "cats/c1.jpg"), _id(idx, "cats/c2.jpg")]
    neg = [_id(idx, "dogs/d1.jpg")]
    seen = [_id(idx, "copies/c1_copy.jpg"), _id(idx, "cats/c3.png")]
    r = client.post("/recommend", json={"positive": pos, "negative": neg, "exclude": seen, "k": 20})
    assert r.status_code == 200
    got = [h["id"] for h in r.json()["results"]]
    assert len(got) == 9 - len(pos) - len(neg) - len(seen)
    assert not set(got) & set(pos + neg + seen)
    like_cats = client.post("/recommend", json={"positive": pos, "k": 1}).json()["results"]
    assert like_cats[0]["path"] == "copies/c1_copy.jpg"
    birds = client.post("/recommend", json={"positive": pos, "filter": {"label": "birds"}}).json()["results"]
    assert {h["label"] for h in birds} == {"birds"}
    _assert_error(client.post("/recommend", json={"positive": [pos[0], 999]}), 404, "not_found", "999")
    _assert_error(client.post("/recommend", json={"positive": pos, "negative": [555, 556]}), 404, words="555, 556")
    _assert_error(client.post("/recommend", json={"positive": []}), 422, "invalid_request", "positive")
    _assert_error(client.post("/recommend", json={"negative": pos}), 422)
    _assert_error(client.post("/recommend", json={"positive": pos, "k": 5000}), 422)
    assert client.post("/recommend", json={"positive": pos, "exclude": [12345]}).status_code == 200


def test_duplicates_of_an_item(client, idx):
    orig, copy = _id(idx, "cats/c1.jpg"), _id(idx, "copies/c1_copy.jpg")
    r = client.get(f"/items/{orig}/duplicates")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == orig and body["group_size"] == 2 and body["threshold"] == DUPLICATES.threshold
    assert body["hash_distance"] == DUPLICATES.hash_distance and body["representative"] in (orig, copy)
    assert [h["id"] for h in body["duplicates"]] == [copy]
    assert body["duplicates"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert body["duplicates"][0]["reason"] == "cosine+hash" and body["duplicates"][0]["hash_distance"] <= 2
    params = {"threshold": 0.9999, "hash_distance": -1}
    lonely = client.get(f"/items/{_id(idx, 'birds/b1.jpg')}/duplicates", params=params).json()
    assert lonely["group_size"] == 1 and lonely["duplicates"] == []
    for t in (0, -0.5, 1.01, "high"):
        _assert_error(client.get(f"/items/{orig}/duplicates", params={"threshold": t}), 422, words="threshold")
    _assert_error(client.get(f"/items/{orig}/duplicates", params={"hash_distance": 65}), 422, words="hash_distance")


# ------------------------------------------------------------------------------ API key


def test_api_key_required_everywhere_but_health(index_path, idx):
    i = _id(idx, "cats/c1.jpg")
    with local(create_app(index_path, api_key="s3cret")) as c:
        assert c.get("/health").status_code == 200
        routes = [("get", "/info"), ("get", f"/items/{i}"), ("get", f"/items/{i}/similar"),
                  ("get", f"/items/{i}/thumbnail"), ("get", f"/items/{i}/duplicates"), ("get", "/docs"),
                  ("get", "/openapi.json"), ("get", "/static/app.js"), ("post", "/search"), ("post", "/search/batch"),
                  ("post", "/recommend"), ("post", "/admin/reload"), ("get", "/nope")]  # fmt: skip
        for method, path in routes:
            _assert_error(getattr(c, method)(path), 401, "unauthorized", "api key")
            _assert_error(getattr(c, method)(path, headers={"X-API-Key": "wrong"}), 401)
        page = c.get("/")
        assert page.status_code == 401 and "api_key" in page.text
        assert c.get(f"/items/{i}", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get(f"/items/{i}", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get(f"/items/{i}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/openapi.json", headers={"X-API-Key": "s3cret"}).status_code == 200
        # a person opens /?api_key=KEY once: a cookie carries the key for the page, its thumbnails and searches
        r = c.get("/", params={"api_key": "wrong"}, follow_redirects=False)
        assert r.status_code == 401
        r = c.get("/", params={"api_key": "s3cret"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/" and "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/").status_code == 200  # the client kept the cookie
        assert c.get(f"/items/{i}/thumbnail").status_code == 200
        c.cookies.clear()
        assert c.get(f"/items/{i}", params={"api_key": "s3cret"}).status_code == 401  # only / takes the query key


def test_serve_command_options(monkeypatch, index_path):
    """`simsearch serve` passes a ServeSpec whose defaults are the ServeSpec's own."""
    from click.testing import CliRunner

    import simsearch.server
    from simsearch.cli import main
    from simsearch.config import SERVE

    calls = []
    monkeypatch.setattr(simsearch.server, "serve", lambda path, spec, **kw: calls.append((path, spec, kw)))
    monkeypatch.setenv(SERVE.api_key_env, "from-env")
    r = CliRunner().invoke(main, ["serve", str(index_path), "--port", "0"])
    assert r.exit_code == 0, r.output
    path, spec, kw = calls[-1]
    assert path == str(index_path) and kw["api_key"] == "from-env"
    assert spec.host == SERVE.host == "127.0.0.1" and spec.port == 0 and spec.preload is True
    assert spec.allow_reload is False and spec.max_upload_bytes == SERVE.max_upload_bytes == 20 * 1024 * 1024
    assert spec.max_pixels == SERVE.max_pixels and spec.allowed_hosts == () and spec.expose_paths is False
    assert spec.hosts() >= {"127.0.0.1", "localhost", "::1"}
    args = ["serve", str(index_path), "--api-key", "k2", "--watch", "2", "--max-upload-mb", "1", "--host", "10.0.0.5",
            "--allowed-hosts", "photos.example,10.0.0.5", "--allowed-hosts", "*.lan", "--expose-paths"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    _, spec, kw = calls[-1]
    assert kw["api_key"] == "k2" and spec.allow_reload is True and spec.watch_seconds == 2
    assert spec.max_upload_bytes == 1024 * 1024 and spec.expose_paths is True
    assert spec.allowed_hosts == ("photos.example", "10.0.0.5", "*.lan") and "localhost" not in spec.hosts()
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "--allowed-hosts" in help_text and "--expose-paths" in help_text and "20.0" in help_text


def test_serve_refuses_a_missing_index(tmp_path):
    from click.testing import CliRunner

    from simsearch.cli import main

    r = CliRunner().invoke(main, ["serve", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no index at" in r.output and "Traceback" not in r.output


def test_serve_really_listens_on_loopback(index_path):
    """The real stack (uvicorn) on 127.0.0.1, port chosen by the OS."""
    import httpx2 as httpx
    import uvicorn

    config = uvicorn.Config(create_app(index_path), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
    finally:
        server.should_exit = True
        t.join(timeout=10)


# ------------------------------------------------------------------------------ reloads and threads


@pytest.fixture
def writable_index(tmp_path, index_path):
    """A private copy of the module's index (and of its photos) that a test may update."""
    root = _make_collection(tmp_path / "photos")
    out = tmp_path / "index"
    build_index([root], out, backbone=TINY, batch_size=4, workers=2)
    return root, out


def test_reload_serves_a_newer_index(writable_index):
    root, out = writable_index
    with local(create_app(out, allow_reload=True)) as c:
        before = c.get("/health").json()
        assert c.post("/admin/reload").json() == {"reloaded": False, **{k: before[k] for k in ("generation", "count")}}
        write_image(root / "fish/f1.jpg", 42)
        build_index([root], out, backbone=TINY, workers=1)
        assert c.get("/health").json()["count"] == 9  # still the index it loaded
        r = c.post("/admin/reload").json()
        assert r["reloaded"] is True and r["count"] == 10 and r["generation"] > before["generation"]
        with simsearch.open_index(out) as idx:
            new = _id(idx, "fish/f1.jpg")
        assert c.get(f"/items/{new}").json()["label"] == "fish"
        assert c.post("/admin/reload", params={"force": "true"}).json()["reloaded"] is True


def test_reload_off_by_default(client):
    _assert_error(client.post("/admin/reload"), 403, "forbidden", "--allow-reload")


def test_watch_reloads_when_the_index_changes(writable_index):
    root, out = writable_index
    with local(create_app(out, watch_seconds=0.1)) as c:
        write_image(root / "fish/f2.jpg", 43)
        build_index([root], out, backbone=TINY, workers=1)
        deadline = time.time() + 15
        while c.get("/health").json()["count"] != 10 and time.time() < deadline:
            time.sleep(0.1)
        assert c.get("/health").json()["count"] == 10


def test_reload_keeps_requests_in_flight_on_their_index(writable_index):
    """An index leased by a request stays open through a reload and is closed once the request is done."""
    root, out = writable_index
    state = ServiceState(out, allow_reload=True)
    with state.index() as old:
        write_image(root / "fish/f3.jpg", 44)
        build_index([root], out, backbone=TINY, workers=1)
        assert state.reload() is True
        assert len(old) == 9 and old.item(int(old.ids()[0]))  # still usable
        assert len(state.current) == 10
    with pytest.raises(Exception):  # noqa: B017 - closed now (sqlite3.ProgrammingError)
        old.item(int(old.ids()[0]))
    state.close()


def test_concurrent_searches_during_reloads(writable_index):
    """Many threads search while another reloads the index over and over: no error, no wrong answer."""
    _, out = writable_index
    state = ServiceState(out, allow_reload=True)
    with state.index() as idx:
        ids = [int(i) for i in idx.ids()]
        vectors = {i: idx.vector(i) for i in ids}
    errors: list = []
    stop = threading.Event()

    def searcher(n):
        from simsearch.search import search

        try:
            for j in range(60):
                i = ids[(n + j) % len(ids)]
                with state.index() as index:
                    hits = search(index, vectors[i], k=3, exclude_query=False)
                assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        except Exception as e:
            errors.append(e)

    def reloader():
        while not stop.is_set():
            state.reload(force=True)

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(8)]
    rt = threading.Thread(target=reloader)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    rt.join()
    state.close()
    assert not errors, errors[:3]


def test_searcher_coalesces_waiting_queries(idx):
    """Searches waiting together are answered by one index search, and each gets the hits of a search of its own."""
    from simsearch.backbones import l2_normalize
    from simsearch.config import BatchSpec
    from simsearch.searcher import Searcher

    ids, vecs = idx.vectors()
    vecs = l2_normalize(vecs)
    gate = threading.Event()
    searcher = Searcher(BatchSpec(linger_s=0.0, workers=1), on_start=gate.wait)  # waits until all are queued
    futures = [searcher.submit(idx, v, 1 + n % 4) for n, v in enumerate(vecs)]
    excluding = searcher.submit(idx, vecs[0], 3, exclude=[int(ids[0])])
    filtered = searcher.submit(idx, vecs[0], 9, filter={"label": "cats"})
    gate.set()
    for n, (v, fut) in enumerate(zip(vecs, futures, strict=True)):
        want = idx.search_vectors(v[None, :], k=1 + n % 4)[0]
        got = fut.result(timeout=30)
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
        # the same items, but among items tied with the last score (the fixture has duplicate photos) an index
        # search that fetched more for the batch may keep another one
        above = [h.id for h in want if h.score > want[-1].score + 1e-5]
        assert [h.id for h in got[: len(above)]] == above
    ex = excluding.result(timeout=30)
    assert [h.rank for h in ex] == [1, 2, 3] and int(ids[0]) not in [h.id for h in ex]
    assert {h.label for h in filtered.result(timeout=30)} == {"cats"}
    # the unfiltered ones (each with its own exclusions) in one search, the filtered one apart
    assert searcher.batches == 2 and searcher.queries == len(vecs) + 2
    assert len(searcher.search(idx, vecs[0], 2)) == 2  # and one at a time
    searcher.close()


def test_service_searches_match_the_library(index_path, idx):
    """The service's batched path (over-fetch, drop excluded) gives the library's answers."""
    from simsearch.search import search

    state = ServiceState(index_path)
    try:
        for i in idx.ids().tolist():
            v = idx.vector(i)
            for exclude in ([], [i], idx.ids()[:3].tolist(), list(range(300))):
                for flt in (None, {"label": "cats"}, {"label": ["cats", "dogs"], "path_prefix": "cats/"}):
                    with state.index() as index:
                        got = state.searcher.search(index, v / np.linalg.norm(v), 4, exclude=exclude, filter=flt)
                    hits = search(idx, v, k=4, exclude=exclude, filter=flt)
                    assert [h.score for h in got] == pytest.approx([h.score for h in hits], abs=1e-5)
                    assert [h.rank for h in got] == list(range(1, len(got) + 1))
                    assert not set(exclude) & {h.id for h in got}
                    for h in got:
                        it = idx.item(h.id)
                        assert (h.path, h.label) == (it.path, it.label) and (not flt or it.label == "cats")
                    if len({round(h.score, 4) for h in hits}) == len(hits):  # no ties: the same ids in order
                        assert [h.id for h in got] == [h.id for h in hits]
    finally:
        state.close()


def test_concurrent_http_requests(client, idx):
    ids = [int(i) for i in idx.ids()]
    results: list = []

    def worker(n):
        for j in range(10):
            i = ids[(n + j) % len(ids)]
            r = client.get(f"/items/{i}/similar", params={"k": 3})
            v = client.post("/search", json={"vector": idx.vector(i).tolist(), "k": 1})
            top = v.json()["results"][0]  # (or its exact copy: same vector)
            results.append(
                (
                    r.status_code,
                    v.status_code,
                    top["score"] > 0.9999 and i not in [h["id"] for h in r.json()["results"]],
                )
            )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60 and all(r == (200, 200, True) for r in results)


def test_no_bad_input_gives_a_500(client, idx):
    """A sweep of malformed requests: each gets a 4xx JSON answer, never a server error."""
    i = _id(idx, "cats/c1.jpg")
    requests = [
        ("post", "/search", {"content": b"\x00" * 100, "headers": {"content-type": "image/png"}}),
        ("post", "/search", {"content": b"GIF89a" + b"\xff" * 30, "headers": {"content-type": "image/gif"}}),
        ("post", "/search", {"json": {"vector": [1e308] * idx.manifest.dim}}),
        ("post", "/search/batch", {"json": {"vectors": [[1e38] * idx.manifest.dim]}}),
        ("post", "/search", {"json": {"vector": [1.0] * 70000}}),
        ("post", "/search", {"json": {"vector": [1.0], "filter": "cats"}}),
        ("post", "/search", {"json": {"vector": [1.0], "filter": {"label": 5}}}),
        ("post", "/search", {"files": {"image": ("a", b"")}, "data": {"filter": "{"}}),
        ("post", "/search", {"content": b"x", "headers": {"content-type": "multipart/form-data"}}),
        ("post", "/search/batch", {"json": {"vectors": [[]]}}),
        ("post", "/search/batch", {"json": {"vectors": [["x"]]}}),
        ("post", "/search/batch", {"content": b"[", "headers": {"content-type": "application/json"}}),
        ("post", "/recommend", {"json": {"positive": ["a"]}}),
        ("post", "/recommend", {"json": {"positive": [i], "negative_weight": "x"}}),
        ("post", "/recommend", {"json": {"positive": [i], "negative": [i]}}),
        ("post", "/recommend", {"content": b"\xff", "headers": {"content-type": "application/json"}}),
        ("get", f"/items/{i}/similar?k=1&label=", {}),
        ("get", f"/items/{i}/similar?path_prefix=" + "x" * 5000, {}),
        ("get", "/items/%00", {}),
        ("get", "/items/../../etc/passwd", {}),
        ("get", f"/items/{i}/thumbnail?size=1e9", {}),
        ("put", "/search", {}),
    ]
    for method, path, kw in requests:
        r = getattr(client, method)(path, **kw)
        assert 200 <= r.status_code < 500, (method, path, r.status_code, r.text)
        if r.status_code >= 400:
            assert "detail" in r.json()


def test_library_example_for_a_backend(index_path):
    """The README's "Use from Python" example: a backend mounting the service in its own FastAPI app."""
    from fastapi import FastAPI

    backend = FastAPI()
    backend.mount("/similar-images", create_app(index_path, allowed_hosts=("testserver",)))
    with TestClient(backend) as c:
        assert c.get("/similar-images/health").json()["status"] == "ok"
        hit = c.get("/similar-images/items/0/similar", params={"k": 1}).json()["results"][0]
        assert hit["thumbnail"] == f"/similar-images/items/{hit['id']}/thumbnail"
        assert c.get(hit["thumbnail"]).headers["content-type"] == "image/jpeg"
        page = c.get("/similar-images/")
        assert page.status_code == 200 and c.get("/similar-images/static/app.js").status_code == 200
