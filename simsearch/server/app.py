"""The HTTP service: one opened index shared by all requests, limits, API key, errors as JSON, reloads.

    from simsearch.server import create_app
    app = create_app("indexes/photos", api_key="secret")   # any ASGI server; `simsearch serve` runs uvicorn

Searches run in worker threads (FAISS searches and SQLite reads are safe to share); image embedding runs one at
a time (each call already uses every core). A reload opens the newer saved index beside the current one and
swaps them; requests in flight finish on the index they started with, which is closed once they are done.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import asynccontextmanager, contextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import ImageError, SimsearchError
from ..index import MANIFEST, Index, open_index, read_manifest
from .batching import SearchBatcher

log = logging.getLogger("simsearch.server")

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
API_KEY_ENV = "SIMSEARCH_API_KEY"
API_KEY_HEADER = "x-api-key"
API_KEY_COOKIE = "simsearch_api_key"
STATIC_DIR = Path(__file__).parent / "static"
OPEN_PATHS = frozenset({"/health"})

_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


_thread_state = threading.local()
_MAX_BATCHED_EXCLUDE = 256  # more excluded ids than this: a selector-based search instead of over-fetching


class _Lease:
    __slots__ = ("index", "retired", "users")

    def __init__(self, index: Index):
        self.index, self.users, self.retired = index, 0, False


class ServiceState:
    """The opened index (swappable by :meth:`reload`), the embedder and the service's limits."""

    def __init__(
        self,
        index_path: str | Path,
        *,
        backbone=None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allow_reload: bool = False,
        watch_seconds: float | None = None,
        thumbnail_cache: int = 2048,
        faiss_threads: int | None = 1,
    ):
        self.faiss_threads = faiss_threads
        if faiss_threads:
            import faiss

            # Requests run in parallel threads: one OpenMP thread per search is fastest. Several per search make
            # OpenMP teams spin against each other (on a busy machine a search of a 35-item index took 35 ms
            # with two threads, 4 ms with one).
            # Batches of 3+ queries (see SearchBatcher) use FAISS's matrix-product path, which reads the stored
            # vectors once per batch. Both settings are process-wide: faiss_threads=None leaves them alone.
            faiss.omp_set_num_threads(int(faiss_threads))
            faiss.cvar.distance_compute_blas_threshold = 3
        self.path = Path(index_path).expanduser()
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.allow_reload = bool(allow_reload)
        self.watch_seconds = watch_seconds
        self._lock = threading.Lock()  # guards the current lease and users counts
        self._reload_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(4)  # bounds the memory of decoded uploads in flight
        self._current = _Lease(open_index(self.path, backbone=backbone))
        self._manifest_mtime = self._mtime()
        self._thumbs: OrderedDict = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._thumb_cache_size = thumbnail_cache
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.batcher = SearchBatcher(on_start=self._thread_setup)
        self._meta: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._meta_lock = threading.Lock()
        self.started = time.time()

    # -- the index, with reload
    def _thread_setup(self) -> None:
        """OpenMP's thread count is per calling thread: set it in each thread that searches (once)."""
        if self.faiss_threads and getattr(_thread_state, "faiss_threads", None) != self.faiss_threads:
            import faiss

            faiss.omp_set_num_threads(int(self.faiss_threads))
            _thread_state.faiss_threads = self.faiss_threads

    @contextmanager
    def index(self):
        """The current index, kept open for the duration of the ``with`` block even if a reload happens."""
        self._thread_setup()
        with self._lock:
            lease = self._current
            lease.users += 1
        try:
            yield lease.index
        finally:
            with self._lock:
                lease.users -= 1
                close = lease.retired and lease.users == 0
            if close:
                lease.index.close()

    @property
    def current(self) -> Index:
        """The current index, without a lease (for quick reads of its manifest)."""
        return self._current.index

    def _mtime(self) -> int | None:
        try:
            return (self.path / MANIFEST).stat().st_mtime_ns
        except OSError:
            return None

    def reload(self, *, force: bool = False) -> bool:
        """Open the saved index again if it is newer than the one served (or ``force``); True if swapped."""
        with self._reload_lock:
            mtime = self._mtime()
            manifest = read_manifest(self.path)
            cur = self._current.index
            same = manifest.generation == cur.manifest.generation and manifest.created == cur.manifest.created
            if same and not force:
                self._manifest_mtime = mtime
                return False
            new = open_index(self.path)
            if cur._backbone is not None and cur.manifest.weights_sha256 == new.manifest.weights_sha256:
                try:  # same model: hand it over rather than loading the weights again
                    new.set_backbone(cur.backbone)
                except SimsearchError:
                    pass
            with self._lock:
                old = self._current
                self._current = _Lease(new)
                old.retired = True
                close = old.users == 0
            if close:
                old.index.close()
            self._manifest_mtime = mtime
            with self._thumb_lock:
                self._thumbs.clear()
            log.info("reloaded %s: generation %d, %d items", self.path, new.manifest.generation, len(new))
            return True

    def start_watching(self) -> None:
        if not self.watch_seconds or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="simsearch-index-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_seconds):
            if self._mtime() != self._manifest_mtime:
                try:
                    self.reload()
                except Exception as e:  # keep serving the current index; try again on the next change
                    log.warning("could not reload %s: %s", self.path, e)

    def close(self) -> None:
        self.batcher.close()
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        with self._lock:
            lease = self._current
            lease.retired = True
            close = lease.users == 0
        if close:
            lease.index.close()

    # -- searching
    def metadata(self, index: Index, ids: list[int]) -> dict[int, tuple[str, str | None]]:
        """``{id: (path, label)}``, cached per opened index (items never change within one generation)."""
        with self._meta_lock:
            cache = self._meta.get(index)
            if cache is None:
                cache = self._meta[index] = {}
        missing = [i for i in ids if i not in cache]
        if missing:
            found = {it.id: (it.path, it.label) for it in index.items(missing)}
            with self._meta_lock:
                if len(cache) > 500_000:
                    cache.clear()
                cache.update(found)
            return {i: cache.get(i) or found[i] for i in ids if i in cache or i in found}
        return {i: cache[i] for i in ids}

    def has_item(self, index: Index, item_id: int) -> bool:
        """Whether the item exists (its metadata cached, else one SQLite lookup)."""
        cache = self._meta.get(index)
        return (cache is not None and int(item_id) in cache) or index.has_id(item_id)

    def nearest(self, index: Index, vector, k: int, *, exclude=(), filter: dict | None = None) -> list[tuple]:
        """``[(id, score, path, label)]`` of the ``k`` items nearest to a unit ``vector``, best first.

        Unfiltered searches go through the batcher (excluded ids are over-fetched and dropped); filtered ones,
        or ones excluding many ids, use the library's selector-based search.
        """
        skip = {int(i) for i in exclude}
        if filter or len(skip) > _MAX_BATCHED_EXCLUDE:
            return self._selector_search(index, vector, k, skip, filter)
        if len(index) == 0:
            return []
        scores, ids = self.batcher.search(index, vector, k + len(skip))
        return self._rows(index, scores, ids, skip, k)

    async def anearest(self, index: Index, vector, k: int, *, exclude=(), filter: dict | None = None) -> list[tuple]:
        """:meth:`nearest` for the event loop: waits for the batcher without holding a worker thread."""
        import asyncio

        from starlette.concurrency import run_in_threadpool

        skip = {int(i) for i in exclude}
        if filter or len(skip) > _MAX_BATCHED_EXCLUDE:
            return await run_in_threadpool(self._selector_search, index, vector, k, skip, filter)
        if len(index) == 0:
            return []
        scores, ids = await asyncio.wrap_future(self.batcher.submit(index, vector, k + len(skip)))
        return self._rows(index, scores, ids, skip, k)

    def _selector_search(self, index: Index, vector, k: int, skip: set, filter: dict | None) -> list[tuple]:
        from ..search import search_vectors

        self._thread_setup()
        hits = search_vectors(index, vector[None, :], k=k, exclude=skip, filter=filter)[0]
        return [(h.id, h.score, h.path, h.label) for h in hits]

    def _rows(self, index: Index, scores, ids, skip: set, k: int) -> list[tuple]:
        pairs = [(int(i), float(s)) for i, s in zip(ids.tolist(), scores.tolist()) if i >= 0 and i not in skip][:k]
        meta = self.metadata(index, [i for i, _ in pairs])
        return [(i, round(s, 6), *meta[i]) for i, s in pairs if i in meta]

    # -- embedding
    def preload(self) -> None:
        """Load the backbone now (otherwise the first upload does). A backbone that cannot be loaded here only
        disables uploads (they answer with the reason); searches by vector or item still work."""
        try:
            with self.index() as index, self._embed_lock:
                index.embedder  # noqa: B018 - creates the model
        except SimsearchError as e:
            log.warning("image uploads will fail: %s", e)

    def embed_image(self, index: Index, data: bytes):
        """Decode (within the pixel limit) and embed one uploaded image; raises ImageError with the reason.

        Decoding runs in parallel; inference one call at a time (each already uses every core).
        """
        from ..images import load_image

        if not data:
            raise ImageError("the uploaded file is empty")
        with self._decode_slots:
            img = load_image(data, max_pixels=self.max_pixels)
        with self._embed_lock:
            return index.embed([img])[0]

    # -- thumbnails
    def thumbnail(self, index: Index, item_id: int, size: int) -> bytes:
        """A JPEG of the item's file (checked on every call: a file deleted or moved away is not served)."""
        from ..gallery import thumbnail_jpeg

        path = _safe_item_path(index.item(item_id))
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, int(size))
        with self._thumb_lock:
            data = self._thumbs.get(key)
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        data = thumbnail_jpeg(path, size, max_pixels=max(self.max_pixels, 100_000_000))
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self._thumb_cache_size:
                self._thumbs.popitem(last=False)
        return data


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": ...}`` with an HTTP status."""

    def __init__(self, status: int, detail: str, code: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code or _ERROR_CODES.get(status, "error")


def _safe_item_path(item) -> Path:
    """The item's file, refusing anything that resolves outside its indexed folder."""
    root = Path(item.root).resolve()
    path = (root / item.path).resolve()
    if not path.is_relative_to(root):
        raise ApiError(404, f"the image file of item {item.id} is outside its indexed folder")
    if not path.is_file():
        raise ApiError(404, f"the image file of item {item.id} no longer exists ({item.path})")
    return path


# ------------------------------------------------------------------------------ middleware


def _json_bytes(status: int, detail: str, code: str | None = None) -> bytes:
    return json.dumps({"error": code or _ERROR_CODES.get(status, "error"), "detail": detail}).encode()


async def _send_simple(send, status: int, body: bytes, content_type: bytes, extra_headers=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """Pure ASGI middleware: API key on every route but /health, and the request body size limit."""

    def __init__(self, app, *, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    def _authorised(self, headers: dict) -> bool:
        given = headers.get(API_KEY_HEADER.encode())
        if given is None:
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
        if given is None and b"cookie" in headers:
            cookie = SimpleCookie()
            try:
                cookie.load(headers[b"cookie"].decode("latin-1"))
            except Exception:
                cookie = {}
            if API_KEY_COOKIE in cookie:
                given = cookie[API_KEY_COOKIE].value.encode()
        return given is not None and hmac.compare_digest(given, self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorised(headers):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            key = query.get("api_key", [None])[0]
            if scope["path"] == "/" and key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
                # a person opening /?api_key=KEY: keep the key in a cookie so thumbnails and searches work
                cookie = f"{API_KEY_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict".encode()
                return await _send_simple(send, 303, b"", b"text/plain", [(b"location", b"/"), (b"set-cookie", cookie)])
            if scope["path"] == "/":
                body = (
                    b"<!doctype html><title>simsearch: API key needed</title><p>This simsearch service needs an "
                    b"API key: open <code>/?api_key=YOUR_KEY</code> once.</p>"
                )
                return await _send_simple(send, 401, body, b"text/html; charset=utf-8")
            detail = "an API key is required: send it in the X-API-Key header (or Authorization: Bearer KEY)"
            return await _send_simple(
                send, 401, _json_bytes(401, detail), b"application/json", [(b"www-authenticate", b"Bearer")]
            )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _send_simple(send, 400, _json_bytes(400, "invalid Content-Length"), b"application/json")
            if n > self.max_body:
                return await _send_simple(send, 413, _json_bytes(413, self._too_large()), b"application/json")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _too_large_error(self._too_large())
            return message

        return await self.app(scope, limited_receive, send)

    def _too_large(self) -> str:
        return f"the request body is larger than the limit of {self.max_body / 1e6:g} MB"


def _too_large_error(detail: str):
    from fastapi import HTTPException

    return HTTPException(status_code=413, detail=detail)


# ------------------------------------------------------------------------------ the app


def create_app(
    index_path: str | Path,
    *,
    api_key: str | None = None,
    allow_reload: bool = False,
    watch_seconds: float | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backbone=None,
    preload: bool = False,
    faiss_threads: int | None = 1,
):
    """A FastAPI app serving the index at ``index_path`` (opened now, once).

    ``api_key``: required on every route but ``/health`` (``None``: no key). ``allow_reload`` enables
    ``POST /admin/reload``; ``watch_seconds`` polls the index's manifest and reloads when it changes.
    ``preload`` loads the backbone at startup so the first upload is not slow. ``faiss_threads``: OpenMP threads
    per FAISS search, process-wide (1 suits many concurrent requests; ``None`` leaves the setting alone).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__
    from .routes import public, router

    state = ServiceState(
        index_path, backbone=backbone, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
        allow_reload=allow_reload, watch_seconds=watch_seconds, faiss_threads=faiss_threads,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        if preload:
            state.preload()
        state.start_watching()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="simsearch",
        version=__version__,
        description=(
            "Visual similarity search over one index: search by image or vector, more like an item, "
            'recommendations, near-duplicates. Errors are JSON: `{"error": code, "detail": reason}`.'
            + (" Every route but `/health` needs the API key (`X-API-Key` header)." if api_key else "")
        ),
        lifespan=lifespan,
    )
    app.state.simsearch = state
    app.include_router(public)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def error(status: int, detail: str, code: str | None = None, headers=None):
        return JSONResponse(
            {"error": code or _ERROR_CODES.get(status, "error"), "detail": detail}, status_code=status, headers=headers
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.detail, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error(422, _describe_validation(exc.errors()))

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError):
        return error(400, f"bad image: {str(exc).removeprefix('image: ')}", "bad_image")

    @app.exception_handler(SimsearchError)
    async def _simsearch_error(request: Request, exc: SimsearchError):
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, "internal error (see the server log)", "internal_error")

    app.openapi = _openapi_with_search_bodies(app)
    app.add_middleware(_Guard, api_key=api_key or None, max_body=max_upload_bytes)
    return app


def _describe_validation(errors) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _openapi_with_search_bodies(app):
    """OpenAPI for POST /search, which reads its body itself (JSON with a vector, multipart or a raw image)."""
    from fastapi.openapi.utils import get_openapi

    from .models import SearchRequest

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        req = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in req.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components["SearchRequest"] = req
        op = schema.get("paths", {}).get("/search", {}).get("post")
        if op is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {"type": "string", "format": "binary", "description": "The query image."},
                                "k": {"type": "integer", "default": 10, "minimum": 1, "maximum": 1000},
                                "label": {"type": "string", "description": "Only results with this label."},
                                "path_prefix": {"type": "string", "description": "Only results under this path."},
                            },
                        }
                    },
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        app.openapi_schema = schema
        return schema

    return openapi


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    index_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = True,
    log_level: str = "info",
    **options,
) -> None:
    """Run the service with uvicorn until interrupted (what ``simsearch serve`` does)."""
    import uvicorn

    app = create_app(index_path, preload=True, **options)
    if not is_loopback(host) and not options.get("api_key"):
        log.warning("serving on %s without an API key: anyone who can reach this address can use it", host)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level, server_header=False)
