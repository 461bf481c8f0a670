"""Service routes: liveness, the index's information and limits, reloads, the search page and the API docs."""

from __future__ import annotations

import html
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from ..config.limits import LIMITS
from .deps import State, base_url
from .errors import ApiError
from .models import HealthResponse, ReloadResponse
from .serialise import info_json

STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS = "docs-assets"  # where the Swagger UI files of the swagger-ui-bundle package are served

router = APIRouter()  # behind the API key
public = APIRouter()  # open


@public.get("/health", response_model=HealthResponse, summary="Liveness (no API key needed)")
def health(state: State):
    m = state.current.manifest
    return {"status": "ok", "count": m.count, "generation": m.generation}


@router.get("/info", summary="The index's manifest and the service's limits")
def info(state: State):
    with state.index() as index:
        d = index.info()
    spec = state.spec
    d["server"] = {
        "max_upload_bytes": spec.max_upload_bytes,
        "max_pixels": spec.max_pixels,
        "max_k": LIMITS.serve_max_k,
        "limits": {k.removeprefix("serve_"): v for k, v in asdict(LIMITS).items() if k.startswith("serve_")}
        | {"max_dim": LIMITS.max_dim},
        "reload": state.allow_reload,
        "watch_seconds": spec.watch_seconds,
        "expose_paths": spec.expose_paths,
        "uptime_s": round(time.time() - state.started, 1),
    }
    return JSONResponse(info_json(d, spec.expose_paths))


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    summary="Serve the newest saved version of the index (off unless the server allows it)",
)
def reload_route(state: State, force: bool = False):
    if not state.allow_reload:
        raise ApiError(403, "reloading is off: start the server with --allow-reload")
    reloaded = state.reload(force=force)
    m = state.current.manifest
    return {"reloaded": reloaded, "generation": m.generation, "count": m.count}


@lru_cache(maxsize=1)
def _page_html() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
def page(request: Request):
    """The search page; its links are relative to a <base> that points at where the app is mounted."""
    base = html.escape(base_url(request) + "/", quote=True)
    return HTMLResponse(_page_html().replace("<head>", f'<head>\n<base href="{base}">', 1))


@router.get("/docs", include_in_schema=False)
def docs(request: Request):
    """Swagger UI from files served by this app (no CDN: the docs work offline)."""
    if swagger_assets() is None:
        raise ApiError(404, "the API docs need the swagger-ui-bundle-v2 package: pip install 'simsearch[server]'")
    base = base_url(request)
    return get_swagger_ui_html(
        openapi_url=f"{base}/openapi.json",
        title="simsearch API",
        swagger_js_url=f"{base}/{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}/{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{base}/{DOCS_ASSETS}/favicon-32x32.png",
    )


@lru_cache(maxsize=1)
def swagger_assets() -> Path | None:
    """The Swagger UI files of the ``swagger-ui-bundle`` package (part of the server extra), if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))
