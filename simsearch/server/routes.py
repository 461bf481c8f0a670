"""The service's routes. Each one leases the current index for its duration (see ``ServiceState.index``)."""

import html
import json
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..backbones import l2_normalize
from ..config import DUPLICATES
from ..duplicates import duplicates_of, make_rule, originality
from ..search import Hit as _Hit
from ..search import recommend, search_vectors
from .app import STATIC_DIR, ApiError, ServiceState
from .models import (
    MAX_ID,
    MAX_K,
    BatchSearchRequest,
    BatchSearchResponse,
    DuplicatesResponse,
    ErrorResponse,
    Filter,
    HealthResponse,
    ItemResponse,
    RecommendRequest,
    ReloadResponse,
    SearchRequest,
    SearchResponse,
)

# Declared so that /docs offers an "Authorize" button; the key itself is checked by the app's middleware.
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server has a key.")

_ERRORS = {
    400: {"model": ErrorResponse, "description": "Bad input (the reason is in `detail`)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown item"},
    413: {"model": ErrorResponse, "description": "Request body over the size limit"},
    422: {"model": ErrorResponse, "description": "Invalid parameters"},
}

router = APIRouter(dependencies=[Security(_api_key_scheme)], responses=_ERRORS)
public = APIRouter()


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function dependency in a worker thread, on every request
    return request.app.state.simsearch


State = Annotated[ServiceState, Depends(get_state)]
ItemId = Annotated[int, Path(ge=0, le=MAX_ID, description="An item id.")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="Number of results.")]
LabelQ = Annotated[list[str] | None, Query(description="Only results with this label (repeatable: any of them).")]
PrefixQ = Annotated[str | None, Query(max_length=4096, description="Only results whose path starts with this.")]


def _hit(h: _Hit, base: str = "") -> dict:
    return {
        "rank": h.rank,
        "id": h.id,
        "score": h.score,
        "path": h.path,
        "label": h.label,
        "thumbnail": f"{base}/items/{h.id}/thumbnail",
    }


def _hits(rows: list[tuple], k: int, t0: float, base: str) -> JSONResponse:
    """Response for ``[(id, score, path, label)]`` rows (see ``ServiceState.nearest``)."""
    results = [
        {"rank": r, "id": i, "score": s, "path": p, "label": lab, "thumbnail": f"{base}/items/{i}/thumbnail"}
        for r, (i, s, p, lab) in enumerate(rows, 1)
    ]
    return JSONResponse({"results": results, "k": k, "took_ms": _ms(t0)})


def _unit(vector: np.ndarray, what: str = "the vector") -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        norm2 = float(np.dot(vector, vector))  # inf or nan for any non-finite value
    if not np.isfinite(norm2) or norm2 <= 0.0:
        if np.isfinite(vector).all() and vector.any():  # finite but its square overflows float32
            v64 = vector.astype(np.float64)
            return (v64 / np.sqrt(np.dot(v64, v64))).astype(np.float32)
        raise ApiError(400, f"{what} must be finite and non-zero")
    return vector * np.float32(1.0 / np.sqrt(norm2))


def _base(request: Request) -> str:
    """Where the app is mounted (thumbnail URLs must work when a backend mounts it under a prefix)."""
    return request.scope.get("root_path", "").rstrip("/")


def _result(hits, k: int, t0: float, base: str = "") -> JSONResponse:
    return JSONResponse({"results": [_hit(h, base) for h in hits], "k": k, "took_ms": _ms(t0)})


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _filter(label=None, path_prefix=None) -> dict | None:
    if isinstance(label, list) and len(label) == 1:
        label = label[0]
    return Filter(label=label or None, path_prefix=path_prefix or None).as_dict()


def _require(index, ids) -> None:
    missing = [int(i) for i in ids if not index.has_id(int(i))]
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ApiError(404, f"no item with id {shown}" if len(missing) == 1 else f"no items with ids {shown}")


def _validation(e: ValidationError, prefix: tuple = ("body",)) -> RequestValidationError:
    return RequestValidationError([{**err, "loc": (*prefix, *err.get("loc", ()))} for err in e.errors()])


# ------------------------------------------------------------------------------ search


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search by image (multipart upload or raw image body) or by vector (JSON)",
    description=(
        "Send either `multipart/form-data` with an `image` file (and optional `k`, `label`, `path_prefix` "
        "fields), a raw image body (`Content-Type: image/jpeg`...; `k`, `label`, `path_prefix` as query "
        'parameters), or JSON `{"vector": [...], "k": 10, "filter": {"label": "cat"}, "exclude": [1, 2]}`.'
    ),
)
async def search_route(request: Request, state: State):
    t0 = time.perf_counter()
    base = _base(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as e:  # malformed multipart, too many parts...
            raise ApiError(400, f"cannot read the multipart body: {getattr(e, 'detail', None) or e}") from None
        upload = form.get("image") or form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "a multipart search needs the image in a file field named 'image'")
        data = await upload.read()
        params = {k: form.get(k) for k in ("k", "label", "path_prefix") if form.get(k) not in (None, "")}
        return await _search_image(state, data, params, t0, "body", base)
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.body()
        return await _search_image(state, data, dict(request.query_params), t0, "query", base)
    if ctype not in ("application/json", ""):
        raise ApiError(415, f"unsupported Content-Type {ctype!r}: send JSON, multipart/form-data or an image")
    body = await request.body()
    try:
        req = SearchRequest.model_validate_json(body)
    except ValidationError as e:
        raise _validation(e) from None
    # all in the event loop: parsing is quick and the FAISS search waits in the batcher, not in a thread
    flt = req.filter.as_dict() if req.filter else None
    with state.index() as index:
        dim = index.manifest.dim
        if len(req.vector) != dim:
            raise ApiError(400, f"the vector has {len(req.vector)} values; this index's vectors have {dim}")
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused as "not finite"
            vector = _unit(np.asarray(req.vector, np.float32))
        rows = await state.anearest(index, vector, req.k, exclude=req.exclude, filter=flt)
    return _hits(rows, req.k, t0, base)


class _ImageParams(Filter):
    k: int = 10


async def _search_image(state: ServiceState, data: bytes, params: dict, t0: float, loc: str, base: str):
    try:
        p = _ImageParams.model_validate({k: params[k] for k in ("k", "label", "path_prefix") if k in params})
    except ValidationError as e:
        raise _validation(e, (loc,)) from None
    if not 1 <= p.k <= MAX_K:
        raise ApiError(422, f"k: must be between 1 and {MAX_K}")

    def run():
        with state.index() as index:
            vec = state.embed_image(index, data)
            return state.nearest(index, vec, p.k, filter=_filter(p.label, p.path_prefix))

    return _hits(await run_in_threadpool(run), p.k, t0, base)


@router.post("/search/batch", response_model=BatchSearchResponse, summary="Search with many vectors in one call")
def search_batch(req: BatchSearchRequest, state: State, request: Request):
    t0 = time.perf_counter()
    flt = req.filter.as_dict() if req.filter else None
    with state.index() as index:
        dim = index.manifest.dim
        for i, v in enumerate(req.vectors):
            if len(v) != dim:
                raise ApiError(400, f"vector {i} has {len(v)} values; this index's vectors have {dim}")
        with np.errstate(over="ignore"):
            arr = np.asarray(req.vectors, np.float32)
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1) | ~arr.any(axis=1))
        if len(bad):
            raise ApiError(400, f"vector {int(bad[0])} is zero or not finite")
        rows = search_vectors(index, l2_normalize(arr), k=req.k, exclude=req.exclude, filter=flt)
    base = _base(request)
    return JSONResponse({"results": [[_hit(h, base) for h in row] for row in rows], "k": req.k, "took_ms": _ms(t0)})


@router.post("/recommend", response_model=SearchResponse, summary="Items like the positives, unlike the negatives")
def recommend_route(req: RecommendRequest, state: State, request: Request):
    t0 = time.perf_counter()
    with state.index() as index:
        _require(index, [*req.positive, *req.negative])
        hits = recommend(
            index, positive=req.positive, negative=req.negative, exclude=req.exclude, k=req.k,
            negative_weight=req.negative_weight, filter=req.filter.as_dict() if req.filter else None,
        )  # fmt: skip
    return _result(hits, req.k, t0, _base(request))


# ------------------------------------------------------------------------------ items


@router.get("/items/{item_id}", response_model=ItemResponse, summary="An item's metadata")
def item_route(item_id: ItemId, state: State, request: Request):
    with state.index() as index:
        _require(index, [item_id])
        it = index.item(item_id)
    return {"id": it.id, "path": it.path, "label": it.label, "root": it.root, "bytes": it.size,
            "mtime_ns": it.mtime_ns, "thumbnail": f"{_base(request)}/items/{it.id}/thumbnail"}  # fmt: skip


@router.get("/items/{item_id}/similar", response_model=SearchResponse, summary="More like this item (not itself)")
async def similar_route(
    item_id: ItemId,
    state: State,
    request: Request,
    k: K = 10,
    label: LabelQ = None,
    path_prefix: PrefixQ = None,
) -> JSONResponse:
    t0 = time.perf_counter()
    with state.index() as index:
        if not state.has_item(index, item_id):
            _require(index, [item_id])
        vector = _unit(index.vector(item_id), f"the vector of item {item_id}")
        rows = await state.anearest(index, vector, k, exclude=[item_id], filter=_filter(label, path_prefix))
    return _hits(rows, k, t0, _base(request))


@router.get(
    "/items/{item_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG no larger than size x size"}},
    summary="A resized JPEG of an indexed image",
)
def thumbnail_route(
    item_id: ItemId, state: State, size: Annotated[int, Query(ge=16, le=1024, description="Longest side.")] = 256
):
    with state.index() as index:
        _require(index, [item_id])
        try:
            data = state.thumbnail(index, item_id, size)
        except ApiError:
            raise
        except Exception as e:  # an indexed file that no longer decodes: the item exists, its image does not
            raise ApiError(404, f"the image of item {item_id} cannot be read: {e}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/items/{item_id}/duplicates", response_model=DuplicatesResponse, summary="Near-duplicates of an item")
def duplicates_route(
    item_id: ItemId,
    state: State,
    request: Request,
    threshold: Annotated[
        float, Query(gt=0, le=1, description="Cosine similarity at or above which items are near-duplicates.")
    ] = DUPLICATES.threshold,
    hash_distance: Annotated[
        int, Query(ge=-1, le=64, description="Perceptual-hash distance at or below which hash_threshold suffices.")
    ] = DUPLICATES.hash_distance,
    hash_threshold: Annotated[
        float, Query(ge=-1, le=1, description="The lower cosine bar for items with a close hash.")
    ] = DUPLICATES.hash_threshold,
):
    rule = make_rule(threshold, hash_distance=hash_distance, hash_threshold=hash_threshold)
    with state.index() as index:
        _require(index, [item_id])
        group = duplicates_of(index, item_id, rule=rule)
        rank = originality(index, group.items)
    dups = [
        {**_hit(_Hit(n, it.id, round(s, 6), it.path, it.label, ""), _base(request)), "hash_distance": h, "reason": r}
        for n, (it, s, h, r) in enumerate(
            zip(group.items[1:], group.scores[1:], group.hash_distances[1:], group.reasons[1:], strict=True), 1
        )
    ]
    return {"id": item_id, "threshold": rule.threshold, "hash_distance": rule.hash_distance,
            "hash_threshold": rule.hash_threshold, "representative": max(rank, key=lambda i: rank[i]),
            "group_size": group.size, "duplicates": dups}  # fmt: skip


# ------------------------------------------------------------------------------ service


@public.get("/health", response_model=HealthResponse, summary="Liveness (no API key needed)")
def health(state: State):
    m = state.current.manifest
    return {"status": "ok", "count": m.count, "generation": m.generation}


@router.get("/info", summary="The index's manifest and the service's limits")
def info(state: State):
    with state.index() as index:
        d = index.info()
    d["server"] = {
        "max_upload_bytes": state.max_upload_bytes,
        "max_pixels": state.max_pixels,
        "max_k": MAX_K,
        "reload": state.allow_reload,
        "watch_seconds": state.watch_seconds,
        "uptime_s": round(time.time() - state.started, 1),
    }
    return JSONResponse(json.loads(json.dumps(d, default=str)))


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


_PAGE: dict[str, str] = {}


@router.get("/", include_in_schema=False)
def page(request: Request):
    """The search page; its links are relative to a <base> that points at where the app is mounted."""
    if "html" not in _PAGE:
        _PAGE["html"] = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    base = html.escape(_base(request) + "/", quote=True)
    return HTMLResponse(_PAGE["html"].replace("<head>", f'<head>\n<base href="{base}">', 1))
