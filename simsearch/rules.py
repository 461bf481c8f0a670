"""Business rules on ranked results: diversity per attribute value and near-duplicate collapsing (layer: query).

:class:`Rules` is what a caller asks for; :func:`apply_rules` walks the ranked ``(item, score, photo)`` rows of a
search, best first, and keeps those the rules allow until ``k`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .config import DUPLICATES
from .phash import NO_HASH, duplicate_mask, pair_distances
from .store import Snapshot
from .store.live import LiveState


@dataclass(frozen=True)
class Rules:
    """Business rules applied to the ranked items; each keeps returning k results while enough items match.

    ``max_per``: at most N results per value of an attribute (diversity), e.g. ``{"brand": 2}``.
    ``collapse_duplicates``: one result per group of near-duplicates: cosine at least this threshold, or a close
    perceptual hash with the lower cosine bar of :data:`simsearch.config.DUPLICATES` (the duplicates pair rule).
    ``fields``: the attributes each hit carries (None: all).
    """

    max_per: dict = field(default_factory=dict)
    collapse_duplicates: float | None = None
    fields: tuple[str, ...] | None = None


NO_RULES = Rules()


def apply_rules(snap: Snapshot, live: LiveState, ranked: list, rules: Rules, k: int) -> list[tuple[int, float, int]]:
    """The ranked ``(item, score, photo)`` rows that the rules keep, at most ``k``, in order."""
    if not rules.max_per and rules.collapse_duplicates is None:
        return ranked
    counts: dict[tuple[str, object], int] = {}
    attrs: dict[int, dict] = {}
    if rules.max_per:
        attrs = {it.id: it.attributes for it in snap.items([r[0] for r in ranked if r[0] not in live.by_id])}
        attrs.update({r[0]: live.by_id[r[0]].attributes for r in ranked if r[0] in live.by_id})
    kept: list[tuple[int, float, int]] = []
    kept_vecs: list[np.ndarray] = []
    kept_hashes: list[int | None] = []
    dup_rule = DUPLICATES
    hashes: dict[int, int] = {}
    if rules.collapse_duplicates is not None:
        dup_rule = replace(DUPLICATES, threshold=float(rules.collapse_duplicates))
        hashes = _photo_hashes(snap, ranked) if dup_rule.uses_hash else {}
    for item, score, photo in ranked:
        values = [(f, _hashable(attrs.get(item, {}).get(f))) for f in rules.max_per]
        if any(counts.get(v, 0) >= int(rules.max_per[v[0]]) for v in values):
            continue
        if rules.collapse_duplicates is not None:
            v = _photo_vector(snap, live, item, photo)
            h = hashes.get(photo)
            if kept_vecs and duplicate_mask(np.vstack(kept_vecs) @ v, _hash_distances(kept_hashes, h), dup_rule).any():
                continue
            kept_vecs.append(v)
            kept_hashes.append(h)
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        kept.append((item, score, photo))
        if len(kept) >= k:
            break
    return kept


def _photo_hashes(snap: Snapshot, ranked: list) -> dict[int, int]:
    """``{photo id: perceptual hash}`` of the ranked results' photos (those indexed with one)."""
    items = snap.items(sorted({int(r[0]) for r in ranked}))
    return {p.id: p.phash for it in items for p in it.photos if p.phash is not None}


def _hash_distances(kept: list[int | None], h: int | None) -> np.ndarray:
    known = np.array([k is not None for k in kept], dtype=bool)
    if h is None:
        return np.full(len(kept), NO_HASH, dtype=np.int64)
    d = pair_distances(np.array([k if k is not None else 0 for k in kept], dtype=np.int64), np.array(h, dtype=np.int64))
    return np.where(known, d, NO_HASH)


def _photo_vector(snap: Snapshot, live: LiveState, item: int, photo: int) -> np.ndarray:
    row = live.row_of_photo.get(int(photo))
    if row is not None and live.matrix is not None and int(item) in live.by_id:
        return live.matrix[row]
    return np.asarray(snap.faiss.reconstruct(int(photo)), dtype=np.float32)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value
