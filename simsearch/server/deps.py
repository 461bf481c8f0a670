"""What every route shares: the state, where the app is mounted, reading bodies, and resolving items.

Items are addressed through :func:`resolve_item` / :func:`require_items` only, so that other ways of naming an
item (a catalogue key beside the numeric id) change one function.
"""

from __future__ import annotations

import time
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ValidationError

from ..index import Index
from .errors import ApiError, describe_validation
from .models import MAX_ID
from .state import ServiceState

M = TypeVar("M", bound=BaseModel)


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function dependency in a worker thread, on every request
    return request.app.state.simsearch


State = Annotated[ServiceState, Depends(get_state)]
ItemRef = Annotated[
    str, Path(max_length=64, description="An item's id (a whole number).", examples=["0"], pattern=r"^[0-9]+$")
]


def base_url(request: Request) -> str:
    """Where the app is mounted (links must work when a backend mounts it under a prefix)."""
    return request.scope.get("root_path", "").rstrip("/")


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


async def read_json(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model`` (one parser for every JSON route: the same messages everywhere)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise ApiError(415, f"unsupported Content-Type {ctype!r}: send JSON (application/json)")
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise ApiError(422, describe_validation(e.errors())) from None


def parse_ref(ref: str) -> int:
    """An item reference from a path as an id (422 when it cannot name an item)."""
    if not ref.isascii() or not ref.isdigit() or int(ref) > MAX_ID:
        raise ApiError(422, f"item: {ref[:40]!r} is not an item id (a whole number from 0 to {MAX_ID})")
    return int(ref)


def resolve_item(index: Index, ref: str | int) -> int:
    """The id of the item that ``ref`` names, or 404."""
    item_id = parse_ref(ref) if isinstance(ref, str) else int(ref)
    if not index.has_id(item_id):
        raise ApiError(404, f"no item with id {item_id}")
    return item_id


def require_items(index: Index, refs) -> list[int]:
    """The ids of the items named, in order; 404 listing each unknown one once."""
    ids = [parse_ref(r) if isinstance(r, str) else int(r) for r in refs]
    missing = [i for i in dict.fromkeys(ids) if not index.has_id(i)]
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise ApiError(404, f"no item with id {shown}" if len(missing) == 1 else f"no items with ids {shown}")
    return ids
