"""Search routes: by image or vector, by many vectors, recommendations. Results are the library's hits."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..config.limits import LIMITS
from ..errors import SimsearchError
from ..search import check_vector, check_vectors, recommend, search_vectors
from .deps import State, base_url, known_ids, ms_since, read_image, read_json, require_items
from .errors import ApiError, describe_validation
from .models import (
    BatchSearchRequest,
    BatchSearchResponse,
    ImageSearchParams,
    RecommendRequest,
    SearchRequest,
    SearchResponse,
    filter_of,
    filter_value,
)
from .serialise import FastJSONResponse, hits_json
from .state import ServiceState

router = APIRouter()


def _schema(model) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_body(model) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema(model)}}}}


def unit_rows(index, rows: list[list[float]], single: bool = False) -> np.ndarray:
    """The request's vectors as unit rows, by the library's check (any norm; finite, non-zero, the index's dim)."""
    dim = index.manifest.dim
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise ApiError(400, f"{_which(i, single)} has {len(row)} values; this index's vectors have {dim}")
    try:
        return check_vectors(rows, dim) if rows else np.empty((0, dim), np.float32)
    except SimsearchError:
        for i, row in enumerate(rows):  # name the first bad one
            try:
                check_vector(row, dim)
            except SimsearchError as e:
                raise ApiError(400, f"{_which(i, single)}: {e}") from None
        raise


def _which(i: int, single: bool) -> str:
    return "the vector" if single else f"vector {i}"


def answer(state: ServiceState, request: Request, hits, k: int, t0: float) -> FastJSONResponse:
    results = hits_json(hits, base_url(request), state.spec.expose_paths)
    return FastJSONResponse({"results": results, "k": k, "took_ms": ms_since(t0)})


_IMAGE_FORM = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "The query image."},
        "k": {"type": "integer", "default": 10, "minimum": 1, "maximum": LIMITS.serve_max_k},
        "label": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Only results with one of these labels.",
        },
        "path_prefix": {"type": "string", "description": "Only results under this path."},
        "augment": {"type": "string", "enum": ["auto", "on", "none"], "default": "auto"},
    },
}


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search by image (multipart upload or raw image body) or by vector (JSON)",
    description=(
        "Send either `multipart/form-data` with an `image` file (and optional `k`, `label`, `path_prefix` "
        "fields), a raw image body (`Content-Type: image/jpeg`...; `k`, `label`, `path_prefix` as query "
        'parameters), or JSON `{"vector": [...], "k": 10, "filter": {"label": "cat"}, "exclude": [1, 2]}`. '
        "A repeated `label` means any of them, as a list does in JSON."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _schema(SearchRequest)},
                "multipart/form-data": {"schema": _IMAGE_FORM},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def search_route(request: Request, state: State):
    t0 = time.perf_counter()
    image = await read_image(request, "search")
    if image is not None:
        data, given = image  # a form or the query string
        fields: dict[str, Any] = {
            "k": given.get("k"),
            "label": given.getlist("label"),
            "path_prefix": given.get("path_prefix"),
            "augment": given.get("augment"),
        }
        return await _search_image(state, request, data, fields, t0)
    req = await read_json(request, SearchRequest)
    # in the event loop: parsing is quick and the search waits in the searcher, not in a thread
    with state.index() as index:
        vector = unit_rows(index, [req.vector], single=True)[0]
        exclude = known_ids(index, req.exclude)
        if req.has_rules:  # rules need a search of their own (the library's, not batched with others)
            rows = await run_in_threadpool(
                search_vectors, index, vector[None], req.k, exclude=exclude, filter=filter_value(req.filter),
                rules=req.rules(), augment=req.augment,
            )  # fmt: skip
            hits = rows[0]
        else:
            hits = await state.searcher.asearch(
                index, vector, req.k, exclude=exclude, filter=filter_value(req.filter), augment=req.augment
            )
    return answer(state, request, hits, req.k, t0)


async def _search_image(state: ServiceState, request: Request, data: bytes, fields: dict, t0: float):
    given = {k: v for k, v in fields.items() if v not in (None, "", [])}
    try:
        p = ImageSearchParams.model_validate(given)
    except ValidationError as e:
        raise ApiError(422, describe_validation(e.errors())) from None

    def run():
        with state.index() as index:
            vec = state.embed_image(index, data)
            return state.searcher.search(index, vec, p.k, filter=filter_of(p.label, p.path_prefix), augment=p.augment)

    return answer(state, request, await run_in_threadpool(run), p.k, t0)


@router.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    summary="Search with many vectors in one call",
    description=f"At most {LIMITS.serve_max_batch:,} vectors, and vectors x k at most {LIMITS.serve_max_work:,}.",
    openapi_extra=_json_body(BatchSearchRequest),
)
async def search_batch(request: Request, state: State):
    t0 = time.perf_counter()
    req = await read_json(request, BatchSearchRequest)

    def run():
        with state.index() as index:
            vectors = unit_rows(index, req.vectors)
            exclude = known_ids(index, req.exclude)
            flt = filter_value(req.filter)
            return state.searcher.search_many(index, vectors, req.k, exclude=exclude, filter=flt, augment=req.augment)

    rows = await run_in_threadpool(run)
    base, expose = base_url(request), state.spec.expose_paths
    return FastJSONResponse(
        {"results": [hits_json(r, base, expose) for r in rows], "k": req.k, "took_ms": ms_since(t0)}
    )


@router.post(
    "/recommend",
    response_model=SearchResponse,
    summary="Items like the positives, unlike the negatives",
    openapi_extra=_json_body(RecommendRequest),
)
async def recommend_route(request: Request, state: State):
    t0 = time.perf_counter()
    req = await read_json(request, RecommendRequest)

    def run():
        with state.index() as index:
            ids = require_items(index, [*req.positive, *req.negative])
            positive, negative = ids[: len(req.positive)], ids[len(req.positive) :]
            return recommend(
                index, positive=positive, negative=negative, exclude=known_ids(index, req.exclude), k=req.k,
                negative_weight=req.negative_weight, filter=filter_value(req.filter), rules=req.rules(),
                augment=req.augment,
            )  # fmt: skip

    return answer(state, request, await run_in_threadpool(run), req.k, t0)
