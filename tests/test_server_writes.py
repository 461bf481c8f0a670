"""Live writes over HTTP: PUT, PATCH, DELETE /items/{key} and POST /items/batch; kill -9 of the served process."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import LAYOUT, SAMPLE, TINY, pattern_image, write_image

import simsearch
from simsearch.compact import compact_index
from simsearch.index import build_index, verify_index

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient

from simsearch.server import create_app
from simsearch.server.state import ServiceState

LOCAL = "http://localhost"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    pattern_image(seed, (96, 72)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def served(tmp_path, _register_tiny_backbone):
    root = tmp_path / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed, size=(96, 72))
    out = tmp_path / "index"
    build_index([root], out, backbone=TINY, batch_size=4, workers=2)
    return out


def put(client, key, seed, attributes):
    return client.put(
        f"/items/{key}",
        files={"photo": ("p.jpg", jpeg(seed), "image/jpeg")},
        data={"attributes": json.dumps(attributes)},
    )


def search_keys(client, dim, flt=None, k=50):
    body = {"vector": [1.0] + [0.0] * (dim - 1), "k": k}
    if flt:
        body["filter"] = flt
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return [h["key"] for h in r.json()["results"]]


def test_put_patch_delete_are_searchable_at_once_and_durable(served):
    with TestClient(create_app(served), base_url=LOCAL) as client:
        dim = client.get("/info").json()["dim"]
        r = put(client, "sku-1", 101, {"brand": "acme", "price": 20, "tags": ["sale"]})
        assert r.status_code == 200, r.text
        assert r.json()["op"] == "put" and r.json()["pending_writes"] >= 1
        assert search_keys(client, dim, {"brand": "acme"}) == ["sku-1"]
        item = client.get("/items/sku-1").json()
        assert item["key"] == "sku-1" and item["attributes"] == {"brand": "acme", "price": 20, "tags": ["sale"]}
        assert client.get("/items/sku-1/similar?k=3").status_code == 200
        assert client.patch("/items/sku-1", json={"attributes": {"price": 15, "tags": None}}).status_code == 200
        assert search_keys(client, dim, {"price": {"lt": 16}}) == ["sku-1"]
        assert "tags" not in client.get("/items/sku-1").json()["attributes"]
        # the same upload embedded over HTTP finds the new item first
        hits = client.post("/search", files={"image": ("q.jpg", jpeg(101), "image/jpeg")}, data={"k": "1"}).json()
        assert hits["results"][0]["key"] == "sku-1"
        assert client.delete("/items/sku-1").status_code == 200
        assert client.get("/items/sku-1").status_code == 404
        assert search_keys(client, dim, {"brand": "acme"}) == []
        # folder items are items with keys too
        assert client.patch("/items/cats/c1.jpg", json={"attributes": {"label": "kittens"}}).status_code == 200
        assert search_keys(client, dim, {"label": "kittens"}) == ["cats/c1.jpg"]
    compact_index(served)
    assert verify_index(served)[0] == []
    with simsearch.open_index(served) as idx:
        assert idx.id_for_key("sku-1") is None and idx.item(idx.id_for_key("cats/c1.jpg")).label == "kittens"


def test_batch_is_all_or_nothing_and_bad_writes_are_4xx(served):
    with TestClient(create_app(served), base_url=LOCAL) as client:
        dim = client.get("/info").json()["dim"]
        ops = [
            {"op": "put", "key": "a", "attributes": {"brand": "x"}, "photos": [base64.b64encode(jpeg(1)).decode()]},
            {"op": "put", "key": "b", "attributes": {"brand": "x"}, "photos": [base64.b64encode(jpeg(2)).decode()]},
            {"op": "delete", "key": "no-such-key"},
        ]
        r = client.post("/items/batch", json={"operations": ops})
        assert r.status_code == 404 and set(r.json()) == {"error", "detail"}
        assert client.get("/items/a").status_code == 404  # nothing of the failed batch was written
        r = client.post("/items/batch", json={"operations": ops[:2]})
        assert r.status_code == 200 and r.json()["written"] == 2
        assert sorted(search_keys(client, dim, {"brand": "x"})) == ["a", "b"]
        bad = [
            client.put("/items/c", data={"attributes": "{}"}),  # no photo
            client.put("/items/c", files={"photo": ("p.jpg", b"not an image", "image/jpeg")}),
            put(client, "c", 3, {"label": 5}),  # label holds text in this index
            put(client, "c", 3, {"key": "reserved"}),
            client.put("/items/c", files={"photo": ("p.jpg", jpeg(3), "image/jpeg")}, data={"attributes": "{oops"}),
            client.patch("/items/no-such-key", json={"attributes": {"x": 1}}),
            client.patch(  # a lone surrogate, as a JSON escape
                "/items/a",
                content=b'{"attributes": {"brand": "\\ud800"}}',
                headers={"Content-Type": "application/json"},
            ),
            client.delete("/items/no-such-key"),
            client.post("/items/batch", json={"operations": []}),
            client.post("/items/batch", json={"operations": [{"op": "put", "key": "z", "photos": ["@@@"]}]}),
        ]
        for r in bad:
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
            assert set(r.json()) == {"error", "detail"}, r.text
        assert client.get("/items/c").status_code == 404
    with TestClient(create_app(served, read_only=True), base_url=LOCAL) as client:
        r = put(client, "d", 4, {})
        assert r.status_code == 405 and r.json()["error"] == "read_only"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _serve(index, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "simsearch.cli", "serve", str(index), "--port", str(port), "-q", "--compact-seconds",
         "0.5", "--compact-writes", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    for _ in range(600):
        try:
            if _http("GET", f"http://127.0.0.1:{port}/health")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode()[-2000:])


@pytest.mark.slow
def test_acknowledged_http_writes_survive_kill_9_of_the_server(tmp_path):
    index = tmp_path / "sample"
    build_index([SAMPLE], index)
    port = _free_port()
    server = _serve(index, port)
    acked = {}
    try:
        for n in range(24):
            body = json.dumps(
                {
                    "operations": [
                        {
                            "op": "put",
                            "key": f"live-{n}",
                            "attributes": {"n": n, "label": "live"},
                            "photos": [base64.b64encode(jpeg(n)).decode()],
                        }
                    ]
                }
            ).encode()
            status, r = _http(
                "POST", f"http://127.0.0.1:{port}/items/batch", body, {"Content-Type": "application/json"}
            )
            assert status == 200, r
            acked[f"live-{n}"] = n
            if n == 17:
                os.kill(server.pid, signal.SIGKILL)  # mid-run: some writes compacted, some only journalled
                server.wait()
                server = _serve(index, port)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        server = _serve(index, port)
        for key, n in acked.items():
            status, item = _http("GET", f"http://127.0.0.1:{port}/items/{key}")
            assert status == 200 and item["attributes"]["n"] == n
        dim = _http("GET", f"http://127.0.0.1:{port}/info")[1]["dim"]
        q = json.dumps({"vector": [1.0] + [0.0] * (dim - 1), "k": 100, "filter": {"label": "live"}}).encode()
        keys = [
            h["key"]
            for h in _http("POST", f"http://127.0.0.1:{port}/search", q, {"Content-Type": "application/json"})[1][
                "results"
            ]
        ]
        assert sorted(keys) == sorted(acked)  # every acknowledged write, none twice
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    compact_index(index)
    assert verify_index(index)[0] == []


def test_business_rules_and_fields_in_http_bodies(served):
    with TestClient(create_app(served), base_url=LOCAL) as client:
        dim = client.get("/info").json()["dim"]
        for n in range(6):
            assert put(client, f"s{n}", 200 + n, {"brand": "ab"[n % 2], "price": n}).status_code == 200
        body = {"vector": [1.0] + [0.0] * (dim - 1), "k": 4, "filter": {"price": {"gte": 0}}}
        r = client.post("/search", json={**body, "max_per": {"brand": 1}, "fields": ["brand"]}).json()["results"]
        assert len(r) == 2 and {h["attributes"]["brand"] for h in r} == {"a", "b"}
        assert all(set(h["attributes"]) == {"brand"} for h in r)
        r = client.post("/recommend", json={"positive": ["s0"], "k": 4, "max_per": {"brand": 2}}).json()["results"]
        brands = [h["attributes"].get("brand") for h in r]
        assert len(r) == 4 and brands.count("a") <= 2 and brands.count("b") <= 2
        r = client.post("/search", json={**body, "max_per": {"brand": 0}})
        assert r.status_code == 422 and set(r.json()) == {"error", "detail"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_live_writes_embed_and_compact_nicer_than_searches(served, monkeypatch):
    """A write's photos are embedded by the background thread, ``background_nice`` steps nicer than the request
    threads; an image search embeds in its own request thread at the searches' priority; so does compaction."""
    seen: list[tuple[str, int]] = []
    embed = ServiceState.embed_image

    def spy(self, index, data):
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return embed(self, index, data)

    monkeypatch.setattr(ServiceState, "embed_image", spy)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    app = create_app(served, background_nice=3)
    with TestClient(app, base_url=LOCAL) as client:
        assert put(client, "sku-1", 101, {"brand": "acme"}).status_code == 200
        r = client.post("/search", files={"image": ("q.jpg", jpeg(101), "image/jpeg")}, data={"k": "1"})
        assert r.json()["results"][0]["key"] == "sku-1"
        compactor = app.state.simsearch._compactor
        assert compactor is not None
        assert os.getpriority(os.PRIO_PROCESS, compactor.native_id) == min(19, base + 3)
    (write_thread, write_nice), (search_thread, search_nice) = seen
    assert write_thread.startswith("simsearch-embed-writes") and write_nice == min(19, base + 3)
    assert not search_thread.startswith("simsearch-embed") and search_nice == base


def test_background_settings_are_checked():
    from simsearch.config.serve import ServeSpec

    assert ServeSpec().embed_threads == 1 and ServeSpec(embed_threads=None).embed_threads is None
    for bad in ({"embed_threads": 0}, {"background_nice": -1}, {"background_nice": 20}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServeSpec(**bad)
