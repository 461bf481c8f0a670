"""From a ranking to results: each item once at its best photo, then :class:`Hit` objects that describe the items.

A ranking is a list of ``(item id, score, photo id)``, best first, as FAISS rows become after
:func:`first_per_item`; :func:`hits_of` reads the items (from the snapshot's memory when read before, live
writes from the live state) and names the photo that matched.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .store import Item, Snapshot
from .store.live import LiveItem, LiveState


@dataclass(frozen=True)
class Hit:
    """One search result: an item."""

    rank: int
    id: int
    score: float
    path: str  # of the photo that matched best, relative to its root
    label: str | None
    abspath: str
    key: str = ""
    attributes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def first_per_item(snap: Snapshot, scores, pids, allowed_photos, skip: set[int]) -> list[tuple[int, float, int]]:
    """Merge the rows of a multi-vector query and keep each item's best photo, best first."""
    s, p = np.asarray(scores), np.asarray(pids)
    sorted_row = s.ndim == 2 and len(s) == 1  # FAISS gives each row best first: one row needs no merge
    s, p = s.ravel(), p.ravel()
    ok = p >= 0
    if allowed_photos is not None:
        ok &= np.isin(p, allowed_photos)
    if not ok.all():
        s, p = s[ok], p[ok]
    if not sorted_row:
        order = np.argsort(-s, kind="stable")
        s, p = s[order], p[order]
    return best_per_item(s.tolist(), p.tolist(), snap.items_of(p).tolist(), skip)


def best_per_item(scores: list[float], photos: list[int], items: list[int], skip: set[int]) -> list[tuple]:
    """(item, score, photo) of the first photo of each item in a ranking (best first), leaving out unknown
    photos (item -1) and ``skip``. Equal scores go to the lower item id (then photo id), as in the live segment
    (FAISS returns ties in no particular order)."""
    if any(a == b for a, b in itertools.pairwise(scores)):
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], items[i], photos[i]))
        scores, photos, items = [scores[i] for i in order], [photos[i] for i in order], [items[i] for i in order]
    out, seen = [], set(skip)
    for item, score, photo in zip(items, scores, photos, strict=True):
        if item >= 0 and item not in seen:
            seen.add(item)
            out.append((item, score, photo))
    return out


def _new_hit(
    rank: int, item_id: int, score: float, path: str, label: str | None, abspath: str, key: str, attributes: dict
) -> Hit:
    """``Hit(rank=..., ...)`` with every field given, without the frozen dataclass's eight ``object.__setattr__``
    calls (they were a third of the time a service spends turning a search into hits): the same object."""
    hit = object.__new__(Hit)
    hit.__dict__.update(
        rank=rank, id=item_id, score=score, path=path, label=label, abspath=abspath, key=key, attributes=attributes
    )
    return hit


def stored_items(snap: Snapshot, live: LiveState, ids: list[int]) -> dict[int, Item]:
    """The generation's items among ``ids`` (live ones are read from the live state)."""
    return {it.id: it for it in snap.items([i for i in ids if i not in live.by_id])}


def hits_of(
    snap: Snapshot, live: LiveState, ranked: list, fields: tuple[str, ...] | None, stored: dict | None = None
) -> list[Hit]:
    """Hits of a ranking; ``stored``: the generation's items, when read already (for a batch of rankings)."""
    live_by_id: dict[int, LiveItem] = live.by_id
    if stored is None:
        stored = stored_items(snap, live, [r[0] for r in ranked])
    out: list[Hit] = []
    for item_id, score, photo_id in ranked:
        if item_id in live_by_id:
            li = live_by_id[item_id]
            photo = li.photos[list(li.photo_ids).index(photo_id)] if photo_id in li.photo_ids else li.photos[0]
            key, attributes, path, abspath = li.key, li.attributes, Path(photo).name, photo
        elif item_id in stored:
            it = stored[item_id]
            paths = it.photo_paths
            path, abspath = paths.get(photo_id) or next(iter(paths.values()), ("", ""))
            key, attributes = it.key, it.attributes
        else:
            continue
        label = attributes.get("label")
        out.append(
            _new_hit(
                len(out) + 1,
                item_id,
                round(float(score), 6),
                path,
                None if label is None else str(label),
                abspath,
                key,
                dict(attributes) if fields is None else {f: attributes.get(f) for f in fields},
            )
        )
    return out
