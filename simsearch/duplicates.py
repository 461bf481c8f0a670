"""Near-duplicates: pairs decided from two signals, grouped around the most original-looking member.

    groups = find_duplicates(index)                   # largest groups first, default rule
    groups = find_duplicates(index, 0.93, linkage="complete")
    group = duplicates_of(index, item_id)             # the item and its near-duplicates

**The pair rule** (:class:`simsearch.config.DuplicateRule`): two items are near-duplicates when their cosine
similarity is at least ``threshold`` (``--threshold``, a cosine as before), or when their perceptual hashes
(:mod:`simsearch.phash`, luminance DCT, mirror-aware) are at most ``hash_distance`` bits apart and their cosine is
at least ``hash_threshold``. The embedding alone finds mirrored, rotated and cropped copies that hashes miss, but
not grayscale ones (cosine 0.71-0.81 to their original, below the 0.87 of the closest different photos); the
hash finds those and recoloured/brightened copies. Each pair reports why (``"cosine"``, ``"hash"`` or both),
its cosine and its hash distance. The defaults come from ``scripts/bench_duplicates.py`` (figures below).

**Groups** (``linkage``): ``star`` (default) puts every member within the rule of the group's representative
(no chains: a copy of a copy that is too far from the original stays out); ``complete`` requires every pair of
members to be within the rule; ``single`` is connected components (chains allowed, as before). Groups are formed
greedily from the most original-looking item down. Each group reports its weakest link (the lowest-cosine pair
that holds it together).

**The representative** is the most original-looking member: the largest pixel count (copies get cropped and
downscaled), then colour over grayscale, then the oldest modification time (the original was there first), then
the largest file, then the lowest id. Pixel count and colour are read from the files of the grouped items only
(an unreadable file counts as 0 pixels, grayscale).

**Where pairs come from**: FAISS range searches for the cosine (or k-NN with a growing ``k`` for index types
without range search) and a FAISS binary (Hamming) range search over the hashes, in both orientations; there is
no all-pairs loop in Python. Hashes are stored at index time (``Index.phashes``); for an index written before
that, they are computed from the files on the fly (once per call: slower, but old indexes keep working).

Benchmark (``scripts/bench_duplicates.py``: Caltech-101, 400 photos, 200 with two modified copies each, 200
distractors of the same classes): see :data:`BENCHMARK`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .config import DUPLICATES, DuplicateRule
from .engines import cpu_count
from .errors import ImageError, SimsearchError
from .images import load_image
from .phash import MIRROR_MASK, NO_HASH, duplicate_reason, phash, to_signed

if TYPE_CHECKING:
    from .index import Index, Item

log = logging.getLogger("simsearch")

DEFAULT_THRESHOLD = DUPLICATES.threshold
MAX_PAIRS = 20_000_000  # refuse rules so loose that the "duplicates" are most of the catalogue
_EPS = 1e-6  # FAISS range search keeps similarities strictly above the radius: make the threshold inclusive
COLOUR_CHROMA = 4.0  # mean max-min channel spread (0-255) above which an image counts as colour
BENCHMARK = ""  # filled in from scripts/bench_duplicates.py


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


@dataclass
class DuplicateGroup:
    """Near-duplicate items. ``items[0]`` is the representative (the most original-looking member, see the
    module docstring); ``scores[i]``, ``hash_distances[i]`` and ``reasons[i]`` relate ``items[i]`` to it
    (reason None: linked only through other members, possible with ``linkage="single"``). ``weakest`` is the
    lowest-cosine pair holding the group together (None for a group of one)."""

    items: list[Item]
    scores: list[float]
    hash_distances: list[int | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    weakest: Link | None = None
    linkage: str = DUPLICATES.linkage

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def representative(self) -> Item:
        return self.items[0]

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "representative": self.representative.id,
            "linkage": self.linkage,
            "min_score": round(min(self.scores), 6),
            "weakest_link": self.weakest.to_dict() if self.weakest else None,
            "items": [
                {"id": it.id, "path": it.path, "label": it.label, "score": round(s, 6), "hash_distance": h,
                 "reason": r, "bytes": it.size}
                for it, s, h, r in zip(self.items, self.scores, self.hash_distances, self.reasons, strict=True)
            ],
        }  # fmt: skip


def make_rule(
    threshold: float | None = None,
    *,
    rule: DuplicateRule | None = None,
    hash_distance: int | None = None,
    hash_threshold: float | None = None,
    linkage: str | None = None,
) -> DuplicateRule:
    """``rule`` (default: :data:`simsearch.config.DUPLICATES`) with the given fields replaced (None: kept)."""
    changes = {"threshold": threshold, "hash_distance": hash_distance, "hash_threshold": hash_threshold,
               "linkage": linkage}  # fmt: skip
    base = rule or DUPLICATES
    changes = {k: v for k, v in changes.items() if v is not None}
    if "threshold" in changes:
        changes["threshold"] = float(changes["threshold"])
    return dataclasses.replace(base, **changes) if changes else base


# ------------------------------------------------------------------------------ cosine neighbours


def neighbours_above(index: Index, vectors: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query vector, the ``(ids, scores)`` of all items with similarity >= ``threshold``."""
    vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if len(index) == 0 or len(vectors) == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(vectors))]
    try:
        lims, scores, ids = index.faiss.range_search(vectors, threshold - _EPS)
    except RuntimeError:  # index types without range search: k-NN with a growing k
        return _knn_above(index, vectors, threshold)
    return [(ids[lims[i] : lims[i + 1]].astype(np.int64), scores[lims[i] : lims[i + 1]]) for i in range(len(vectors))]


def _knn_above(index: Index, vectors: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(index)
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
                out[qi] = (ids[row][keep].astype(np.int64), scores[row][keep])
        todo, k = np.array(again, dtype=np.int64), min(n, k * 4)
    return out


def similar_pairs(index: Index, threshold: float = DEFAULT_THRESHOLD, *, batch_size: int = 2048) -> Iterator:
    """Yield ``(i, j, score)`` arrays of item id pairs (``i < j``) with similarity >= ``threshold``, per batch."""
    threshold = make_rule(threshold).threshold
    all_ids = index.ids()
    total = 0
    for start in range(0, len(all_ids), batch_size):
        ids, vecs = index.vectors(all_ids[start : start + batch_size])
        rows = neighbours_above(index, vecs, threshold)
        src = np.concatenate([np.full(len(r[0]), q, np.int64) for q, r in zip(ids, rows, strict=True)] or [[]])
        dst = np.concatenate([r[0] for r in rows] or [[]]).astype(np.int64)
        sc = np.concatenate([r[1] for r in rows] or [[]]).astype(np.float32)
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


def phashes(index: Index, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The perceptual hashes of items as ``(values int64, known bool)``: stored in the index when it has them
    (``Index.phashes``), otherwise computed from the files (logged; unreadable files: unknown)."""
    ids = [int(i) for i in ids]
    stored = index.phashes(ids) if hasattr(index, "phashes") else [None] * len(ids)
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


def _hashes_from_files(index: Index, ids: list[int]) -> list[int | None]:
    items = {it.id: it for it in index.items(ids)}

    def one(i: int) -> int | None:
        it = items.get(i)
        if it is None:
            return None
        try:
            return phash(load_image(it.abspath, draft_size=512))  # as the default embedder decodes
        except ImageError:
            return None

    if len(ids) < 8:
        return [one(i) for i in ids]
    with ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="simsearch-phash") as pool:
        return list(pool.map(one, ids))


def pair_hash_distances(index: Index, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Hash distances between ``rows[i]`` and each ``found[i, j]`` (an ``(n, m)`` id array as a k-NN search
    returns it, -1 for none): an int array of the same shape, :data:`~simsearch.phash.NO_HASH` where unknown."""
    rows = np.asarray(rows, dtype=np.int64)
    found = np.asarray(found, dtype=np.int64)
    uniq = np.unique(np.concatenate([rows, found[found >= 0]]))
    values, known = phashes(index, uniq)
    pos_r = np.searchsorted(uniq, rows)
    pos_f = np.searchsorted(uniq, np.maximum(found, uniq[0] if len(uniq) else 0))
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
    got, vecs = index.vectors(uniq)
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


# ------------------------------------------------------------------------------ the representative


def originality(index: Index, items: Sequence[Item]) -> dict[int, tuple]:
    """Sort key per item id, larger = more original-looking: (pixel count, colour, older, file size, lower id)."""

    def key(it: Item) -> tuple:
        pixels, colour = image_facts(it.abspath)
        return (pixels, colour, -it.mtime_ns, it.size, -it.id)

    if len(items) < 8:
        return {it.id: key(it) for it in items}
    with ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="simsearch-facts") as pool:
        return dict(zip((it.id for it in items), pool.map(key, items), strict=True))


def image_facts(path) -> tuple[int, bool]:
    """``(pixel count, colour)`` of an image file: the size from its header, colour from a small decode
    (mean channel spread above :data:`COLOUR_CHROMA`). ``(0, False)`` when it cannot be read."""
    try:
        with Image.open(path) as im:
            pixels = int(im.width) * int(im.height)
            if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                return pixels, False
        small = load_image(path, draft_size=64)
        small.thumbnail((64, 64))
        arr = np.asarray(small, dtype=np.int16)
        return pixels, bool((arr.max(axis=2) - arr.min(axis=2)).mean() > COLOUR_CHROMA)
    except (OSError, ImageError, ValueError, Image.DecompressionBombError):
        return 0, False


# ------------------------------------------------------------------------------ groups


def _adjacency(links: _Links) -> dict[int, dict[int, int]]:
    adj: dict[int, dict[int, int]] = {}
    for n, (a, b) in enumerate(zip(links.a.tolist(), links.b.tolist(), strict=True)):
        adj.setdefault(a, {})[b] = n
        adj.setdefault(b, {})[a] = n
    return adj


def group_links(adj: dict[int, dict[int, int]], scores: np.ndarray, rank: dict[int, tuple], linkage: str):
    """Partition linked items into groups: ``[(members with the representative first, link numbers holding the
    group together)]``. ``adj[i][j]`` is the number of the link between i and j, ``scores`` their cosines,
    ``rank`` the :func:`originality` key of each item."""
    order = sorted(adj, key=lambda i: rank[i], reverse=True)
    out = []
    if linkage == "single":
        seen: set[int] = set()
        for start in order:  # the first item met of each component is its most original one
            if start in seen:
                continue
            comp, stack = [start], [start]
            seen.add(start)
            while stack:
                for j in adj[stack.pop()]:
                    if j not in seen:
                        seen.add(j)
                        comp.append(j)
                        stack.append(j)
            out.append((comp, _spanning_links(comp, adj, scores)))
        return out
    assigned: set[int] = set()
    for rep in order:
        if rep in assigned:
            continue
        free = sorted((j for j in adj[rep] if j not in assigned), key=lambda j: -scores[adj[rep][j]])
        members = [rep]
        for j in free:
            if linkage == "star" or all(j in adj[m] for m in members[1:]):
                members.append(j)
        if len(members) < 2:
            continue
        assigned.update(members)
        if linkage == "star":
            held = [adj[rep][j] for j in members[1:]]
        else:
            held = [adj[x][y] for n, x in enumerate(members) for y in members[n + 1 :]]
        out.append((members, held))
    return out


def _spanning_links(comp: list[int], adj: dict[int, dict[int, int]], scores: np.ndarray) -> list[int]:
    """The links of a maximum spanning tree (by cosine) of a connected component (Kruskal)."""
    edges = sorted({adj[i][j] for i in comp for j in adj[i]}, key=lambda n: -scores[n])
    ends = {adj[i][j]: (i, j) for i in comp for j in adj[i]}
    parent = {i: i for i in comp}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tree = []
    for n in edges:
        ra, rb = (find(x) for x in ends[n])
        if ra != rb:
            parent[ra] = rb
            tree.append(n)
    return tree


def _make_group(index: Index, members: list[int], held: list[int], links: _Links, rule: DuplicateRule,
                adj: dict[int, dict[int, int]]) -> DuplicateGroup:  # fmt: skip
    by_id = {it.id: it for it in index.items(members)}
    items = [by_id[i] for i in members if i in by_id]
    rep = items[0].id
    _, vecs = index.vectors([it.id for it in items])
    sims = (vecs @ vecs[0]).astype(float)
    scores, hds, reasons = [], [], []
    for it, s in zip(items, sims, strict=True):
        n = adj.get(rep, {}).get(it.id)
        if n is not None:  # the pair's own figures: exactly what the rule saw
            s, hd = float(links.score[n]), int(links.hd[n])
        else:  # the representative itself, or a member linked through others (single linkage)
            hd = int(_hash_distance_of(links.hashes, np.array([rep]), np.array([it.id]))[0])
        scores.append(min(1.0, float(s)))
        hds.append(hd if hd >= 0 else None)
        reasons.append(None if it.id == rep else duplicate_reason(float(s) + _EPS, hd, rule))
    order = [0, *sorted(range(1, len(items)), key=lambda i: (-scores[i], items[i].id))]
    weakest = links.link(min(held, key=lambda n: links.score[n]), rule) if held else None
    return DuplicateGroup(
        items=[items[i] for i in order],
        scores=[scores[i] for i in order],
        hash_distances=[hds[i] for i in order],
        reasons=[reasons[i] for i in order],
        weakest=weakest,
        linkage=rule.linkage,
    )


def find_duplicates(
    index: Index,
    threshold: float | None = None,
    *,
    rule: DuplicateRule | None = None,
    hash_distance: int | None = None,
    hash_threshold: float | None = None,
    linkage: str | None = None,
    min_size: int = 2,
    batch_size: int = 2048,
) -> list[DuplicateGroup]:
    """All groups of near-duplicate items under the rule (default :data:`simsearch.config.DUPLICATES`, any
    field overridden by the keyword of the same name), largest first."""
    rule = make_rule(threshold, rule=rule, hash_distance=hash_distance, hash_threshold=hash_threshold,
                     linkage=linkage)  # fmt: skip
    links = _all_links(index, rule, batch_size)
    adj = _adjacency(links)
    rank = originality(index, index.items(sorted(adj)))
    groups = [
        _make_group(index, members, held, links, rule, adj)
        for members, held in group_links(adj, links.score, rank, rule.linkage)
        if len(members) >= max(2, min_size)
    ]
    groups.sort(key=lambda g: (-g.size, -min(g.scores), g.representative.id))
    return groups


def duplicates_of(
    index: Index,
    item_id: int,
    threshold: float | None = None,
    *,
    rule: DuplicateRule | None = None,
    hash_distance: int | None = None,
    hash_threshold: float | None = None,
    max_size: int = 10_000,
) -> DuplicateGroup:
    """``item_id`` and its near-duplicates (every item within the rule of it: a star around it), with
    ``item_id`` first and the figures relative to it. A group of one means the item has none."""
    rule = make_rule(threshold, rule=rule, hash_distance=hash_distance, hash_threshold=hash_threshold)
    item_id = int(item_id)
    if not index.has_id(item_id):
        raise KeyError(item_id)
    _, vec = index.vectors([item_id])
    ids, scores = neighbours_above(index, vec, rule.threshold)[0]
    found = {int(i): float(s) for i, s in zip(ids, scores, strict=True) if int(i) != item_id}
    hashes: dict[int, int] = {}
    if rule.uses_hash:
        cand = _hash_candidates(index, item_id, vec, rule, hashes)
        hs = _pair_scores(index, np.full(len(cand), item_id, np.int64), cand)
        for j, s in zip(cand.tolist(), hs.tolist(), strict=True):
            if j != item_id and s >= rule.hash_threshold - _EPS:
                found.setdefault(j, s)
    others = sorted(found, key=lambda j: (-found[j], j))[: max(0, max_size - 1)]
    a = np.full(len(others), item_id, np.int64)
    b = np.array(others, dtype=np.int64)
    sc = np.array([found[j] for j in others], dtype=np.float32)
    links = _Links(a, b, sc, _hash_distance_of(hashes, a, b), hashes)
    adj = _adjacency(links)
    return _make_group(index, [item_id, *others], list(range(len(others))), links, rule, adj)


def _hash_candidates(index: Index, item_id: int, vec: np.ndarray, rule: DuplicateRule, hashes: dict) -> np.ndarray:
    """Ids whose hash is within ``rule.hash_distance`` of the item's; fills ``hashes`` (id -> hash) for them.

    With hashes stored in the index all items are compared; for an index without them only the item's nearest
    neighbours with cosine >= ``rule.hash_threshold`` (at most 256) are hashed from their files."""
    stored = hasattr(index, "phashes") and index.phashes([item_id])[0] is not None
    if stored:
        cand = index.ids()
    else:
        k = min(len(index), 256)
        scores, ids = index.faiss.search(np.ascontiguousarray(vec, dtype=np.float32), k)
        cand = ids[0][(ids[0] >= 0) & (scores[0] >= rule.hash_threshold - _EPS)].astype(np.int64)
        cand = np.union1d(cand, [item_id])
    values, known = phashes(index, cand)
    mine = {int(i): int(v) for i, v, k in zip(cand, values, known, strict=True) if k}
    if item_id not in mine:
        return np.zeros(0, np.int64)
    x = values.view(np.uint64) ^ np.uint64(mine[item_id] & ((1 << 64) - 1))
    d = np.minimum(np.bitwise_count(x), np.bitwise_count(x ^ np.uint64(MIRROR_MASK)))
    near = known & (d <= rule.hash_distance)
    hashes.update({int(i): mine[int(i)] for i in cand[near]})
    return cand[near & (cand != item_id)]


def links_among(index: Index, ids: Sequence[int], rule: DuplicateRule | None = None) -> list[Link]:
    """Every near-duplicate pair among ``ids`` (e.g. one page of results, to collapse): all pairs compared."""
    rule = rule or DUPLICATES
    ids = np.unique(np.asarray(list(ids), dtype=np.int64))
    if len(ids) < 2:
        return []
    got, vecs = index.vectors(ids)
    sims = vecs @ vecs.T
    if rule.uses_hash:
        values, known = phashes(index, got)
        x = values.view(np.uint64)[:, None] ^ values.view(np.uint64)[None, :]
        hd = np.minimum(np.bitwise_count(x), np.bitwise_count(x ^ np.uint64(MIRROR_MASK))).astype(np.int64)
        hd[~(known[:, None] & known[None, :])] = NO_HASH
    else:
        hd = np.full(sims.shape, NO_HASH, dtype=np.int64)
    out = []
    for i, j in zip(*np.triu_indices(len(got), 1), strict=True):
        reason = duplicate_reason(float(sims[i, j]), int(hd[i, j]), rule)
        if reason:
            h = int(hd[i, j])
            out.append(Link(int(got[i]), int(got[j]), float(min(1.0, sims[i, j])), h if h >= 0 else None, reason))
    return out
