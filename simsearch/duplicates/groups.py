"""Near-duplicate groups: the representative (the most original-looking member), star/complete/single linkage,
the weakest link, and the public entry points. See :mod:`simsearch.duplicates`."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..config import DUPLICATES, DuplicateRule
from ..errors import ImageError
from ..images import load_image
from ..phash import MIRROR_MASK, NO_HASH, duplicate_reason
from ..system import cpu_count
from .pairs import (
    _EPS,
    Ids,
    Link,
    _all_links,
    _best_per_item,
    _hash_distance_of,
    _Links,
    _pair_scores,
    make_rule,
    neighbours_above,
    phashes,
    phashes_stored,
)

if TYPE_CHECKING:
    from ..index import Index
    from ..store import Item

COLOUR_CHROMA = 4.0  # mean max-min channel spread (0-255) above which an image counts as colour


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
    stored = phashes_stored(index, [item_id])[0] is not None
    if stored:
        cand = index.ids()
    else:
        k = min(int(index.faiss.ntotal), 256)
        scores, ids = index.faiss.search(np.ascontiguousarray(vec, dtype=np.float32), k)
        near = (ids[0] >= 0) & (scores[0] >= rule.hash_threshold - _EPS)
        cand = np.union1d(_best_per_item(index, ids[0][near], scores[0][near])[0], [item_id])
    values, known = phashes(index, cand)
    mine = {int(i): int(v) for i, v, k in zip(cand, values, known, strict=True) if k}
    if item_id not in mine:
        return np.zeros(0, np.int64)
    x = values.view(np.uint64) ^ np.uint64(mine[item_id] & ((1 << 64) - 1))
    d = np.minimum(np.bitwise_count(x), np.bitwise_count(x ^ np.uint64(MIRROR_MASK)))
    near = known & (d <= rule.hash_distance)
    hashes.update({int(i): mine[int(i)] for i in cand[near]})
    return cand[near & (cand != item_id)]


def links_among(index: Index, ids: Ids, rule: DuplicateRule | None = None) -> list[Link]:
    """Every near-duplicate pair among ``ids`` (e.g. one page of results, to collapse): all pairs compared."""
    rule = rule or DUPLICATES
    ids = np.unique(np.asarray(list(ids), dtype=np.int64))
    if len(ids) < 2:
        return []
    got, vecs = index.vectors(ids.tolist())
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
