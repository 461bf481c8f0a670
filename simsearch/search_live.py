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
    other vectors of its photos (expanded ones, to compare with augmented queries).

    Ties go to the lower item id, and within an item to its first photo. Vectorised over the items (a search
    runs it once or twice, and the segment holds every write since the last compaction): no per-photo set
    operations, a partial sort for the best ``limit``."""
    if live.matrix is None or live.table is None or live.photo_ids is None or live.starts is None:
        return []
    if isinstance(filter, dict) and filter.get("path_prefix"):
        return []  # live items' photos are not under the index's roots
    ids, table = live.table
    attr_filter = {k: v for k, v in filter.items() if k != "path_prefix"} if isinstance(filter, dict) else filter
    ok = compile_filter(attr_filter, live.schema).mask(table) if attr_filter else None
    if skip:
        free = ~np.isin(ids, np.fromiter(skip, np.int64, len(skip)))
        ok = free if ok is None else ok & free
    cand = np.arange(len(ids)) if ok is None else np.flatnonzero(ok)
    if len(cand) == 0:
        return []
    scores = (queries @ (live.matrix if matrix is None else matrix).T).max(axis=0)
    single = len(scores) == len(ids)
    best = scores if single else np.maximum.reduceat(scores, live.starts)
    s = best[cand]
    if limit is not None and limit < len(cand):  # the limit-th best score; every item tied with it stays in
        cut = np.partition(s, len(s) - limit)[len(s) - limit]
        cand, s = cand[s >= cut], s[s >= cut]
    order = np.lexsort((ids[cand], -s))[:limit]
    out = []
    for j in cand[order].tolist():
        row = j
        if not single:
            stop = int(live.starts[j + 1]) if j + 1 < len(live.starts) else len(scores)
            row = int(live.starts[j]) + int(np.argmax(scores[live.starts[j] : stop]))
        out.append((int(ids[j]), float(best[j]), int(live.photo_ids[row])))
    return out
