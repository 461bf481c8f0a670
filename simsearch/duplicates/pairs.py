"""Near-duplicate pairs: the cosine side (FAISS range searches), the hash side (a FAISS binary range search over
the perceptual hashes, both orientations) and the pair rule applied to both. See :mod:`simsearch.duplicates`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DUPLICATES, DuplicateRule
from ..errors import ImageError, SimsearchError
from ..images import load_image
from ..phash import MIRROR_MASK, NO_HASH, duplicate_reason, phash, to_signed
from ..system import cpu_count

if TYPE_CHECKING:
    from ..index import Index

log = logging.getLogger("simsearch")

Ids = Sequence[int] | np.ndarray

DEFAULT_THRESHOLD = DUPLICATES.threshold
MAX_PAIRS = 20_000_000  # refuse rules so loose that the "duplicates" are most of the catalogue
_EPS = 1e-6  # FAISS range search keeps similarities strictly above the radius: make the threshold inclusive


@dataclass(frozen=True)
class Link:
    """A near-duplicate pair: the items, their cosine similarity, hash distance (None: unknown) and why."""

    a: int
    b: int
    score: float
    hash_distance: int | None
    reason: str | None

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "score": round(self.score, 6),
            "hash_distance": self.hash_distance,
            "reason": self.reason,
        }


def make_rule(
    threshold: float | None = None,
    *,
    rule: DuplicateRule | None = None,
    hash_distance: int | None = None,
    hash_threshold: float | None = None,
    linkage: str | None = None,
) -> DuplicateRule:
    """``rule`` (default: :data:`simsearch.config.DUPLICATES`) with the given fields replaced (None: kept)."""
    given: dict[str, Any] = {"threshold": None if threshold is None else float(threshold),
                             "hash_distance": hash_distance, "hash_threshold": hash_threshold, "linkage": linkage}  # fmt: skip
    changes = {k: v for k, v in given.items() if v is not None}
    base = rule or DUPLICATES
    return dataclasses.replace(base, **changes) if changes else base


def describe_rule(rule: DuplicateRule) -> str:
    """The rule in words, e.g. for a report's heading."""
    text = f"similarity >= {rule.threshold}"
    if rule.uses_hash:
        text += f", or hash distance <= {rule.hash_distance} with similarity >= {rule.hash_threshold}"
    return f"{text}; {rule.linkage} linkage"


# ------------------------------------------------------------------------------ cosine neighbours


def _items_of(index: Index, photo_ids: np.ndarray) -> np.ndarray:
    """The item id of each FAISS (photo) id, -1 for none; the ids themselves for a store without photos."""
    snapshot = getattr(index, "snapshot", None)
    photo_ids = np.asarray(photo_ids, dtype=np.int64)
    return snapshot.items_of(photo_ids) if snapshot is not None else photo_ids


def _best_per_item(index: Index, photo_ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Photo hits → item hits: each item once, with its best photo's score."""
    items = _items_of(index, photo_ids)
    keep = items >= 0
    items, scores = items[keep], np.asarray(scores, dtype=np.float32)[keep]
    if len(items) == 0:
        return items, scores
    order = np.lexsort((-scores, items))
    items, scores = items[order], scores[order]
    first = np.ones(len(items), dtype=bool)
    first[1:] = items[1:] != items[:-1]
    return items[first], scores[first]


def neighbours_above(index: Index, vectors: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query vector, the ``(item ids, scores)`` of all items with a photo of similarity >= ``threshold``."""
    vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if len(index) == 0 or len(vectors) == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(vectors))]
    try:
        lims, scores, ids = index.faiss.range_search(vectors, threshold - _EPS)
    except RuntimeError:  # index types without range search: k-NN with a growing k
        return _knn_above(index, vectors, threshold)
    return [
        _best_per_item(index, ids[lims[i] : lims[i + 1]], scores[lims[i] : lims[i + 1]]) for i in range(len(vectors))
    ]


def _knn_above(index: Index, vectors: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    n = int(index.faiss.ntotal)
    out: list = [None] * len(vectors)
    todo = np.arange(len(vectors))
    k = min(n, 32)
    while len(todo):
        scores, ids = index.faiss.search(vectors[todo], k)
        again = []
        for row, qi in enumerate(todo):
            keep = (ids[row] >= 0) & (scores[row] >= threshold - _EPS)
            if keep.all() and k < n:
                again.append(qi)  # all k neighbours are above the threshold: there may be more
            else:
                out[qi] = _best_per_item(index, ids[row][keep], scores[row][keep])
        todo, k = np.array(again, dtype=np.int64), min(n, k * 4)
    return out


def similar_pairs(index: Index, threshold: float = DEFAULT_THRESHOLD, *, batch_size: int = 2048) -> Iterator:
    """Yield ``(i, j, score)`` arrays of item id pairs (``i < j``) with similarity >= ``threshold``, per batch."""
    threshold = make_rule(threshold).threshold
    all_ids = index.ids()
    total = 0
    for start in range(0, len(all_ids), batch_size):
        ids, vecs = index.vectors(all_ids[start : start + batch_size].tolist())
        rows = neighbours_above(index, vecs, threshold)
        none = np.zeros(0, np.int64)
        src = np.concatenate([np.full(len(r[0]), q, np.int64) for q, r in zip(ids, rows, strict=True)] or [none])
        dst = np.concatenate([r[0] for r in rows] or [none]).astype(np.int64)
        sc = np.concatenate([r[1] for r in rows] or [none]).astype(np.float32)
        keep = src < dst  # each pair once, no self pairs
        total += int(keep.sum())
        _check_pairs(total, f"similarity >= {threshold}")
        yield src[keep], dst[keep], sc[keep]


def _check_pairs(total: int, what: str) -> None:
    if total > MAX_PAIRS:
        raise SimsearchError(
            f"more than {MAX_PAIRS:,} pairs have {what}: that is not near-duplicates; raise the threshold "
            "(or lower --hash-distance)"
        )


# ------------------------------------------------------------------------------ hashes


def phashes(index: Index, ids: Ids) -> tuple[np.ndarray, np.ndarray]:
    """The perceptual hashes of items as ``(values int64, known bool)``: stored in the index when it has them
    (``Index.phashes``), otherwise computed from the files (logged; unreadable files: unknown)."""
    ids = [int(i) for i in ids]
    stored = phashes_stored(index, ids)
    missing = [n for n, h in enumerate(stored) if h is None]
    if missing:
        if len(missing) > 100:
            log.warning(
                "%d items have no stored perceptual hash (indexed before simsearch stored them); computing them "
                "from the files",
                len(missing),
            )
        computed = _hashes_from_files(index, [ids[n] for n in missing])
        for n, h in zip(missing, computed, strict=True):
            stored[n] = h
    known = np.array([h is not None for h in stored], dtype=bool)
    values = np.array([h if h is not None else 0 for h in stored], dtype=np.int64)
    return values, known


def phashes_stored(index: Index, ids: Ids) -> list[int | None]:
    """The hashes the index stores (None where it has none), without computing any from the files."""
    ids = [int(i) for i in ids]
    return index.phashes(ids) if hasattr(index, "phashes") else _stored_phashes(index, ids)


def _stored_phashes(index: Index, ids: list[int]) -> list[int | None]:
    """The hash stored with each item's photos at index time (its first photo that has one)."""
    found = {}
    for it in index.items(ids):
        found[it.id] = next((p.phash for p in getattr(it, "photos", ()) if p.phash is not None), None)
    return [found.get(i) for i in ids]


def _hashes_from_files(index: Index, ids: list[int]) -> list[int | None]:
    items = {it.id: it for it in index.items(ids)}
    return _hash_files([items[i].abspath if i in items else None for i in ids])


def _hash_files(paths: Sequence) -> list[int | None]:
    """The hash of each image file (decoded at about the scale the default embedder decodes), None if unreadable."""

    def one(path) -> int | None:
        if path is None:
            return None
        try:
            return phash(load_image(path, draft_size=512))
        except ImageError:
            return None

    if len(paths) < 8:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="simsearch-phash") as pool:
        return list(pool.map(one, paths))


def photo_phashes(index: Index, photo_ids: Ids) -> tuple[np.ndarray, np.ndarray]:
    """:func:`phashes` of photos (FAISS ids) rather than items: ``(values int64, known bool)``."""
    pids = np.asarray(photo_ids, dtype=np.int64)
    if getattr(index, "snapshot", None) is None:  # a store without photos: photo ids are item ids
        return phashes(index, pids)
    owners = _items_of(index, pids)
    photos = {p.id: p for it in index.items(np.unique(owners[owners >= 0]).tolist()) for p in it.photos}
    stored = [photos[int(p)].phash if int(p) in photos else None for p in pids]
    missing = [n for n, h in enumerate(stored) if h is None and int(pids[n]) in photos]
    for n, h in zip(missing, _hash_files([photos[int(pids[n])].abspath for n in missing]), strict=True):
        stored[n] = h
    known = np.array([h is not None for h in stored], dtype=bool)
    return np.array([h if h is not None else 0 for h in stored], dtype=np.int64), known


def pair_hash_distances(index: Index, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Hash distances between photo ``rows[i]`` and each photo ``found[i, j]`` (FAISS ids, an ``(n, m)`` array as a
    k-NN search returns it, -1 for none): an int array of the same shape, :data:`~simsearch.phash.NO_HASH` where
    unknown."""
    rows = np.asarray(rows, dtype=np.int64)
    found = np.asarray(found, dtype=np.int64)
    uniq = np.unique(np.concatenate([rows, found[found >= 0]]))
    values, known = photo_phashes(index, uniq)
    pos_r = np.searchsorted(uniq, rows)
    pos_f = np.clip(np.searchsorted(uniq, found), 0, max(0, len(uniq) - 1))
    x = values.view(np.uint64)[pos_r][:, None] ^ values.view(np.uint64)[pos_f]
    d = np.minimum(np.bitwise_count(x), np.bitwise_count(x ^ np.uint64(MIRROR_MASK))).astype(np.int64)
    d[~(known[pos_r][:, None] & known[pos_f]) | (found < 0)] = NO_HASH
    return d


def _as_bytes(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64)).view(np.uint8).reshape(-1, 8)


def hash_pairs(ids: np.ndarray, values: np.ndarray, max_distance: int, *, batch_size: int = 4096):
    """``(i, j, distance)`` arrays of id pairs (``i < j``) whose hashes are at most ``max_distance`` apart in
    either orientation (:func:`simsearch.phash.distance`), by a FAISS binary range search."""
    import faiss

    ids = np.asarray(ids, dtype=np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(ids) < 2 or max_distance < 0:
        return empty
    db = faiss.IndexBinaryFlat(64)
    db.add(_as_bytes(values))
    flip = np.int64(to_signed(MIRROR_MASK))
    parts, total = [], 0
    for start in range(0, len(ids), batch_size):
        q = np.asarray(values[start : start + batch_size], dtype=np.int64)
        for query in (q, q ^ flip):
            lims, dist, found = db.range_search(_as_bytes(query), max_distance + 1)  # strictly below the radius
            src = np.repeat(np.arange(start, start + len(q)), np.diff(lims).astype(np.int64))
            keep = src < found
            total += int(keep.sum())
            _check_pairs(total, f"hash distance <= {max_distance}")
            parts.append((src[keep], found[keep].astype(np.int64), dist[keep].astype(np.int64)))
    if not parts:
        return empty
    src, dst, dist = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((dist, dst, src))  # the nearer orientation first, then one row per pair
    src, dst, dist = src[order], dst[order], dist[order]
    first = np.ones(len(src), dtype=bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return ids[src[first]], ids[dst[first]], dist[first]


# ------------------------------------------------------------------------------ pairs under the rule


@dataclass
class _Links:
    """Pairs passing the rule (``a < b``) and the hashes of the items involved."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    hd: np.ndarray  # NO_HASH: unknown
    hashes: dict[int, int] = field(default_factory=dict)

    def link(self, n: int, rule: DuplicateRule) -> Link:
        hd = int(self.hd[n])
        return Link(int(self.a[n]), int(self.b[n]), float(min(1.0, self.score[n])), hd if hd >= 0 else None,
                    duplicate_reason(float(self.score[n]) + _EPS, hd, rule))  # fmt: skip


def _pair_scores(index: Index, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0:
        return np.zeros(0, np.float32)
    uniq = np.unique(np.concatenate([a, b]))
    got, vecs = index.vectors(uniq.tolist())
    row = {int(i): n for n, i in enumerate(got)}
    ra = np.array([row[int(i)] for i in a])
    rb = np.array([row[int(i)] for i in b])
    return np.einsum("ij,ij->i", vecs[ra], vecs[rb]).astype(np.float32)


def _hash_distance_of(hashes: dict[int, int], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full(len(a), NO_HASH, dtype=np.int64)
    for n, (i, j) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        if i in hashes and j in hashes:
            x = (hashes[i] ^ hashes[j]) & ((1 << 64) - 1)
            out[n] = min(x.bit_count(), (x ^ MIRROR_MASK).bit_count())
    return out


def _all_links(index: Index, rule: DuplicateRule, batch_size: int) -> _Links:
    parts = list(similar_pairs(index, rule.threshold, batch_size=batch_size))
    ca = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)])
    cb = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)])
    cs = np.concatenate([p[2] for p in parts] or [np.zeros(0, np.float32)])
    if not rule.uses_hash:
        return _Links(ca, cb, cs, np.full(len(ca), NO_HASH, np.int64))
    all_ids = index.ids()
    values, known = phashes(index, all_ids)
    hashes = {int(i): int(v) for i, v, k in zip(all_ids, values, known, strict=True) if k}
    ha, hb, hd = hash_pairs(all_ids[known], values[known], rule.hash_distance)
    seen = set(zip(ca.tolist(), cb.tolist()))
    new = np.array([(i, j) not in seen for i, j in zip(ha.tolist(), hb.tolist(), strict=True)], dtype=bool)
    ha, hb, hd = ha[new], hb[new], hd[new]
    hs = _pair_scores(index, ha, hb)
    keep = hs >= rule.hash_threshold - _EPS
    return _Links(
        np.concatenate([ca, ha[keep]]),
        np.concatenate([cb, hb[keep]]),
        np.concatenate([cs, hs[keep]]),
        np.concatenate([_hash_distance_of(hashes, ca, cb), hd[keep]]),
        hashes,
    )
