"""Query-side augmentation: alpha query expansion over the augmented vectors, and the guarded merge that keeps
the raw top results at the head of a list ranked on augmented vectors. Pure functions over numpy arrays (the
collection side, DBA, is :mod:`simsearch.augment`).
"""

from __future__ import annotations

import numpy as np

from .augment import f32, neighbour_weights, normalize_rows, spec_k
from .config.augment import AugmentSpec


def expand_query(
    queries: np.ndarray,
    neighbor_sims: np.ndarray,
    neighbor_vectors: np.ndarray,
    spec: AugmentSpec,
) -> np.ndarray:
    """Alpha query expansion: ``normalise(q + sum_j max(s_j, 0) ** power * a_j)`` over the first ``k`` items.

    ``neighbor_sims`` (m, ≥k): each query's raw cosine to its nearest items, best first (-inf/nan where none);
    ``neighbor_vectors`` (m, ≥k, d): those items' augmented vectors. Unchanged queries for method ``none`` or
    ``expand_queries`` off.
    """
    q = f32(np.atleast_2d(queries)).copy()
    if not spec.enabled or not spec.expand_queries:
        return q
    k = min(spec_k(spec), neighbor_sims.shape[1])
    w = neighbour_weights(np.nan_to_num(np.asarray(neighbor_sims, np.float32), nan=-np.inf), spec, k)
    for c in range(k):
        q += w[:, c, None] * f32(neighbor_vectors[:, c])
    return normalize_rows(q)


def guarded_merge(
    raw_ids: np.ndarray,
    aug_ids: np.ndarray,
    guard: int,
    k: int,
    *,
    first: int | None = None,
) -> np.ndarray:
    """One query's result ids: ``first`` (if given), the raw top-``guard``, then the augmented ranking; no repeats.

    ``raw_ids``/``aug_ids``: that query's ids, best first (-1 = none). Returns at most ``k`` ids.
    """
    out: list[int] = []
    seen: set[int] = set()
    head = ([int(first)] if first is not None else []) + [int(x) for x in raw_ids[:guard]]
    for x in (*head, *(int(y) for y in aug_ids)):
        if x >= 0 and x not in seen:
            seen.add(x)
            out.append(x)
            if len(out) == k:
                break
    return np.asarray(out, np.int64)


def guarded_rows(raw: np.ndarray, augmented: np.ndarray, guard: int, first: np.ndarray | None = None) -> np.ndarray:
    """:func:`guarded_merge` of many queries at once: rows of ids (or row numbers), -1 = none; same width as
    ``augmented``."""
    width = augmented.shape[1]
    head = raw[:, :guard] if first is None else np.concatenate([first[:, None], raw[:, :guard]], axis=1)
    # a head entry repeating an earlier one (the item-first result among the raw top) is dropped
    dup = np.zeros(head.shape, bool)
    for c in range(1, head.shape[1]):
        dup[:, c] = (head[:, :c] == head[:, c : c + 1]).any(axis=1)
    head = np.where(dup | (head < 0), -1, head)
    in_head = (augmented[:, :, None] == head[:, None, :]).any(axis=2) | (augmented < 0)
    both = np.concatenate([head, np.where(in_head, -1, augmented)], axis=1)
    order = np.argsort(both < 0, axis=1, kind="stable")  # present ones first, in their order
    return np.take_along_axis(both, order, axis=1)[:, :width]


def item_first(raw_top1: int, raw_top1_sim: float, aug_top1: int, aug_top1_raw_sim: float, spec: AugmentSpec) -> int:
    """First result for a query that is an item: the augmented top-1 unless the raw top-1 is closer (raw cosine)
    by more than ``spec.item_first`` (or always the raw top-1 when that is None)."""
    if spec.item_first is None or raw_top1_sim - aug_top1_raw_sim > spec.item_first:
        return int(raw_top1)
    return int(aug_top1)
