"""The HTTP service: one opened index shared by all requests, limits, API key, errors as JSON, reloads.

    from simsearch.server import create_app
    app = create_app("indexes/photos", api_key="secret")   # any ASGI server; `simsearch serve` runs uvicorn

The app is a thin layer over the library: the routes (``api_*`` modules) search through
:class:`simsearch.searcher.Searcher` and the library's functions, and answer the library's hits through one
serialiser (:mod:`.serialise`); the state (opened index, reloads, caches) is :mod:`.state`, the outer checks
(Host, API key, body size) :mod:`.guard`. Settings are a :class:`~simsearch.config.ServeSpec`.
"""

from __future__ import annotations

import ipaddress
import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .._version import __version__
from ..config.serve import ServeSpec
from ..errors import ImageError, SimsearchError
from . import api_classify, api_items, api_search, api_service, api_writes
from .errors import ApiError, describe_validation, error_body
from .guard import BodyTooLargeError, Guard, RedactKeys
from .models import BatchSearchRequest, ErrorResponse, RecommendRequest, SearchRequest
from .state import ServiceState

log = logging.getLogger("simsearch.server")

# Declared so that /docs offers an "Authorize" button; the key itself is checked by the Guard middleware.
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server has a key.")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input (the reason is in `detail`)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown item"},
    413: {"model": ErrorResponse, "description": "Request body over the size limit"},
    422: {"model": ErrorResponse, "description": "Invalid parameters"},
}


def create_app(
    index_path: str | Path,
    spec: ServeSpec | None = None,
    *,
    api_key: str | None = None,
    backbone=None,
    **settings,
) -> FastAPI:
    """A FastAPI app serving the index at ``index_path`` (opened now, once).

    ``spec``: the service's settings (default :class:`ServeSpec`); keyword ``settings`` replace single fields
    (``max_upload_bytes=...``, ``allow_reload=True``, ``allowed_hosts=("*",)``...). ``api_key``: required on
    every route but ``/health`` (``None``: no key). Requests must name an allowed host (``spec.hosts()``: by
    default the bound host and the localhost names; ``("*",)`` for any, e.g. when a backend mounts this app).
    """
    spec = replace(spec or ServeSpec(), **settings)
    state = ServiceState(index_path, spec, backbone=backbone)

    running = [0]  # lifespans in progress: test clients may run several at once; the last one closes the state

    @asynccontextmanager
    async def lifespan(app):
        running[0] += 1
        if running[0] == 1:
            if spec.preload:
                state.preload()
            state.start_watching()
            state.start_compacting()
        try:
            yield
        finally:
            running[0] -= 1
            if running[0] == 0:
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
        docs_url=None,
        redoc_url=None,
    )
    app.state.simsearch = state
    app.include_router(api_service.public)
    for router in (api_search.router, api_writes.router, api_items.router, api_classify.router, api_service.router,
                   api_items.by_path_key):  # fmt: skip
        app.include_router(router, dependencies=[Security(_api_key_scheme)], responses=_ERRORS)
    app.mount("/static", StaticFiles(directory=api_service.STATIC_DIR), name="static")
    assets = api_service.swagger_assets()
    if assets is not None:
        app.mount(f"/{api_service.DOCS_ASSETS}", StaticFiles(directory=assets), name="docs-assets")
    _add_error_handlers(app, state)
    app.openapi = _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    app.add_middleware(Guard, api_key=api_key or None, max_body=spec.max_upload_bytes, allowed_hosts=spec.hosts())
    return app


def _add_error_handlers(app: FastAPI, state: ServiceState) -> None:
    def error(status: int, detail: str, code: str | None = None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, state.redact(detail), code), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.detail, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error(422, describe_validation(exc.errors()))

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError):
        return error(400, f"bad image: {str(exc).removeprefix('image: ')}", "bad_image")

    @app.exception_handler(SimsearchError)
    async def _simsearch_error(request: Request, exc: SimsearchError):
        return error(400, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, exc: ClientDisconnect):
        # nobody is left to read the answer: not an error of the service
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error(400, "the client disconnected before sending the whole request", "client_disconnected")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, "internal error (see the server log)", "internal_error")

    @app.exception_handler(BodyTooLargeError)
    async def _too_large(request: Request, exc: BodyTooLargeError):
        return error(413, str(exc))


def _openapi(app: FastAPI):
    """OpenAPI with the request bodies of the routes that read their bodies themselves."""

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (SearchRequest, BatchSearchRequest, RecommendRequest, api_classify.ClassifyRequest):
            sub = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, d in sub.pop("$defs", {}).items():
                components.setdefault(name, d)
            components[model.__name__] = sub
        app.openapi_schema = schema
        return schema

    return openapi


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    index_path: str | Path,
    spec: ServeSpec | None = None,
    *,
    api_key: str | None = None,
    log_level: str | None = None,
    **settings,
) -> None:
    """Run the service with uvicorn until interrupted (what ``simsearch serve`` does); API keys never reach
    its logs."""
    import uvicorn

    spec = replace(spec or ServeSpec(preload=True), **settings)
    app = create_app(index_path, spec, api_key=api_key)
    if not is_loopback(spec.host) and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use it", spec.host)
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
    uvicorn.run(
        app, host=spec.host, port=spec.port, access_log=spec.access_log,
        log_level=log_level or ("info" if spec.access_log else "warning"), server_header=False,
    )  # fmt: skip
