"""Label suggestion routes: ``POST /classify`` (an uploaded image, vectors or items) and
``GET /items/{item}/classify`` (an indexed item, voted on by the others). See :mod:`simsearch.classify`."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from ..config.classify import CLASSIFY
from ..config.limits import LIMITS
from ..votes import Classification
from .api_search import unit_rows
from .deps import ItemRef, State, base_url, ms_since, read_image, read_json, require_items, resolve_item
from .errors import ApiError, describe_validation
from .models import ItemRefT, K, Text
from .serialise import FastJSONResponse, links
from .state import ServiceState

router = APIRouter()

FieldT = Annotated[Text, Field(description="The attribute to vote on.")]
Confidence = Annotated[float, Field(ge=0, le=1, description="Below this share of the vote the answer is 'unknown'.")]
Top = Annotated[int, Field(ge=1, le=100, description="Labels listed per answer.")]


class ClassifyParams(BaseModel):
    """How to vote (the query string of GET, the form fields of an upload)."""

    model_config = ConfigDict(extra="forbid")
    k: K = CLASSIFY.k
    field: FieldT = CLASSIFY.field
    min_confidence: Confidence = CLASSIFY.min_confidence
    top: Top = CLASSIFY.top


class ClassifyRequest(ClassifyParams):
    """Vectors (any norm, the index's dimension) and/or indexed items (ids or keys) to classify, in that order."""

    vectors: list[Annotated[list[float], Field(min_length=1, max_length=LIMITS.max_dim)]] = Field(
        default_factory=list, max_length=LIMITS.serve_max_batch
    )
    items: list[ItemRefT] = Field(default_factory=list, max_length=LIMITS.serve_max_ids)

    @model_validator(mode="after")
    def _some_and_bounded(self) -> ClassifyRequest:
        n = len(self.vectors) + len(self.items)
        if n == 0:
            raise ValueError("give vectors and/or items to classify")
        if n * self.k > LIMITS.serve_max_work:
            raise ValueError(f"(vectors + items) x k must be at most {LIMITS.serve_max_work:,}, not {n * self.k:,}")
        return self


class VoteModel(BaseModel):
    label: str
    share: float = Field(..., description="Of the total vote weight, 0..1.")
    neighbors: int = Field(..., description="How many of the k neighbours carry this label.")


class NeighborModel(BaseModel):
    id: int
    score: float = Field(..., description="Cosine similarity to the query.")
    label: str
    thumbnail: str
    image: str


class ClassificationModel(BaseModel):
    query: str = Field(..., description="'image', 'vector N', 'item ID' or the key given.")
    label: str = Field(
        ..., description=f"The label with the largest share, or '{CLASSIFY.unknown}' below the threshold."
    )
    confidence: float = Field(..., description="That label's share of the vote (0: no labelled neighbour).")
    votes: list[VoteModel] = Field(..., description="The top labels, largest share first.")
    neighbors: list[NeighborModel] = Field(..., description="The voters, nearest first.")
    item_id: int | None = Field(None, description="The query's id when it is an indexed item.")


class ClassifyResponse(BaseModel):
    results: list[ClassificationModel]
    k: int
    field: str
    took_ms: float


class ItemClassifyResponse(ClassificationModel):
    k: int
    field: str
    took_ms: float


def _json(c: Classification, base: str) -> dict[str, Any]:
    d = c.to_dict()
    d["neighbors"] = [{**n, **links(base, n["id"])} for n in d["neighbors"]]
    return d


_IMAGE_FORM = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "The image to classify."},
        "k": {"type": "integer", "default": CLASSIFY.k, "minimum": 1, "maximum": LIMITS.serve_max_k},
        "field": {"type": "string", "default": CLASSIFY.field},
        "min_confidence": {"type": "number", "default": CLASSIFY.min_confidence, "minimum": 0, "maximum": 1},
        "top": {"type": "integer", "default": CLASSIFY.top, "minimum": 1, "maximum": 100},
    },
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Suggest labels: similarity-weighted votes of the k nearest labelled items",
    description=(
        "Send `multipart/form-data` with an `image` file (optional fields `k`, `field`, `min_confidence`, "
        "`top`), a raw image body (`Content-Type: image/jpeg`...; the same as query parameters), or JSON "
        '`{"vectors": [[...]], "items": [12, "sku-42"], "k": 10, "field": "label", "min_confidence": 0.5}`. '
        "An indexed item is voted on by the others, never by itself."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyRequest"}},
                "multipart/form-data": {"schema": _IMAGE_FORM},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def classify_route(request: Request, state: State) -> FastJSONResponse:
    t0 = time.perf_counter()
    image = await read_image(request, "classify")
    if image is not None:
        data, given = image  # a form or the query string
        return await _classify_image(state, request, data, {k: given.get(k) for k in ClassifyParams.model_fields}, t0)
    req = await read_json(request, ClassifyRequest)

    def run():
        with state.index() as index:
            queries = [*unit_rows(index, req.vectors), *require_items(index, req.items)]
            return index.classify(queries, k=req.k, field=req.field, min_confidence=req.min_confidence, top=req.top)

    results = await run_in_threadpool(run)
    base = base_url(request)
    return FastJSONResponse(
        {"results": [_json(c, base) for c in results], "k": req.k, "field": req.field, "took_ms": ms_since(t0)}
    )


async def _classify_image(state: ServiceState, request: Request, data: bytes, fields: dict, t0: float):
    given = {k: v for k, v in fields.items() if v not in (None, "")}
    try:
        p = ClassifyParams.model_validate(given)
    except ValidationError as e:
        raise ApiError(422, describe_validation(e.errors())) from None

    def run():
        with state.index() as index:
            vector = state.embed_image(index, data)
            (c,) = index.classify([vector], k=p.k, field=p.field, min_confidence=p.min_confidence, top=p.top)
            return dataclasses.replace(c, query="image")

    c = await run_in_threadpool(run)
    return FastJSONResponse(
        {"results": [_json(c, base_url(request))], "k": p.k, "field": p.field, "took_ms": ms_since(t0)}
    )


@router.get(
    "/items/{item}/classify",
    response_model=ItemClassifyResponse,
    summary="Suggest a label for an indexed item from its neighbours (never itself)",
)
def item_classify_route(
    item: ItemRef,
    state: State,
    request: Request,
    k: Annotated[int, Query(ge=1, le=LIMITS.serve_max_k, description="Labelled neighbours that vote.")] = CLASSIFY.k,
    field: Annotated[Text, Query(description="The attribute to vote on.")] = CLASSIFY.field,
    min_confidence: Annotated[float, Query(ge=0, le=1, description="Below this: 'unknown'.")] = CLASSIFY.min_confidence,
    top: Annotated[int, Query(ge=1, le=100, description="Labels listed.")] = CLASSIFY.top,
):
    t0 = time.perf_counter()
    with state.index() as index:
        item_id = resolve_item(index, item)
        (c,) = index.classify([item_id], k=k, field=field, min_confidence=min_confidence, top=top)
    return {**_json(c, base_url(request)), "k": k, "field": field, "took_ms": ms_since(t0)}
