"""Collection-side augmentation (DBA), its incremental update, and query expansion: pure functions.

Database-side augmentation replaces every item's vector by the normalised weighted sum of itself (weight 1) and
its ``k`` nearest neighbours (weight ``cosine ** power``), repeated ``rounds`` times over the same neighbour graph
(round 2 averages the round-1 vectors, so neighbours of neighbours contribute). A query that is not in the
collection is expanded over the augmented vectors of its nearest items (alpha query expansion); a query that is
an item already has its augmented vector. Searches run on the augmented vectors and :func:`guarded_merge` keeps
the raw top results at the head of the list.

The query side (expansion, the guarded merge) is :mod:`simsearch.augment_query`.

Everything here works on numpy arrays and FAISS indexes and knows nothing of how an index is stored: the store
keeps, per generation, the raw vectors, the augmented vectors (same ids) and the :class:`KnnGraph`, and calls
:func:`augment` or :func:`update` when it writes one.

Determinism: an augmented row is computed with the same element-wise operations in the same order whatever batch
it is computed in, so :func:`update` gives bit for bit the vectors of a from-scratch :func:`augment` whenever the
two neighbour graphs agree (always, for exact graphs without exact ties).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .config.augment import AUTO_K_MAX, AugmentSpec

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``search(queries, k) -> (sims, ids)``: the ``k`` best items by inner product, best first; id -1 when fewer."""

BLOCK = 4096
_ROWS = 1024  # rows averaged at a time
REVERSE_WIDTH = 4  # approximate updates: a new item may enter the lists of its 4 x width nearest items


@dataclass(frozen=True)
class KnnGraph:
    """Each item's nearest other items by raw cosine: ``neighbors[r]`` / ``sims[r]`` belong to item ``ids[r]``.

    Rows are sorted best first (ties: lower id first); a row with fewer neighbours than ``width`` ends in id -1
    with similarity ``-inf``. ``sims`` are exact inner products of the raw vectors.
    """

    ids: np.ndarray  # (n,) int64
    neighbors: np.ndarray  # (n, width) int64
    sims: np.ndarray  # (n, width) float32

    @property
    def width(self) -> int:
        return int(self.neighbors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays to save with a generation (e.g. ``np.savez``); :meth:`from_arrays` reads them back."""
        return {"ids": self.ids, "neighbors": self.neighbors, "sims": self.sims}

    @classmethod
    def from_arrays(cls, arrays) -> KnnGraph:
        ids = np.asarray(arrays["ids"], np.int64)
        neighbors = np.asarray(arrays["neighbors"], np.int64)
        sims = np.asarray(arrays["sims"], np.float32)
        if neighbors.shape != sims.shape or neighbors.ndim != 2 or len(neighbors) != len(ids):
            raise ValueError("a neighbour graph needs ids (n,), neighbors and sims (n, width)")
        return cls(ids, neighbors, sims)


@dataclass(frozen=True)
class Update:
    """What :func:`update` changed: replace the augmented vectors of ``ids`` and drop those of ``removed``."""

    graph: KnnGraph  # the new collection's graph, rows in the order of the ids given to update()
    ids: np.ndarray  # ids whose augmented vector was (re)computed, added items included; ascending
    vectors: np.ndarray  # their augmented vectors, in the order of ``ids``
    removed: np.ndarray  # ids no longer in the collection
    relisted: int  # items whose neighbour list changed (added ones included)


class _Rows:
    """Vectorised id → row lookup."""

    def __init__(self, ids: np.ndarray):
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        at = np.searchsorted(self.sorted, ids)
        at = np.minimum(at, len(self.sorted) - 1)
        if len(ids) and not np.array_equal(self.sorted[at], ids):
            raise KeyError("an id of the neighbour graph is not in the collection")
        return self.order[at]


# ------------------------------------------------------------------------------------------------ neighbour graph


def exact_search(vectors: np.ndarray, ids: np.ndarray | None = None) -> Search:
    """Exact inner-product search over ``vectors`` (FAISS ``IndexFlatIP``), answering with ``ids``."""
    import faiss

    vectors = f32(vectors)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(vectors):
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64) if ids is None else _i64(ids))
    return index_search(index)


def index_search(index) -> Search:
    """Search a FAISS index (exact or ANN, with its own search parameters); its ids are the item ids."""

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(f32(queries), k)

    return search


def knn_graph(
    vectors: np.ndarray,
    ids: np.ndarray,
    width: int,
    *,
    search: Search | None = None,
    rows: np.ndarray | None = None,
    block: int = BLOCK,
) -> KnnGraph:
    """The ``width`` nearest other items of every item (or of the items at positions ``rows`` only).

    ``search`` runs over the whole collection (default: exact search over ``vectors``); an ANN index gives an
    approximate graph. Lists are re-scored exactly and put in canonical order (see :class:`KnnGraph`).
    """
    vectors, ids = f32(vectors), _i64(ids)
    rows = np.arange(len(ids)) if rows is None else _i64(rows)
    width = int(width)
    nbr = np.full((len(rows), width), -1, np.int64)
    take = min(width, len(ids) - 1)
    if take > 0 and len(rows):
        search = search or exact_search(vectors, ids)
        for start in range(0, len(rows), block):
            part = rows[start : start + block]
            _, found = search(vectors[part], take + 1)
            nbr[start : start + len(part), :take] = _drop_self(np.asarray(found, np.int64), ids[part], take)
    nbr, sims = _rescore(vectors, _Rows(ids), rows, nbr)
    return KnnGraph(ids[rows].copy(), nbr, sims)


def _drop_self(found: np.ndarray, self_ids: np.ndarray, take: int) -> np.ndarray:
    """Remove each row's own id (or its last column when the id is not there); keep ``take`` columns."""
    keep = found != self_ids[:, None]
    keep[keep.all(axis=1), -1] = False
    return found[keep].reshape(len(found), -1)[:, :take]


def _rescore(vectors: np.ndarray, row_of: _Rows, rows: np.ndarray, nbr: np.ndarray):
    """Exact sims of neighbour lists, sorted (-sim, id) with missing (-1) last."""
    return _sort_rows(nbr, _pair_sims(vectors, row_of, rows, nbr))


def _pair_sims(vectors: np.ndarray, row_of: _Rows, rows: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """``<v[row], v[neighbour]>`` element-wise (the same bits whatever the batch); -inf where missing."""
    sims = np.full(nbr.shape, -np.inf, np.float32)
    for c in range(nbr.shape[1]):
        ok = nbr[:, c] >= 0
        if ok.any():
            sims[ok, c] = np.einsum("ij,ij->i", vectors[rows[ok]], vectors[row_of(nbr[ok, c])])
    return sims


def _sort_rows(nbr: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((nbr, -sims, nbr < 0), axis=1)
    return np.take_along_axis(nbr, order, 1), np.take_along_axis(sims, order, 1)


# ------------------------------------------------------------------------------------------------ augmentation


def neighbour_weights(sims: np.ndarray, spec: AugmentSpec, k: int | None = None) -> np.ndarray:
    """Weight of each of the first ``k`` neighbours: ``max(cosine, 0) ** power``, 0 where missing."""
    k = spec_k(spec) if k is None else k
    s = np.asarray(sims, np.float32)[:, :k]
    s = np.where(np.isfinite(s), np.maximum(s, np.float32(0)), np.float32(0))
    return (s ** np.float32(spec.power)).astype(np.float32)


def spec_k(spec: AugmentSpec) -> int:
    """The spec's ``k``; ``auto`` must have been resolved with :func:`auto_k` first."""
    if spec.k == "auto":
        raise ValueError("resolve k='auto' first: spec.resolved(auto_k(graph))")
    return int(spec.k)


def augment(
    vectors: np.ndarray,
    ids: np.ndarray,
    spec: AugmentSpec,
    *,
    graph: KnnGraph | None = None,
    search: Search | None = None,
) -> np.ndarray:
    """Augmented vectors (unit rows, in the order of ``vectors``) of a collection; method ``none`` copies them.

    ``graph`` (rows = ``ids``, at least ``spec.max_k`` wide) is computed when not given: exactly, or with
    ``search`` (an ANN index). ``k = "auto"`` is resolved with :func:`resolve_k` first.
    """
    vectors, ids = f32(vectors), _i64(ids)
    if not spec.enabled or len(ids) < 2:
        return vectors.copy()
    if graph is None:
        graph = knn_graph(vectors, ids, spec.max_k, search=search)
    if not np.array_equal(graph.ids, ids):
        raise ValueError("the neighbour graph must list exactly these ids, in this order")
    spec = resolve_k(vectors, graph, spec)
    return propagate(vectors, graph, spec, np.arange(len(ids)))


def resolve_k(vectors: np.ndarray, graph: KnnGraph, spec: AugmentSpec) -> AugmentSpec:
    """The spec with ``k = "auto"`` replaced by :func:`auto_k` of this collection (other specs unchanged)."""
    if spec.k != "auto":
        return spec
    k = auto_k(graph, background_similarity(vectors), fraction=spec.auto_fraction, k_max=spec.max_k)
    return spec.resolved(k)


def propagate(vectors: np.ndarray, graph: KnnGraph, spec: AugmentSpec, targets: np.ndarray) -> np.ndarray:
    """Augmented vectors of the rows ``targets`` (graph row = vector row), computing only the rows they need."""
    k = min(spec_k(spec), graph.width)
    row_of = _Rows(graph.ids)
    nbr = np.full((len(graph), k), -1, np.int64)
    valid = graph.neighbors[:, :k] >= 0
    nbr[valid] = row_of(graph.neighbors[:, :k][valid])
    weights = neighbour_weights(graph.sims, spec, k)
    targets = _i64(targets)

    def with_neighbours(rows: np.ndarray) -> np.ndarray:
        more = nbr[rows]
        return np.union1d(rows, more[more >= 0])

    # rows computed at each round, last round first: round r needs round r-1 on its rows and their neighbours
    plan = [np.unique(targets)]
    for _ in range(spec.rounds - 1):
        plan.append(with_neighbours(plan[-1]))
    plan.reverse()
    full = len(plan[0]) == len(graph)
    have_rows = np.arange(len(graph)) if full else with_neighbours(plan[0])
    have = vectors if full else vectors[have_rows]
    for rows in plan:
        out = np.empty((len(rows), vectors.shape[1]), np.float32)
        for start in range(0, len(rows), _ROWS):  # blocks of rows: the temporaries stay small
            part = rows[start : start + _ROWS]
            acc = have[np.searchsorted(have_rows, part)]  # fancy indexing: a copy
            for c in range(k):
                col = nbr[part, c]
                ok = col >= 0
                if ok.all():
                    acc += weights[part, c, None] * have[np.searchsorted(have_rows, col)]
                elif ok.any():
                    acc[ok] += weights[part[ok], c, None] * have[np.searchsorted(have_rows, col[ok])]
            out[start : start + len(part)] = normalize_rows(acc)
        have_rows, have = rows, out
    return have[np.searchsorted(have_rows, targets)]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in place (zero rows stay zero)."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return x


# ------------------------------------------------------------------------------------------------ incremental


def affected(graph: KnnGraph, changed: Sequence[int] | np.ndarray, rounds: int, k: int | None = None) -> np.ndarray:
    """Ids whose augmented vector depends on an item of ``changed`` (an item whose vector or list changed).

    Round 1 of an item uses its own vector and list and its ``k`` neighbours' vectors (a neighbour whose vector
    changed has changed the item's list too, or made it search again); each further round adds one hop.
    """
    k = graph.width if k is None else min(k, graph.width)
    hit = np.isin(graph.ids, _i64(changed))
    nbr = graph.neighbors[:, :k]
    for _ in range(rounds - 1):
        hit = hit | np.isin(nbr, graph.ids[hit]).any(axis=1)
    return graph.ids[hit]


def update(
    graph: KnnGraph,
    vectors: np.ndarray,
    ids: np.ndarray,
    spec: AugmentSpec,
    *,
    changed: Sequence[int] | np.ndarray = (),
    search: Search | None = None,
    exact: bool = True,
    block: int = BLOCK,
) -> Update:
    """Bring an augmented collection up to date after items were added, removed or re-embedded.

    ``vectors``/``ids``: the whole new collection (raw vectors). Ids not in ``graph`` were added, graph ids not
    in ``ids`` were removed, and ``changed`` lists ids whose vector changed. Recomputed:

    1. the neighbour lists of added and changed items and of items that had a removed or changed neighbour,
       by a search over the new collection (``search``; default exact);
    2. the lists of the other items that an added or changed item now enters: with ``exact``, found by comparing
       every such item with the new ones (cost: items × new ones); otherwise from the new items' own search
       results (as approximate as an ANN graph is);
    3. the augmented vectors of every item within ``rounds`` hops of a changed list (:func:`affected`).

    With an exact graph the result equals a from-scratch :func:`augment` (and :func:`knn_graph`) bit for bit.
    """
    vectors, ids = f32(vectors), _i64(ids)
    width = graph.width
    row_of = _Rows(ids)
    removed = np.setdiff1d(graph.ids, ids)
    fresh = np.union1d(np.setdiff1d(ids, graph.ids), np.intersect1d(_i64(changed), ids))
    stale = np.union1d(removed, fresh)  # ids whose entries in old lists are no longer valid

    nbr = np.full((len(ids), width), -1, np.int64)
    is_old = np.isin(ids, graph.ids) & ~np.isin(ids, fresh)
    old_rows = np.nonzero(is_old)[0]
    nbr[old_rows] = graph.neighbors[_Rows(graph.ids)(ids[old_rows])]
    lost_one = np.isin(nbr[old_rows], stale).any(axis=1)
    research = np.union1d(row_of(fresh), old_rows[lost_one])
    stable = old_rows[~lost_one]
    sims = np.full(nbr.shape, -np.inf, np.float32)
    sims[stable] = _pair_sims(vectors, row_of, stable, nbr[stable])
    relisted = set(research.tolist())

    search = search or exact_search(vectors, ids)
    if len(research):
        part = knn_graph(vectors, ids, width, search=search, rows=research, block=block)
        nbr[research], sims[research] = part.neighbors, part.sims
    fresh_rows = row_of(fresh)
    if len(fresh_rows) and len(stable) and width:
        cand = _entrants(vectors, ids, stable, fresh_rows, width, exact, search, block)
        if cand.shape[1]:
            cand_sims = _pair_sims(vectors, row_of, stable, cand)
            last_sim, last_id = sims[stable, -1:], nbr[stable, -1:]
            last_id = np.where(last_id < 0, np.iinfo(np.int64).max, last_id)
            enters = (cand >= 0) & ((cand_sims > last_sim) | ((cand_sims == last_sim) & (cand < last_id)))
            gain = np.nonzero(enters.any(axis=1))[0]
            if len(gain):
                rows = stable[gain]
                merged, merged_sims = _sort_rows(
                    np.concatenate([nbr[rows], np.where(enters[gain], cand[gain], -1)], axis=1),
                    np.concatenate([sims[rows], np.where(enters[gain], cand_sims[gain], -np.inf)], axis=1),
                )
                nbr[rows], sims[rows] = merged[:, :width], merged_sims[:, :width]
                relisted.update(rows.tolist())
    new_graph = KnnGraph(ids.copy(), nbr, sims.astype(np.float32))
    relisted_ids = ids[np.array(sorted(relisted), np.int64)] if relisted else np.zeros(0, np.int64)

    dim = vectors.shape[1]
    if not spec.enabled:
        return Update(new_graph, np.zeros(0, np.int64), np.zeros((0, dim), np.float32), removed, len(relisted))
    # an item's augmented vector changes when its list changed or (within rounds hops) a neighbour's did;
    # a re-embedded item's vector changes what its neighbours average, so it counts as a changed list too
    redo = np.sort(row_of(affected(new_graph, np.union1d(relisted_ids, fresh), spec.rounds, spec_k(spec))))
    out = propagate(vectors, new_graph, spec, redo) if len(redo) else np.zeros((0, dim), np.float32)
    return Update(new_graph, ids[redo], out, removed, len(relisted))


def _entrants(vectors, ids, stable, fresh_rows, width, exact: bool, search: Search | None, block: int) -> np.ndarray:
    """Per stable row, the fresh ids that may enter its list (-1 padded)."""
    if exact:
        search = exact_search(vectors[fresh_rows], ids[fresh_rows])
        take = min(width, len(fresh_rows))
        cand = np.full((len(stable), take), -1, np.int64)
        for start in range(0, len(stable), block):
            part = stable[start : start + block]
            cand[start : start + len(part)] = search(vectors[part], take)[1]
        return cand
    # approximate: a fresh item may enter the lists of the stable items among its REVERSE_WIDTH x width nearest
    assert search is not None
    wide = min(REVERSE_WIDTH * width + 1, len(ids))
    found = np.concatenate(
        [
            np.asarray(search(vectors[fresh_rows[s : s + block]], wide)[1], np.int64)
            for s in range(0, len(fresh_rows), block)
        ]
    )
    src = np.repeat(ids[fresh_rows], found.shape[1])
    dst = found.ravel()
    stable_ids = ids[stable]
    sorter = np.argsort(stable_ids)
    at = np.minimum(np.searchsorted(stable_ids[sorter], dst), len(stable) - 1)
    ok = (dst >= 0) & (stable_ids[sorter][at] == dst)
    if not ok.any():
        return np.zeros((len(stable), 0), np.int64)
    owner, vals = sorter[at[ok]], src[ok]
    order = np.argsort(owner, kind="stable")
    owner, vals = owner[order], vals[order]
    slot = np.arange(len(owner)) - np.searchsorted(owner, owner)
    cand = np.full((len(stable), int(slot.max()) + 1), -1, np.int64)
    cand[owner, slot] = vals
    return cand


# ------------------------------------------------------------------------------------------------ auto k


def auto_k(graph: KnnGraph, background: float, *, fraction: float = 0.75, k_max: int = AUTO_K_MAX) -> int:
    """Label-free ``k`` for a collection, from the typical similarity of its j-th neighbours.

    ``background`` is the median cosine of random pairs of items (:func:`background_similarity`). With
    ``m_j`` the median over items of the j-th neighbour's cosine, ``k`` is the number of ranks j ≤ ``k_max``
    where ``m_j ≥ background + fraction × (m_1 − background)``: how many neighbours are typically almost as
    close as the nearest one, measured on the collection's own similarity scale. At least 1.
    """
    width = min(k_max, graph.width)
    s = graph.sims[:, :width]
    med = np.array([np.median(col[np.isfinite(col)]) if np.isfinite(col).any() else -np.inf for col in s.T])
    if not len(med) or not np.isfinite(med[0]):
        return 1
    threshold = background + fraction * (med[0] - background)
    return max(1, int(np.count_nonzero(med >= threshold)))


def background_similarity(vectors: np.ndarray, *, pairs: int = 20_000, seed: int = 0) -> float:
    """Median cosine between random pairs of distinct rows (a seeded sample)."""
    vectors = f32(vectors)
    n = len(vectors)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, pairs)
    b = (a + rng.integers(1, n, pairs)) % n
    return float(np.median(np.einsum("ij,ij->i", vectors[a], vectors[b])))


def f32(x) -> np.ndarray:
    """``x`` as a C-contiguous float32 array."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).reshape(-1)
