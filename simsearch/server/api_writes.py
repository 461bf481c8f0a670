"""Live write routes: add, replace, change and remove items by key (durable when answered, searchable at once).

``PUT /items/{key}`` (multipart: ``photo`` files and an ``attributes`` JSON field), ``PATCH /items/{key}``
(JSON ``{"attributes": {...}}``, null removes one), ``DELETE /items/{key}``, ``POST /items/batch`` (JSON
``{"operations": [...]}``, all or nothing). Writes go to the index's journal through the library
(:meth:`simsearch.Index.put` and friends); the service folds them into the index in the background.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..config.limits import LIMITS
from ..errors import SimsearchError
from ..store.delta import MAX_LIVE_PHOTOS
from .deps import State
from .errors import ApiError
from .models import Text
from .state import ServiceState

router = APIRouter()

KeyPath = Annotated[Text, Path(description="The item's key (it may hold slashes).", examples=["sku-1"])]
MAX_BATCH_OPS = 1_000


class WriteResponse(BaseModel):
    key: str
    id: int
    op: str
    pending_writes: int = Field(..., description="Writes journalled and not yet folded into the index.")


class PatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: dict[str, Any] = Field(..., description="Attributes to set; null removes one.")


class Operation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["put", "patch", "delete"]
    key: Text
    attributes: dict[str, Any] | None = None
    photos: list[str] = Field(default_factory=list, max_length=MAX_LIVE_PHOTOS, description="Base64 images (put).")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operations: list[Operation] = Field(..., min_length=1, max_length=MAX_BATCH_OPS)


class BatchResponse(BaseModel):
    written: int
    ids: list[int]
    pending_writes: int


def _check_writable(state: ServiceState) -> None:
    if state.spec.read_only:
        raise ApiError(405, "this service is read-only (started with --read-only)", "read_only")


def _attributes(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(422, f"attributes: not JSON ({e.msg} at character {e.pos + 1})") from None
    if not isinstance(value, dict):
        raise ApiError(422, "attributes: must be a JSON object")
    return value


def _write(state: ServiceState, prepare) -> tuple[list[int], int]:
    """Prepare (embed, validate) and journal writes against the current index; (ids, pending writes)."""
    with state.index() as index:
        try:
            ops = prepare(index)
            ids = index.write(ops)
        except KeyError as e:
            raise ApiError(404, f"no item with key {e.args[0]!r}") from None
        except SimsearchError as e:
            raise ApiError(422, str(e)) from None
        pending = index.pending_writes()
    state.writes_made(pending)
    return ids, pending


def _embedded(state: ServiceState, index, photos: list[bytes]) -> np.ndarray:
    return state.embed_write_photos(index, photos)


@router.put(
    "/items/{key:path}", response_model=WriteResponse, summary="Add or replace an item: its photos and attributes"
)
async def put_route(key: KeyPath, state: State, request: Request):
    _check_writable(state)
    form = await request.form(max_files=MAX_LIVE_PHOTOS, max_fields=8)
    files = [f for f in form.getlist("photo") if isinstance(f, UploadFile)]
    if not files:
        raise ApiError(422, "photo: give at least one image file (multipart field 'photo', repeatable)")
    photos = [await f.read() for f in files]
    attrs_field = form.get("attributes")
    attrs = _attributes(attrs_field if isinstance(attrs_field, str) else None)

    def prepare(index):
        return [index.prepare_put(key, photos, attrs, vectors=_embedded(state, index, photos))]

    ids, pending = await run_in_threadpool(_write, state, prepare)
    return {"key": key, "id": ids[0], "op": "put", "pending_writes": pending}


@router.patch(
    "/items/{key:path}", response_model=WriteResponse, summary="Change an item's attributes (no re-embedding)"
)
async def patch_route(key: KeyPath, body: PatchRequest, state: State):
    _check_writable(state)
    ids, pending = await run_in_threadpool(_write, state, lambda index: [index.prepare_patch(key, body.attributes)])
    return {"key": key, "id": ids[0], "op": "patch", "pending_writes": pending}


@router.delete("/items/{key:path}", response_model=WriteResponse, summary="Remove an item")
async def delete_route(key: KeyPath, state: State):
    _check_writable(state)
    ids, pending = await run_in_threadpool(_write, state, lambda index: [index.prepare_delete(key)])
    return {"key": key, "id": ids[0], "op": "delete", "pending_writes": pending}


@router.post("/items/batch", response_model=BatchResponse, summary="Several writes, all or nothing")
async def batch_route(body: BatchRequest, state: State):
    _check_writable(state)
    total = sum(len(op.photos) for op in body.operations)
    if total > LIMITS.serve_max_batch:
        raise ApiError(422, f"operations: at most {LIMITS.serve_max_batch} photos in one batch, not {total}")
    decoded: list[list[bytes]] = []
    for n, op in enumerate(body.operations):
        if op.op == "put" and not op.photos:
            raise ApiError(422, f"operations.{n}: a put needs photos (base64)")
        try:
            decoded.append([base64.b64decode(p, validate=True) for p in op.photos])
        except (binascii.Error, ValueError):
            raise ApiError(422, f"operations.{n}.photos: not base64") from None

    def prepare(index):
        ops = []
        for op, photos in zip(body.operations, decoded, strict=True):
            if op.op == "put":
                vecs = _embedded(state, index, photos)
                ops.append(index.prepare_put(op.key, photos, op.attributes or {}, vectors=vecs))
            elif op.op == "patch":
                ops.append(index.prepare_patch(op.key, op.attributes or {}))
            else:
                ops.append(index.prepare_delete(op.key))
        return ops

    ids, pending = await run_in_threadpool(_write, state, prepare)
    return {"written": len(ids), "ids": ids, "pending_writes": pending}
