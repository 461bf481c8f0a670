"""Item routes: metadata, its file, thumbnail and vector, more like it, its near-duplicates; the index's labels."""

from __future__ import annotations

import mimetypes
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..config import DUPLICATES
from ..config.limits import LIMITS
from ..duplicates import duplicates_of, make_rule, originality
from ..errors import ImageError, SimsearchError
from ..search import search
from .api_search import answer
from .deps import ItemRef, State, base_url, resolve_item
from .errors import ApiError
from .models import (
    DuplicatesResponse,
    ItemResponse,
    LabelsResponse,
    SearchResponse,
    Text,
    VectorResponse,
    filter_of,
)
from .serialise import hits_json, item_json, scored_items

router = APIRouter()

K = Annotated[int, Query(ge=1, le=LIMITS.serve_max_k, description="Number of results.")]
LabelQ = Annotated[
    list[Text] | None,
    Query(max_length=LIMITS.serve_max_values, description="Only results with this label (repeatable: any of them)."),
]
PrefixQ = Annotated[Text | None, Query(description="Only results whose path starts with this.")]
AugmentQ = Annotated[
    Literal["auto", "on", "none"], Query(description="auto: the augmented vectors when the index has them; none: raw.")
]
_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}


@router.get("/items/{item}", response_model=ItemResponse, summary="An item's metadata")
def item_route(item: ItemRef, state: State, request: Request):
    with state.index() as index:
        it = index.item(resolve_item(index, item))
    return item_json(it, base_url(request), state.spec.expose_paths)


@router.get("/items/{item}/similar", response_model=SearchResponse, summary="More like this item (not itself)")
async def similar_route(
    item: ItemRef,
    state: State,
    request: Request,
    k: K = 10,
    label: LabelQ = None,
    path_prefix: PrefixQ = None,
    augment: AugmentQ = "auto",
) -> JSONResponse:
    t0 = time.perf_counter()
    with state.index() as index:
        item_id = resolve_item(index, item)
        flt = filter_of(label, path_prefix)
        photos = index.item_vectors(item_id)
        augmented = augment != "none" and index.snapshot.augmented is not None
        if photos is not None and len(photos) == 1 and not augmented:  # one query vector: a batched search
            hits = await state.searcher.asearch(index, photos[0], k, exclude=[item_id], filter=flt, augment="none")
        else:  # by the item itself: all its photos (item pooling), its own augmented vectors
            hits = await run_in_threadpool(lambda: search(index, item_id, k, filter=flt, augment=augment))
    return answer(state, request, hits, k, t0)


@router.get("/items/{item}/vector", response_model=VectorResponse, summary="An item's stored embedding")
def vector_route(item: ItemRef, state: State):
    with state.index() as index:
        item_id = resolve_item(index, item)
        vector = index.vector(item_id)
    return {"id": item_id, "dim": int(vector.shape[0]), "vector": [float(x) for x in vector]}


@router.get(
    "/items/{item}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG no larger than size x size"}},
    summary="A resized JPEG of an indexed image",
)
def thumbnail_route(
    item: ItemRef,
    state: State,
    size: Annotated[int, Query(ge=16, le=LIMITS.serve_max_thumbnail, description="Longest side.")] = 256,
):
    with state.index() as index:
        item_id = resolve_item(index, item)
        try:
            data = state.thumbnail(index, item_id, size)
        except (SimsearchError, OSError) as e:  # gone, moved out of its folder, or no longer decodable
            raise ApiError(404, _file_problem(item_id, e)) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/items/{item}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}, "description": "The indexed file, as it is on disk"}},
    summary="The indexed image file",
)
def image_route(item: ItemRef, state: State):
    with state.index() as index:
        item_id = resolve_item(index, item)
        try:
            path = state.item_file(index, item_id)
        except (SimsearchError, OSError) as e:
            raise ApiError(404, _file_problem(item_id, e)) from None
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {**_FILE_HEADERS, "Cache-Control": "private, max-age=3600"}
    return FileResponse(path, media_type=media, headers=headers, content_disposition_type="inline")


def _file_problem(item_id: int, e: Exception) -> str:
    if isinstance(e, ImageError | SimsearchError):
        return str(e)
    return f"the file of item {item_id} cannot be read ({type(e).__name__})"


@router.get("/items/{item}/duplicates", response_model=DuplicatesResponse, summary="Near-duplicates of an item")
def duplicates_route(
    item: ItemRef,
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
        item_id = resolve_item(index, item)
        group = duplicates_of(index, item_id, rule=rule)
        rank = originality(index, group.items)
    hits = hits_json(scored_items(group.items[1:], group.scores[1:]), base_url(request), state.spec.expose_paths)
    dups = [
        {**h, "hash_distance": d, "reason": r}
        for h, d, r in zip(hits, group.hash_distances[1:], group.reasons[1:], strict=True)
    ]
    return {"id": item_id, "threshold": rule.threshold, "hash_distance": rule.hash_distance,
            "hash_threshold": rule.hash_threshold, "representative": max(rank, key=lambda i: rank[i]),
            "group_size": group.size, "duplicates": dups}  # fmt: skip


@router.get("/labels", response_model=LabelsResponse, summary="The index's labels with their item counts")
async def labels_route(
    state: State,
    limit: Annotated[int, Query(ge=1, le=LIMITS.serve_max_labels_listed, description="At most this many.")] = 1000,
):
    def run():
        with state.index() as index:
            return state.label_counts(index)

    counts = await run_in_threadpool(run)
    return {"labels": [{"label": lab, "count": n} for lab, n in counts[:limit]], "total": len(counts)}


# included after every other router (see app.py): it takes any path below /items/
by_path_key = APIRouter()


@by_path_key.get(
    "/items/{key:path}",
    response_model=ItemResponse,
    summary="An item's metadata, by a key holding slashes (e.g. a folder index's relative path)",
)
def item_by_path_key_route(
    key: Annotated[Text, PathParam(description="The item's key.")], state: State, request: Request
):
    """Included after every other router, so that ``/items/{item}/similar`` and the like match first."""
    return item_route(key, state, request)
