"""The live segment in a search: its items ranked exactly (it is small), with their expanded vectors kept for
augmented queries (layer: query, beside :mod:`simsearch.search`)."""

from __future__ import annotations

import numpy as np

from .filters import compile_filter
from .search_augment import expand
from .store.live import LiveState


def expand_live(live: LiveState, spec) -> np.ndarray | None:
    """The live photos' vectors expanded over the snapshot's augmented vectors, in the matrix's row order.

    Computed once per live item (kept with it: it depends on its vectors and the snapshot only) and stacked once
    per live state, so a search does not redo work that grows with the live segment."""
    if live.matrix is None:
        return None
    key = ("expanded", spec)
    stacked = live.derived.get(key)
    if stacked is None:
        items = list(live.items.values())
        todo = [it for it in items if key not in it.derived]
        if todo:  # one batched expansion for the items not seen yet
            fresh = expand(live.snapshot, np.vstack([it.vectors for it in todo]).astype(np.float32), spec)
            start = 0
            for it in todo:
                it.derived[key] = fresh[start : start + len(it.vectors)]
                start += len(it.vectors)
        stacked = live.derived[key] = np.vstack([it.derived[key] for it in items]).astype(np.float32)
    return stacked


def rank_live(
    live: LiveState,
    queries: np.ndarray,
    filter,
    skip: set[int],
    matrix: np.ndarray | None = None,
    *,
    limit: int | None = None,
) -> list[tuple[int, float, int]]:
    """The live segment's items by their best photo (exact: it is small), the best ``limit`` of them; ``matrix``:
    other vectors of its photos (expanded ones, to compare with augmented queries)."""
    if live.matrix is None or live.table is None:
        return []
    scores = (queries @ (live.matrix if matrix is None else matrix).T).max(axis=0)
    ids, table = live.table
    ok = np.ones(len(ids), bool)
    attr_filter = {k: v for k, v in filter.items() if k != "path_prefix"} if isinstance(filter, dict) else filter
    if isinstance(filter, dict) and filter.get("path_prefix"):
        ok[:] = False  # live items' photos are not under the index's roots
    elif attr_filter:
        ok &= compile_filter(attr_filter, live.schema).mask(table)
    allowed = ids[ok]
    if skip:
        allowed = allowed[~np.isin(allowed, np.fromiter(skip, np.int64))]
    if live.owners is None or live.photo_ids is None or len(allowed) == 0:
        return []
    keep = np.isin(live.owners, allowed)
    s, owners, photos = scores[keep], live.owners[keep], live.photo_ids[keep]
    order = np.lexsort((-s, owners))  # by item, best photo first
    first = order[np.r_[True, owners[order][1:] != owners[order][:-1]]]
    best = first[np.argsort(-s[first], kind="stable")][:limit]
    return [(int(owners[i]), float(s[i]), int(photos[i])) for i in best]
