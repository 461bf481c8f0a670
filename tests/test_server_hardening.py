"""Regression tests of issue 14: each numbered reproduction, and the generalised limits behind them.

The service runs on a small index of the tiny random-weight backbone (through TestClient), and for the log and
disconnect checks on a real uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from conftest import LAYOUT, TINY, copy_file, write_image, write_truncated_jpeg

import simsearch
from simsearch.config import LIMITS
from simsearch.index import build_index

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient

from simsearch.server import create_app
from simsearch.server.guard import RedactKeys, cookie_value, host_name

KEY = "k3y-Secret_123"


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, _register_tiny_backbone):
    base = tmp_path_factory.mktemp("hardening")
    root = base / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed, size=(96, 72))
    copy_file(root / "cats/c1.jpg", root / "copies/c1_copy.jpg")
    write_image(root / "broken/half.jpg", 9, size=(120, 90))
    build_index([root], base / "index", backbone=TINY, batch_size=4, workers=1)
    # indexed while whole, damaged since: the item exists, its thumbnail cannot be made
    write_truncated_jpeg(root / "broken/half.jpg", seed=9)
    return base / "index"


@pytest.fixture(scope="module")
def client(index_path):
    with TestClient(create_app(index_path), base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def idx(index_path):
    with simsearch.open_index(index_path) as index:
        yield index


def _id(idx, rel: str) -> int:
    i = idx.id_for_path(rel)
    assert i is not None, rel
    return i


def _error(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    for w in words:
        assert w.lower() in body["detail"].lower(), body["detail"]
    return body["detail"]


def _raw_json(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


# ------------------------------------------------------------------------------ 1. text that is not UTF-8


def test_1_lone_surrogates_are_refused_everywhere(client, idx):
    i = _id(idx, "cats/c1.jpg")
    vec = json.dumps(idx.vector(i).tolist())
    bodies = {
        "/recommend": f'{{"positive": [{i}], "filter": {{"label": "\\ud800"}}}}',
        "/search/batch": f'{{"vectors": [{vec}], "filter": {{"label": ["cats", "\\udfff"]}}}}',
        "/search": f'{{"vector": {vec}, "filter": {{"path_prefix": "a\\ud800b"}}}}',
    }
    for path, text in bodies.items():
        _error(_raw_json(client, path, text), 422)
    # the model refuses them too when they do not come from JSON (e.g. a form field decoded leniently)
    from pydantic import ValidationError

    from simsearch.server.models import Filter

    with pytest.raises(ValidationError, match=r"(?i)unicode|utf-8"):
        Filter(label="\ud800")
    r = client.post(
        "/search", files={"image": ("a.jpg", idx.item(i).abspath.read_bytes())}, data={"label": b"\xed\xa0\x80"}
    )
    assert r.status_code in (200, 422), r.text  # never a 500
    # a proper non-ASCII label is fine (and matches nothing here)
    r = _raw_json(client, "/recommend", f'{{"positive": [{i}], "filter": {{"label": "chats 🐱"}}}}')
    assert r.status_code == 200 and r.json()["results"] == []


# ------------------------------------------------------------------------------ 2. many filter values


def test_2_filter_lists_are_capped_and_never_one_sql_variable_each(client, idx):
    i = _id(idx, "cats/c1.jpg")
    vec = idx.vector(i).tolist()
    n = LIMITS.serve_max_values
    many = ["cats"] + [f"x{j}" for j in range(n - 1)]  # exactly the cap: answered (10,000 < SQLite's 32,766)
    too_many = [f"x{j}" for j in range(250_001)]  # the 3 MB body
    for path, body in (
        ("/search", {"vector": vec}),
        ("/search/batch", {"vectors": [vec]}),
        ("/recommend", {"positive": [i]}),
    ):
        ok = client.post(path, json={**body, "filter": {"label": many}})
        assert ok.status_code == 200, ok.text[:300]
        _error(client.post(path, json={**body, "filter": {"label": too_many}}), 422, "label", f"{n:,}".replace(",", ""))
    q = "&".join(["label"] * (n + 1))  # (blank values: a URL of 10,001 real labels is longer than clients allow)
    _error(client.get(f"/items/{i}/similar?{q}"), 422, "label")


def test_every_list_and_the_total_work_are_bounded(client, idx):
    i = _id(idx, "cats/c1.jpg")
    vec = idx.vector(i).tolist()
    # 5. vectors x k: the 1,000 x 1,000 is refused with the numbers; the cap itself is answered
    _error(client.post("/search/batch", json={"vectors": [vec] * 1000, "k": 1000}), 422, "1,000,000", "100,000")
    assert client.post("/search/batch", json={"vectors": [vec] * 100, "k": 1000}).status_code == 200
    # ids in a request, all lists together
    half = LIMITS.serve_max_ids // 2 + 1
    _error(client.post("/recommend", json={"positive": [i], "negative": [i] * half, "exclude": [i] * half}), 422, "ids")
    _error(client.post("/search", json={"vector": vec, "exclude": [1] * (LIMITS.serve_max_ids + 1)}), 422, "exclude")
    # text length
    _error(client.post("/search", json={"vector": vec, "filter": {"label": "x" * (LIMITS.serve_max_text + 1)}}), 422)
    # and every limit is shown in /info
    limits = client.get("/info").json()["server"]["limits"]
    for name in ("max_k", "max_batch", "max_work", "max_ids", "max_values", "max_text", "max_dim"):
        assert limits[name] == getattr(LIMITS, f"serve_{name}", None) or limits[name] == getattr(LIMITS, name)


# ------------------------------------------------------------------------------ 3. other cookies of the host


@pytest.mark.parametrize(
    "other",
    ['other={"a":1}', "session=a b c", "name=välue", 'x="unterminated', "=novalue", "flag", "a=b=c"],
)
def test_3_the_key_cookie_is_read_whatever_other_cookies_hold(index_path, other):
    with TestClient(create_app(index_path, api_key=KEY), base_url="http://localhost") as c:
        for cookie in (f"{other}; simsearch_api_key={KEY}", f"simsearch_api_key={KEY}; {other}"):
            r = c.get("/info", headers={"Cookie": cookie.encode("utf-8")})
            assert r.status_code == 200, (cookie, r.text)
        _error(c.get("/info", headers={"Cookie": f"{other}; simsearch_api_key=wrong".encode()}), 401)
    assert cookie_value(b'a={"x": 1}; simsearch_api_key="q"', "simsearch_api_key") == "q"


# ------------------------------------------------------------------------------ 4. large finite vectors


def test_4_batch_search_normalises_large_vectors_like_search(client, idx):
    i = _id(idx, "birds/b2.jpg")
    v = idx.vector(i)
    big = (v * np.float32(1e38) / np.abs(v).max()).tolist()  # finite in float32; its square is not
    one = client.post("/search", json={"vector": big, "k": 5}).json()["results"]
    batch = client.post("/search/batch", json={"vectors": [big], "k": 5}).json()["results"][0]
    assert [h["id"] for h in batch] == [h["id"] for h in one] and batch[0]["id"] == i
    assert batch[0]["score"] == pytest.approx(1.0, abs=1e-4) and all(h["score"] != 0 for h in batch)
    huge = client.post("/search/batch", json={"vectors": [[1e300] * idx.manifest.dim], "k": 3})
    assert huge.status_code == 200 and len({h["score"] for h in huge.json()["results"][0]}) >= 1


# ------------------------------------------------------------------------------ 7. Host header


def test_7_unknown_hosts_are_refused(index_path):
    with TestClient(create_app(index_path), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.nip.io", "localhost.attacker.example"):
            _error(c.get("/health", headers={"Host": host}), 400, "host", "--allowed-hosts")
            _error(c.get("/info", headers={"Host": host}), 400)
        for host in ("localhost:8000", "[::1]:8000", "LOCALHOST", "127.0.0.1"):
            assert c.get("/health", headers={"Host": host}).status_code == 200, host
    app = create_app(index_path, host="0.0.0.0", allowed_hosts=("photos.example", "*.lan"))
    with TestClient(app, base_url="http://photos.example") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "box.lan:8000"}).status_code == 200
        _error(c.get("/health", headers={"Host": "localhost"}), 400)  # not listed: only the hosts given
    with TestClient(create_app(index_path, allowed_hosts=("*",)), base_url="http://anything.example") as c:
        assert c.get("/health").status_code == 200
    assert host_name(b"[::1]:80") == "::1" and host_name(b"Example.COM:443") == "example.com"


# ------------------------------------------------------------------------------ 9. one meaning of a repeated label


def test_9_a_repeated_label_means_any_of_them_everywhere(client, idx):
    i = _id(idx, "cats/c1.jpg")
    data = idx.item(_id(idx, "dogs/d1.jpg")).abspath.read_bytes()
    both = {"cats", "birds"}
    raw = client.post("/search?k=20&label=cats&label=birds", content=data, headers={"content-type": "image/jpeg"})
    form = client.post("/search", files={"image": ("d.jpg", data)}, data={"k": "20", "label": ["cats", "birds"]})
    similar = client.get(f"/items/{i}/similar", params=[("k", 20), ("label", "cats"), ("label", "birds")])
    vector = client.post("/search", json={"vector": idx.vector(i).tolist(), "k": 20, "filter": {"label": list(both)}})
    for r in (raw, form, similar, vector):
        assert r.status_code == 200, r.text
        assert {h["label"] for h in r.json()["results"]} == both


# ------------------------------------------------------------------------------ 10. messages


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_10_messages_quote_the_service_and_say_where(client, index_path, idx):
    # the upload limit as it was given (MiB), not 20.9715 MB
    r = client.post("/search", content=b"\0" * (20 * 1024 * 1024 + 1), headers={"content-type": "image/jpeg"})
    assert "20 MiB" in _error(r, 413)
    with TestClient(create_app(index_path, max_upload_bytes=1536), base_url="http://localhost") as c:
        assert "1.5 KiB" in _error(c.post("/search", content=b"\0" * 2000, headers={"content-type": "image/png"}), 413)
    # a decompression bomb over Pillow's own limit: the service's limit is quoted
    for data in (_png_header(20_000, 10_000), _png_header(7_000, 7_000)):
        detail = _error(client.post("/search", files={"image": ("bomb.png", data)}), 400, "pixel limit", "40,000,000")
        assert "178,956,970" not in detail and "178956970" not in detail
    # a JSON syntax error says where, the same way on every JSON route
    for path in ("/search", "/search/batch", "/recommend"):
        detail = _error(_raw_json(client, path, '{"k": 3,}'), 422, "not valid JSON", "column 9")
        assert "JSON decode error" not in detail
    # each unknown id once
    detail = _error(client.post("/recommend", json={"positive": [999, 999, 998], "negative": [998]}), 404)
    assert detail == "no items with ids 999, 998"


# ------------------------------------------------------------------------------ 11. absolute paths


def test_11_absolute_paths_stay_out_of_responses(index_path, idx, tmp_path):
    secret_places = [str(index_path), *idx.manifest.roots, str(index_path.parent)]
    i = _id(idx, "cats/c1.jpg")
    gone = _id(idx, "broken/half.jpg")
    with TestClient(create_app(index_path), base_url="http://localhost") as c:
        answers = [
            c.get("/info"),
            c.get(f"/items/{i}"),
            c.get(f"/items/{gone}/thumbnail"),
            c.get(f"/items/{i}/similar"),
            c.post("/search", json={"vector": idx.vector(i).tolist()}),
            c.get(f"/items/{i}/duplicates"),
        ]
        assert answers[2].status_code == 404 and "cannot be read" in answers[2].json()["detail"]
        for r in answers:
            for place in secret_places:
                assert place not in r.text, (r.request.url, place)
        info = answers[0].json()
        assert info["name"] == index_path.name and info["roots"] == ["…/photos"]
        assert "root" not in answers[1].json() and "abspath" not in answers[3].json()["results"][0]
    with TestClient(create_app(index_path, expose_paths=True), base_url="http://localhost") as c:
        assert c.get("/info").json()["path"] == str(index_path)
        assert c.get(f"/items/{i}").json()["root"] == idx.manifest.roots[0]
        assert c.get(f"/items/{i}/similar").json()["results"][0]["abspath"].startswith(idx.manifest.roots[0])


# ------------------------------------------------------------------------------ 12. HEAD, vectors, files, labels


def test_12_head_is_answered_like_get_without_a_body(client, idx):
    i = _id(idx, "cats/c1.jpg")
    for path in ("/health", "/info", f"/items/{i}", f"/items/{i}/thumbnail", f"/items/{i}/image", "/", "/labels",
                 "/static/app.js", "/docs"):  # fmt: skip
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    assert client.head("/items/999").status_code == 404
    assert client.head("/search").status_code == 405


def test_12_an_items_vector_file_and_labels(client, idx):
    i = _id(idx, "dogs/d2.png")
    body = client.get(f"/items/{i}/vector").json()
    assert body["id"] == i and body["dim"] == idx.manifest.dim
    assert np.allclose(body["vector"], idx.vector(i), atol=1e-7)
    _error(client.get("/items/999/vector"), 404)
    f = client.get(f"/items/{i}/image")
    assert f.status_code == 200 and f.headers["content-type"] == "image/png"
    assert f.content == idx.item(i).abspath.read_bytes() and f.headers["x-content-type-options"] == "nosniff"
    labels = client.get("/labels").json()
    counts = {x["label"]: x["count"] for x in labels["labels"]}
    assert counts == {"cats": 3, "dogs": 2, "puppies": 1, "birds": 2, "copies": 1, "broken": 1}
    assert labels["total"] == 6 and [x["count"] for x in labels["labels"]] == sorted(counts.values(), reverse=True)
    assert len(client.get("/labels", params={"limit": 2}).json()["labels"]) == 2


def test_item_names_from_requests_never_reach_the_file_system(client, idx):
    """Found by the fuzzer: a key "~nobody" made the library expand a home directory (500). Names in requests
    are ids or keys only: paths, even of indexed files, do not name items over HTTP."""
    i = _id(idx, "cats/c1.jpg")
    for ref in ("~nobody-such-user", "~", "/etc/passwd", str(idx.item(i).abspath), "cats/c1.jpg/..", "."):
        _error(client.post("/recommend", json={"positive": [ref]}), 404, "no item with key")
        assert client.post("/search", json={"vector": idx.vector(i).tolist(), "exclude": [ref]}).status_code == 200
    _error(client.get("/items/~nobody-such-user"), 404)
    assert client.post("/recommend", json={"positive": [idx.item(i).key]}).status_code == 200  # a key is fine


# ------------------------------------------------------------------------------ 6 and 8: a real uvicorn


@pytest.fixture
def live(index_path):
    """The app under uvicorn on 127.0.0.1 (port chosen by the OS), access log on; yields (port, records)."""
    import uvicorn

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error", "simsearch.server", "simsearch")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    config = uvicorn.Config(create_app(index_path, api_key=KEY), host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield port, records
    server.should_exit = True
    thread.join(timeout=10)
    for lg in loggers:
        lg.removeHandler(handler)


def test_6_the_key_never_reaches_the_access_log(live):
    import httpx2 as httpx

    port, records = live
    base = f"http://127.0.0.1:{port}"
    r = httpx.get(f"{base}/?api_key={KEY}&label=cats", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?label=cats"  # the key leaves the address
    assert KEY not in r.headers["location"] and "HttpOnly" in r.headers["set-cookie"]
    assert httpx.get(f"{base}/info?api_key={KEY}").status_code == 401  # only the page takes it, once
    assert httpx.get(f"{base}/info", headers={"X-API-Key": KEY}).status_code == 200
    time.sleep(0.2)
    access = [rec for rec in records if rec.name == "uvicorn.access"]
    assert len(access) >= 3
    text = "\n".join(rec.getMessage() for rec in records)
    assert KEY not in text and "/?label=cats" in text
    # the filter `simsearch serve` installs on uvicorn's loggers, for anything else that logs a key
    rec = logging.LogRecord("uvicorn.access", 20, "", 0, '%s "%s %s"', ("1.2.3.4", "GET", f"/x?api_key={KEY}"), None)
    RedactKeys().filter(rec)
    assert KEY not in rec.getMessage() and "api_key=[redacted]" in rec.getMessage()


def test_8_a_client_that_hangs_up_mid_body_is_not_an_internal_error(live):
    port, records = live
    for path in ("/search", "/search/batch", "/recommend"):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
                + b'{"vector": [0.1, 0.2'
            )
            time.sleep(0.2)
    time.sleep(0.5)
    bad = [rec for rec in records if rec.levelno >= logging.ERROR]
    assert not bad, [rec.getMessage() for rec in bad]
    import httpx2 as httpx

    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


def test_the_page_needs_the_key_once(index_path):
    with TestClient(create_app(index_path, api_key=KEY), base_url="http://localhost") as c:
        r = c.get("/", params={"api_key": KEY, "item": "3"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?item=3"
        assert c.get("/?item=3").status_code == 200 and c.get("/labels").status_code == 200  # the cookie
        c.cookies.clear()
        _error(c.get("/labels", params={"api_key": KEY}), 401)
        assert c.get("/", params={"api_key": KEY + "x"}, follow_redirects=False).status_code == 401
