"""Near-duplicates: groups of items connected by cosine similarity >= a threshold.

Edges come from FAISS range searches (every item's neighbours within the threshold, in batches), or from
k-NN searches with a growing ``k`` for index types without range search; groups are the connected
components (union-find). There is no all-pairs loop, so this scales like the index's own search.

    groups = find_duplicates(index, threshold=0.9)     # largest groups first
    group = duplicates_of(index, item_id, threshold=0.9)

The default threshold, 0.90 for the bundled EfficientNet-Lite0, comes from measured similarities:

- copies of the 35 bundled sample photos (480 px) vs their originals, lowest of each kind: JPEG re-encoded at
  quality 75: 0.92; resized to 75%: 0.97; centre crop keeping 95% of each side: 0.93; mirrored: 0.94
  (harsher copies score lower: quality 50: 0.86, a crop keeping 90%: 0.86-0.88); distinct sample photos:
  at most 0.77 (tests/test_duplicates.py re-measures all this);
- Caltech-101 (9,145 photos): at 0.90 no group mixes two classes (except Faces with Faces_easy, which are
  crops of the same photos) and the groups are bursts of one scene; at 0.85 chains of merely similar photos
  (side views of aeroplanes) merge into a group of 500+, as connected components do when the threshold is
  too low. Use 0.95 for only the closest copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import SimsearchError

if TYPE_CHECKING:
    from .index import Index, Item

DEFAULT_THRESHOLD = 0.90
MAX_PAIRS = 20_000_000  # refuse thresholds so low that the "duplicates" are most of the catalogue
_EPS = 1e-6  # FAISS range search keeps similarities strictly above the radius: make the threshold inclusive


@dataclass
class DuplicateGroup:
    """Items connected by similarity >= threshold. ``items[0]`` is the representative (the largest file,
    usually the original: copies tend to be re-encoded, resized or cropped), ``scores[i]`` the similarity of
    ``items[i]`` to it."""

    items: list[Item]
    scores: list[float]

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
            "min_score": round(min(self.scores), 6),
            "items": [
                {"id": it.id, "path": it.path, "label": it.label, "score": round(s, 6), "bytes": it.size}
                for it, s in zip(self.items, self.scores, strict=True)
            ],
        }


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise SimsearchError(f"the duplicate threshold must be in (0, 1], not {threshold}")
    return t


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
    threshold = _check_threshold(threshold)
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
        if total > MAX_PAIRS:
            raise SimsearchError(
                f"more than {MAX_PAIRS:,} pairs have similarity >= {threshold}: that is not near-duplicates; "
                "raise the threshold"
            )
        yield src[keep], dst[keep], sc[keep]


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        self.parent.setdefault(ra, ra)
        self.parent.setdefault(rb, rb)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return out


def find_duplicates(
    index: Index, threshold: float = DEFAULT_THRESHOLD, *, min_size: int = 2, batch_size: int = 2048
) -> list[DuplicateGroup]:
    """All groups of near-duplicate items (connected by similarity >= ``threshold``), largest first."""
    uf = _UnionFind()
    for src, dst, _ in similar_pairs(index, threshold, batch_size=batch_size):
        for a, b in zip(src.tolist(), dst.tolist()):
            uf.union(a, b)
    groups = [_make_group(index, members) for members in uf.groups().values() if len(members) >= max(2, min_size)]
    groups.sort(key=lambda g: (-g.size, -min(g.scores), g.representative.id))
    return groups


def duplicates_of(
    index: Index, item_id: int, threshold: float = DEFAULT_THRESHOLD, *, max_size: int = 10_000
) -> DuplicateGroup:
    """The group of ``item_id`` (as :func:`find_duplicates` would find it), with ``item_id`` first and
    scores relative to it. A group of one means the item has no near-duplicates."""
    threshold = _check_threshold(threshold)
    if not index.has_id(item_id):
        raise KeyError(item_id)
    seen = {int(item_id)}
    frontier = [int(item_id)]
    while frontier and len(seen) < max_size:  # breadth-first over range searches
        _, vecs = index.vectors(frontier)
        frontier = []
        for ids, _ in neighbours_above(index, vecs, threshold):
            for j in ids.tolist():
                if j not in seen and len(seen) < max_size:
                    seen.add(j)
                    frontier.append(j)
    return _make_group(index, sorted(seen), first=int(item_id))


def _make_group(index: Index, members: list[int], first: int | None = None) -> DuplicateGroup:
    items = index.items(sorted(members))
    if first is None:  # the largest file (ties: lowest id) represents the group
        first = max(items, key=lambda it: (it.size, -it.id)).id
    _, vecs = index.vectors([it.id for it in items])
    ref = vecs[[it.id for it in items].index(first)]
    sims = (vecs @ ref).astype(float)
    order = sorted(range(len(items)), key=lambda i: (items[i].id != first, -sims[i], items[i].id))
    return DuplicateGroup(items=[items[i] for i in order], scores=[min(1.0, float(sims[i])) for i in order])
