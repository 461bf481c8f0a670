"""What every route shares: the state, where the app is mounted, reading bodies, and resolving items.

Items are addressed through :func:`resolve_item` / :func:`require_items` only, so that other ways of naming an
item (a catalogue key beside the numeric id) change one function.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from ..index import Index
from .errors import ApiError, describe_validation
from .models import MAX_ID, Text
from .state import ServiceState

M = TypeVar("M", bound=BaseModel)


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function dependency in a worker thread, on every request
    return request.app.state.simsearch


State = Annotated[ServiceState, Depends(get_state)]
ItemRef = Annotated[
    Text,
    Path(description="An item: its id (a whole number) or its key (catalogue indexes).", examples=["0"]),
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


async def read_image(request: Request, what: str) -> tuple[bytes, Any] | None:
    """The image of a request that sends one, and where its other fields are: a multipart form (the image in a
    file field ``image`` or ``file``; fields in the form) or a raw image body (fields in the query string). None
    for any other body (the route reads JSON). ``what`` names the route in the error ("search", "classify")."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as e:  # malformed multipart, too many parts...
            raise ApiError(400, f"cannot read the multipart body: {getattr(e, 'detail', None) or e}") from None
        upload = form.get("image") or form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, f"a multipart {what} needs the image in a file field named 'image'")
        return await upload.read(), form
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await request.body(), request.query_params
    return None


def resolve_item(index: Index, ref: str | int) -> int:
    """The id of the item that ``ref`` names (from a path: digits are an id first, else a key), or 404.

    The library's resolver decides (:meth:`simsearch.Index.resolve_item`: ids, keys, live writes).
    """
    found = _resolve(index, ref)
    if found is None:
        as_id = isinstance(ref, str) and ref.isascii() and ref.isdigit() and int(ref) <= MAX_ID
        raise ApiError(404, f"no item with {_names([int(ref) if as_id else ref])}")
    return found


def require_items(index: Index, refs) -> list[int]:
    """The ids of the items named (ids or keys), in order; 404 listing each unknown one once."""
    found = [(r, _resolve(index, r)) for r in refs]
    missing = list(dict.fromkeys(r for r, i in found if i is None))
    if missing:
        raise ApiError(404, f"no item{'s' if len(missing) > 1 else ''} with {_names(missing)}")
    return [i for _, i in found if i is not None]


def known_ids(index: Index, refs) -> list[int]:
    """The ids of the items named that exist (for ``exclude``: an unknown item is simply not there)."""
    return [i for i in (_resolve(index, r) for r in refs) if i is not None]


def _resolve(index: Index, ref: str | int) -> int | None:
    """Ids and keys only: a name from a request never leads to a look-up on the server's file system."""
    if isinstance(ref, str) and ref.isascii() and ref.isdigit() and int(ref) <= MAX_ID:
        found = index.resolve_item(int(ref), paths=False)
        return found if found is not None else index.resolve_item(ref, paths=False)
    return index.resolve_item(ref, paths=False)


def _names(refs: list) -> str:
    """``id 3``, ``ids 3, 4``, ``key 'a'``, ``ids 3, 4 or key 'a'`` (the first 20)."""
    ids = [str(r) for r in refs if isinstance(r, int)]
    keys = [repr(r[:80]) for r in refs if isinstance(r, str)]
    parts = [f"{word}{'s' if len(names) > 1 else ''} {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
             for word, names in (("id", ids), ("key", keys)) if names]  # fmt: skip
    return " or ".join(parts)
