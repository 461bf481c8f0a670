"""Queries: resolve what the caller gave to vectors, search the snapshot, and return items (layer: query).

search(index, "cat.jpg", k=10)              # a new image
search(index, 123, k=10)                    # "more like this" by item id (or by key: "sku-1"); the item is excluded
search(index, [12, 40, "dog.jpg"], k=10)    # several: mean of their normalised embeddings
search(index, "cat.jpg", filter={"category": "shoes", "price": {"lt": 100}}, rules=Rules(max_per={"brand": 2}))
recommend(index, positive=[12, 40], negative=[7], exclude=[12, 40], k=20)

Results are items, never the same item twice; an item with several photos scores as its best photo (``max``)
or as the normalised mean of its photos (``mean``, the index's ``item_pooling``). Filters give exactly the
top k of the matching items: a FAISS id selector for selective filters, a bounded over-fetch for broad ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .backbones import l2_normalize
from .config import LIMITS
from .errors import SimsearchError
from .filters import compile_filter
from .hits import Hit, best_per_item, first_per_item, hits_of, stored_items
from .rules import NO_RULES, Rules, apply_rules
from .search_augment import augmented_vectors, expand, merged, search_spec
from .search_live import expand_live, rank_live
from .store import Snapshot
from .store.live import LiveState

BROAD_FILTER = 0.3  # a filter matching at least this share of the photos over-fetches; narrower ones use a selector
SUBSET_SEARCH_MAX = 50_000  # narrow filters on approximate indexes: exact search over the matching vectors


class Searchable(Protocol):
    """What searching needs of an opened index (:class:`simsearch.index.Index` is one)."""

    @property
    def snapshot(self) -> Snapshot: ...

    def embed(self, images: Sequence) -> np.ndarray: ...

    def resolve_item(self, ref) -> int | None: ...

    def live_state(self) -> LiveState: ...

    def item_vectors(self, item_id: int) -> np.ndarray | None: ...


def _is_id(q) -> bool:
    return isinstance(q, (int, np.integer)) and not isinstance(q, bool)


def resolve_query(index: Searchable, query) -> tuple[np.ndarray, set[int]]:
    """Turn a query into unit vectors ``(m, dim)``, plus the ids of indexed items it names (left out of results).

    A query is an item id, an item key, a path (an indexed file is looked up, any other image file is embedded),
    a PIL image, image bytes, a vector, or a list of these (the mean of their normalised embeddings). A single
    item with several photos gives one vector per photo (results are scored by the best of them).
    """
    snap = index.live_state().snapshot
    parts = list(query) if isinstance(query, (list, tuple)) else [query]
    if not parts:
        raise SimsearchError("empty query: give an image path, an item id or key, an image or a vector")
    vectors: list[np.ndarray] = []
    self_ids: set[int] = set()
    to_embed = []
    for q in parts:
        if _is_id(q) or isinstance(q, (str, Path)):
            item_id = index.resolve_item(q)
            if item_id is not None:
                photos = index.item_vectors(item_id)
                if photos is None:
                    raise SimsearchError(f"item {q} has no vectors in {snap.path}")
                vectors.append(photos if len(parts) == 1 else l2_normalize(photos.mean(axis=0))[None, :])
                self_ids.add(item_id)
            elif _is_id(q):
                raise SimsearchError(f"no item with id {int(q)} in {snap.path}")
            elif Path(q).expanduser().is_file():
                to_embed.append(Path(q).expanduser())
            else:
                raise SimsearchError(f"query image not found: {q} (not an item key, an indexed file or an image file)")
        elif isinstance(q, np.ndarray):
            vectors.append(check_vector(q, snap.manifest.dim)[None, :])
        else:  # PIL image or bytes
            to_embed.append(q)
    if to_embed:
        vectors.extend(v[None, :] for v in index.embed(to_embed))
    if len(vectors) == 1:
        return l2_normalize(vectors[0]), self_ids
    mean = np.mean(l2_normalize(np.vstack(vectors)), axis=0)
    if not np.any(mean):
        raise SimsearchError("the query items cancel out (their mean embedding is zero)")
    return l2_normalize(mean)[None, :], self_ids


# Squared norms between these are exact enough in float64 to normalise without rescaling first (rows with huge or
# tiny values, zero rows and non-finite ones take the rescaling path below, which also names what is wrong).
_SAFE_SQUARE = (1e-290, 1e290)


def check_vector(v, dim: int) -> np.ndarray:
    """A caller's query vector as a unit float32 vector; any finite non-zero vector of the right size is fine."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] != dim:
        raise SimsearchError(f"a query vector must have shape ({dim},), not {v.shape}")
    return check_vectors(v[None, :], dim)[0]


def check_vectors(vectors, dim: int) -> np.ndarray:
    """Rows of query vectors ``(n, dim)`` as unit float32 rows (any finite non-zero rows), checked together: a
    batch of requests costs one conversion."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != dim:
        raise SimsearchError(f"query vectors must have dim {dim}, not {v.shape[-1]}")
    with np.errstate(over="ignore", invalid="ignore"):  # huge or non-finite rows: handled below
        squares = np.array([np.dot(row, row) for row in v], dtype=np.float64)  # as np.linalg.norm computes a row
    safe = (squares > _SAFE_SQUARE[0]) & (squares < _SAFE_SQUARE[1])  # finite, non-zero, no over- or underflow
    if len(v) == 1 and safe[0]:  # one request's vector: the same arithmetic with fewer numpy calls
        return (v / math.sqrt(squares[0])).astype(np.float32)
    if safe.all():  # the usual case: one division (each row's result is the same alone or in a batch)
        return (v / np.sqrt(squares)[:, None]).astype(np.float32)
    out = np.empty(v.shape, dtype=np.float32)
    out[safe] = v[safe] / np.sqrt(squares[safe])[:, None]
    rest = v[~safe]
    scale = np.abs(rest).max(axis=1)  # nan or inf when a row is not finite
    bad = np.flatnonzero(~(np.isfinite(scale) & (scale > 0)))
    if len(bad):
        finite = np.isfinite(rest[bad[0]]).all()
        raise SimsearchError(f"a query vector must be {'non-zero' if finite else 'finite'}")
    rest = rest / scale[:, None]  # huge values would overflow the squares, tiny ones underflow
    norms = np.array([np.sqrt(np.dot(row, row)) for row in rest])
    out[~safe] = rest / norms[:, None]
    return out


def search(
    index: Searchable,
    query,
    k: int = 10,
    *,
    exclude: Iterable = (),
    exclude_query: bool = True,
    filter=None,
    rules: Rules = NO_RULES,
    augment: bool | str | None = None,
) -> list[Hit]:
    """Nearest items of ``query`` (see :func:`resolve_query`), best first.

    Indexed items named in the query are left out of the results unless ``exclude_query=False``; ``exclude``
    takes ids or keys. ``filter``: a dict or a ``--where`` string (see docs/filters.md). ``augment``: None
    uses the index's augmented vectors when it has them, False (``"none"``) the raw ones (see
    :mod:`simsearch.search_augment`).
    """
    vectors, self_ids = resolve_query(index, query)
    skip = _resolve_ids(index, exclude) | (self_ids if exclude_query else set())
    single = not isinstance(query, (list, tuple)) or len(query) == 1
    item = next(iter(self_ids)) if len(self_ids) == 1 and single else None  # "more like this" item
    return _search(index, vectors, k, skip, filter, rules, augment, item)


def recommend(
    index: Searchable,
    positive: Sequence = (),
    negative: Sequence = (),
    exclude: Iterable = (),
    k: int = 20,
    *,
    negative_weight: float = 0.5,
    filter=None,
    rules: Rules = NO_RULES,
    augment: bool | str | None = None,
) -> list[Hit]:
    """Items like the ``positive`` ones and unlike the ``negative`` ones (Rocchio: p - w·n), never ``exclude``.

    Positives and negatives may be ids, keys, paths, images or vectors; indexed ones never appear in the results.
    """
    if not positive:
        raise SimsearchError("recommend needs at least one positive item")
    pos, pos_ids = resolve_query(index, list(positive))
    query = l2_normalize(pos.mean(axis=0))
    neg_ids: set[int] = set()
    if negative:
        neg, neg_ids = resolve_query(index, list(negative))
        moved = query - float(negative_weight) * l2_normalize(neg.mean(axis=0))
        if np.any(moved):
            query = moved
    skip = _resolve_ids(index, exclude) | pos_ids | neg_ids
    return _search(index, l2_normalize(query)[None, :], k, skip, filter, rules, augment)


def search_vectors(
    index: Searchable,
    vectors: np.ndarray,
    k: int = 10,
    *,
    exclude: Iterable = (),
    filter=None,
    rules: Rules = NO_RULES,
    augment: bool | str | None = None,
    unit: bool = False,
    exclude_per_row: Sequence[Iterable] | None = None,
) -> list[list[Hit]]:
    """Batch search: one result list per row of ``vectors`` ``(n, dim)`` (any finite non-zero rows; ``unit``: the
    rows are already unit float32 rows, as :func:`check_vectors` gives them, and are not checked again).
    ``exclude`` applies to every row; ``exclude_per_row`` (one entry per row) adds each row's own (e.g. the item
    each row asks "more like this" of)."""
    snap = index.live_state().snapshot
    arr = np.atleast_2d(np.asarray(vectors))
    if arr.ndim != 2 or arr.shape[1] != snap.manifest.dim:
        raise SimsearchError(f"query vectors must have dim {snap.manifest.dim}, not {arr.shape[-1]}")
    skip = _resolve_ids(index, exclude)
    if exclude_per_row is None:
        skips = [skip] * len(arr)
    elif len(exclude_per_row) == len(arr):
        skips = [skip | _resolve_ids(index, own) for own in exclude_per_row]
    else:
        raise SimsearchError(f"exclude_per_row has {len(exclude_per_row)} entries for {len(arr)} query vectors")
    checked = arr.astype(np.float32, copy=False) if unit else check_vectors(arr, snap.manifest.dim)
    if len(checked) and search_spec(snap, augment) is None:  # one FAISS call when nothing needs a search per row
        together = _search_rows(index, checked, k, skips, filter, rules)
        if together is not None:
            return together
    return [_search(index, checked[i : i + 1], k, skips[i], filter, rules, augment) for i in range(len(checked))]


def _search_rows(
    index: Searchable, rows: np.ndarray, k, skips: list[set[int]], filter, rules: Rules
) -> list[list[Hit]] | None:
    """Independent rows in one FAISS call (an exact index reads its vectors once for all of them, as a matrix
    product), when nothing calls for a search per row: one photo per item, no filter, no rules. ``skips``: the
    items each row leaves out. Live items are merged per row as :func:`_search` merges them. Gives what
    :func:`_search` gives each row; None when a row-by-row search is needed."""
    k = _check_k(k)
    live = index.live_state()
    snap = live.snapshot
    simple = snap.single_photo and rules == NO_RULES and snap.faiss.ntotal > 0
    if not simple or allowed_items(snap, filter, live.schema) is not None:
        return None
    base_skips = [skip | live.hidden for skip in skips]
    n = int(snap.faiss.ntotal)
    fetch = min(n, k + max(map(len, base_skips)))  # one photo per item: at most one result per skipped item
    scores, pids = snap.faiss.search(np.ascontiguousarray(rows, dtype=np.float32), fetch)
    items = snap.items_of(pids.ravel()).reshape(pids.shape)  # one look-up for the batch, then plain lists
    ranked_rows = [
        best_per_item(s, p, i, base_skip)
        for s, p, i, base_skip in zip(scores.tolist(), pids.tolist(), items.tolist(), base_skips, strict=True)
    ]
    stored = stored_items(snap, live, [r[0] for ranked in ranked_rows for r in ranked[:k]])
    out = []
    for i, ranked in enumerate(ranked_rows):
        skip = skips[i]
        if len(ranked) < k and fetch < n:  # fewer left than asked (rare): this row on its own, as _search would
            out.append(_search(index, rows[i : i + 1], k, skip, filter, rules))
            continue
        live_ranked = rank_live(live, rows[i : i + 1], None, skip, limit=k)
        if live_ranked:
            ranked = sorted(ranked[:k] + live_ranked, key=lambda r: -r[1])
        out.append(hits_of(snap, live, ranked[:k], rules.fields, stored))
    return out


def _resolve_ids(index: Searchable, refs: Iterable) -> set[int]:
    out = set()
    for r in refs:
        item_id = index.resolve_item(r)
        if item_id is not None:
            out.add(item_id)
    return out


# ------------------------------------------------------------------------------------------------ the search


def _check_k(k) -> int:
    k = int(k)
    if not 1 <= k <= LIMITS.max_k:
        raise SimsearchError(f"k must be between 1 and {LIMITS.max_k}, not {k}")
    return k


def allowed_items(snap: Snapshot, filter, schema: dict | None = None) -> np.ndarray | None:
    """Sorted ids of the stored items a filter lets through (None: no filter).

    ``filter`` is a dict (keys with None or empty values are ignored; ``path_prefix`` matches photo paths)
    or a ``--where`` string (see :mod:`simsearch.filters`); ``schema`` the attribute types including those of
    live writes (default: the snapshot's).
    """
    if isinstance(filter, dict):
        filter = {k: v for k, v in filter.items() if v is not None and v != "" and v != []}
    if not filter:
        return None
    ids = None
    if isinstance(filter, dict) and "path_prefix" in filter:  # photos' paths are not attributes
        filter = dict(filter)
        ids = snap.meta.items_with_path_prefix(str(filter.pop("path_prefix")))
    if filter:
        item_ids, table = snap.attribute_table()
        compiled = compile_filter(filter, schema or snap.manifest.attributes)
        matched = item_ids[compiled.mask(table)]
        ids = matched if ids is None else np.intersect1d(ids, matched)
    return ids


def _search(
    index: Searchable,
    queries: np.ndarray,
    k,
    skip: set[int],
    filter,
    rules: Rules,
    augment: bool | str | None = None,
    item: int | None = None,
) -> list[Hit]:
    k = _check_k(k)
    live = index.live_state()  # first: it may switch the index to a newer generation
    snap = live.snapshot
    base_skip = skip | live.hidden
    allowed = allowed_items(snap, filter, live.schema)
    if allowed is not None and len(allowed) and base_skip:
        allowed = allowed[~np.isin(allowed, np.fromiter(base_skip, dtype=np.int64))]
    spec = search_spec(snap, augment)
    if spec is not None:
        return _search_augmented(live, queries, k, skip, allowed, filter, rules, spec, item)
    want = k
    while True:
        live_ranked = rank_live(live, queries, filter, skip, limit=want)
        merged_ranked, exhausted = _collect(snap, queries, want, allowed, base_skip, live_ranked, augmented=False)
        kept = apply_rules(snap, live, merged_ranked, rules, k)
        if len(kept) >= k or exhausted:
            break
        want *= 2
    return hits_of(snap, live, kept[:k], rules.fields)


def _collect(snap: Snapshot, queries, want: int, allowed, skip: set[int], live_ranked: list, *, augmented: bool):
    """The best ``want`` stored items (raw or augmented vectors) merged with the live ones; and whether the
    stored ones ran out.

    ``live_ranked`` holds the best ``want`` live items at most (as :func:`~simsearch.search_live.rank_live` gives
    them with ``limit``): the merge keeps ``want`` entries, and says exhausted only when no candidate was left out."""
    faiss_index = snap.augmented if augmented else snap.faiss
    empty = faiss_index.ntotal == 0 or (allowed is not None and len(allowed) == 0)
    ranked = [] if empty else _ranked(snap, queries, want, allowed, skip, faiss_index)
    exhausted = len(ranked) < want
    if snap.manifest.item_pooling == "mean" and not snap.single_photo:
        ranked = _mean_pooled(snap, queries, ranked, augmented=augmented)
    if not live_ranked:
        return ranked, exhausted
    merged = sorted(ranked + live_ranked, key=lambda r: -r[1])
    return merged[:want], exhausted and len(live_ranked) < want and len(merged) <= want


def _search_augmented(live: LiveState, queries, k: int, skip: set[int], allowed, filter, rules: Rules, spec, item):
    """Search the augmented vectors (see :mod:`simsearch.search_augment`)."""
    snap = live.snapshot
    base_skip = skip | live.hidden
    photos = snap.photos_of([item]) if item is not None and item not in live.hidden else np.zeros(0, np.int64)
    item_query = len(photos) > 0
    n = int(snap.faiss.ntotal)
    found = None
    if allowed is None and snap.single_photo and n:  # one raw search gives the guard and the expansion
        skipped = len(snap.photos_of(base_skip)) if base_skip else 0
        fetch = min(n, max(0 if item_query else int(spec.k), spec.guard + 1) + skipped)
        found = snap.faiss.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
    q_aug = augmented_vectors(snap, photos) if item_query else expand(snap, queries, spec, found)
    live_aug = expand_live(live, spec)
    live_raw = rank_live(live, queries, filter, skip, limit=spec.guard + 1)
    if found is not None:
        stored = first_per_item(snap, found[0], found[1], None, base_skip)
        raw = (sorted(stored + live_raw, key=lambda r: -r[1]) if live_raw else stored)[: spec.guard + 1]
    else:
        raw, _ = _collect(snap, queries, spec.guard + 1, allowed, base_skip, live_raw, augmented=False)

    def raw_score(_item: int, photo: int) -> float:
        row = live.row_of_photo.get(int(photo))
        vec = live.matrix[row] if row is not None and live.matrix is not None else snap.faiss.reconstruct(int(photo))
        return float((queries @ np.asarray(vec, np.float32)).max())

    want = k + spec.guard + 1
    while True:
        live_ranked = rank_live(live, q_aug, filter, skip, matrix=live_aug, limit=want)
        ranked, exhausted = _collect(snap, q_aug, want, allowed, base_skip, live_ranked, augmented=True)
        order = merged(raw, ranked, spec, item_query=item_query, raw_score_of=raw_score)
        kept = apply_rules(snap, live, order, rules, k)
        if len(kept) >= k or exhausted:
            break
        want *= 2
    return hits_of(snap, live, kept[:k], rules.fields)


def _ranked(
    snap: Snapshot, queries: np.ndarray, want: int, allowed: np.ndarray | None, skip: set[int], faiss_index=None
) -> list[tuple[int, float, int]]:
    """The best ``want`` items (id, score, best photo id), exactly, by their best photo (max pooling), in
    ``faiss_index`` (default: the raw vectors)."""
    import faiss

    index = snap.faiss if faiss_index is None else faiss_index
    n = int(index.ntotal)
    per_item = 1 if snap.single_photo else math.ceil(n / max(1, snap.manifest.items)) + 1
    params = None
    allowed_photos = None
    post_filter = False
    skip_photos = snap.photos_of(skip) if skip else np.zeros(0, np.int64)
    fetch = want * per_item + len(skip_photos)
    if allowed is not None:
        allowed_photos = snap.photos_of(allowed)
        share = len(allowed_photos) / n
        if share >= BROAD_FILTER:
            post_filter = True
            fetch = math.ceil(fetch / share * 1.2) + 16
        elif not _is_flat(index) and len(allowed_photos) <= SUBSET_SEARCH_MAX:
            return _subset_ranked(snap, queries, want, allowed_photos, index)
        else:
            sel = faiss.IDSelectorBatch(len(allowed_photos), faiss.swig_ptr(allowed_photos))
            params = faiss.SearchParameters()
            params.sel = sel
            fetch = want * per_item
    while True:
        fetch = min(fetch, n)
        scores, pids = index.search(queries, fetch) if params is None else index.search(queries, fetch, params=params)
        ranked = first_per_item(snap, scores, pids, allowed_photos if post_filter else None, skip)
        exhausted = fetch >= n or (allowed_photos is not None and params is not None and fetch >= len(allowed_photos))
        if len(ranked) >= want or exhausted:
            return ranked[:want]
        fetch *= 2


def _is_flat(index) -> bool:
    import faiss

    inner = faiss.downcast_index(index)
    inner = faiss.downcast_index(getattr(inner, "index", inner))
    return isinstance(inner, faiss.IndexFlat)


def _subset_ranked(
    snap: Snapshot, queries: np.ndarray, want: int, photos: np.ndarray, index
) -> list[tuple[int, float, int]]:
    """Exact search over the vectors of a small matching subset (approximate indexes would come back short)."""
    vecs = np.asarray(index.reconstruct_batch(photos), dtype=np.float32)
    scores = queries @ vecs.T
    order = np.argsort(-scores, axis=1)
    return first_per_item(snap, np.take_along_axis(scores, order, 1), photos[order], None, set())[:want]


def _mean_pooled(snap: Snapshot, queries: np.ndarray, ranked: list, *, augmented: bool = False) -> list:
    """Re-score candidates by the normalised mean of their (raw or augmented) photos (``item_pooling: mean``)."""
    if not ranked:
        return ranked
    vecs = snap.item_vectors([r[0] for r in ranked], augmented=augmented)
    q = l2_normalize(queries.mean(axis=0))
    rescored = [(item, float(l2_normalize(vecs[item].mean(axis=0)) @ q), photo) for item, _, photo in ranked]
    return sorted(rescored, key=lambda r: -r[1])
