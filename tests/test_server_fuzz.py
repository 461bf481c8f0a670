"""Property-based fuzzing of the HTTP API with schemathesis, from the service's own OpenAPI schema.

Every operation gets valid and invalid inputs (schemathesis' positive and negative generation modes) and each answer
must hold: no 5xx, every 4xx is JSON ``{"error", "detail"}``, and the service still answers ``/health`` afterwards.
The suite's run is short (``SIMSEARCH_FUZZ_EXAMPLES`` examples per operation and mode, default 6: well under a minute);
a long run (e.g. ``SIMSEARCH_FUZZ_EXAMPLES=700``, over 20,000 requests) prints its figures at the end:

    SIMSEARCH_FUZZ_EXAMPLES=700 python -m pytest tests/test_server_fuzz.py -s -p no:randomly

Requests reach the app in process (ASGI), on a small index of the tiny random-weight backbone.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from conftest import LAYOUT, TINY, copy_file, write_image

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from simsearch.index import build_index  # noqa: E402
from simsearch.server import create_app  # noqa: E402

EXAMPLES = int(os.environ.get("SIMSEARCH_FUZZ_EXAMPLES", "6"))
TALLY: Counter = Counter()  # (method, path, status) of every request the fuzzer sent


class Counting:
    """ASGI wrapper counting the statuses the app answers (so the figures include every request made)."""

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                TALLY[(scope["method"], scope["path"], message["status"])] += 1
            await send(message)

        return await self.app(scope, receive, counting_send)


@pytest.fixture(scope="module")
def app(tmp_path_factory, _register_tiny_backbone):
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed, size=(64, 48))
    copy_file(root / "cats/c1.jpg", root / "copies/c1_copy.jpg")
    build_index([root], base / "index", backbone=TINY, batch_size=4, workers=1)
    inner = create_app(base / "index", allow_reload=True, allowed_hosts=("testserver", "localhost"))
    with Lifespan(inner):  # starts the app's lifespan (its searcher thread) and stops it afterwards
        yield inner
    _report()


class Lifespan:
    def __init__(self, app):
        from fastapi.testclient import TestClient

        self.client = TestClient(app)

    def __enter__(self):
        self.client.__enter__()
        return self.client

    def __exit__(self, *exc):
        self.client.__exit__(*exc)


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", Counting(app))


def _check(case) -> None:
    response = case.call(headers={"Host": "localhost"})
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    if response.status_code >= 400:
        ctype = response.headers.get("content-type") or [""]
        assert ctype[0].startswith("application/json"), (where, response.text[:200])
        body = response.json()
        assert set(body) == {"error", "detail"} and body["error"] and body["detail"], (where, body)


def test_fuzz_the_api(api_schema):
    """Each operation, in turn, with valid (positive) then invalid (negative) inputs. (schemathesis' own pytest
    integration does not run under pytest 9, so the strategies are driven by hypothesis here.)"""
    from schemathesis import GenerationMode

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                _check(case)

            try:
                fuzz()
            except Unsatisfiable:  # nothing invalid to send (an operation without parameters or body)
                assert mode == GenerationMode.NEGATIVE, operation.label


_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\r\n"), max_size=80)


def test_fuzz_the_outer_layer(app):
    """What the schema does not describe: the page, the docs, static files, and the headers the Guard reads (Host,
    cookies, keys, Content-Length) with any method and query string."""
    from fastapi.testclient import TestClient

    client = Counting(app)
    paths = st.sampled_from(["/", "/docs", "/static/app.js", "/static/nope", "/openapi.json", "/health", "/info",
                             "/items/0", "/items/0/thumbnail", "/search", "/nope", "/docs-assets/swagger-ui.css"])  # fmt: skip
    methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
    headers = st.fixed_dictionaries(
        {},
        optional={
            "Host": st.one_of(st.sampled_from(["localhost", "localhost:80", "[::1]", "evil.example"]), _HEADER_TEXT),
            "Cookie": _HEADER_TEXT,
            "X-API-Key": _HEADER_TEXT,
            "Authorization": _HEADER_TEXT,
            "Content-Type": st.one_of(
                st.sampled_from(["application/json", "multipart/form-data", "image/png"]), _HEADER_TEXT
            ),
        },
    )

    with TestClient(client, base_url="http://localhost") as c:

        @given(method=methods, path=paths, query=st.text(max_size=60), headers=headers, body=st.binary(max_size=200))
        @settings(max_examples=EXAMPLES * 20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(method, path, query, headers, body):
            raw = {k: v.encode("latin-1") for k, v in headers.items()}
            r = c.request(method, path, params={"q": query} if query else None, headers=raw, content=body or None)
            assert r.status_code < 500, (method, path, headers, r.status_code, r.text[:300])
            if r.status_code >= 400 and not (path == "/" and r.status_code == 401):
                body_json = r.json() if method != "HEAD" else {"error": "-", "detail": "-"}
                assert set(body_json) == {"error", "detail"}, (method, path, r.text[:200])

        fuzz()


def test_the_service_still_answers_after_the_fuzzing(app):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://localhost") as c:
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["count"] == 9


def _report() -> None:
    total = sum(TALLY.values())
    if not total:
        return
    by_route: Counter = Counter()
    by_status: Counter = Counter()
    for (method, path, status), n in TALLY.items():
        by_route[f"{method} {_route(path)}"] += n
        by_status[status] += n
    server_errors = sum(n for s, n in by_status.items() if s >= 500)
    summary = {
        "requests": total,
        "responses_5xx": server_errors,
        "by_status": dict(sorted(by_status.items())),
        "by_route": dict(sorted(by_route.items())),
    }
    print("\nfuzz figures:", json.dumps(summary, indent=1))


def _route(path: str) -> str:
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "items":
        parts[2] = "{item}"
    return "/".join(parts)
