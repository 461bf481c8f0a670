"""Searching the augmented vectors of an index: the per-query switch, query expansion and the guarded merge
(layer: query; the arithmetic is :mod:`simsearch.augment`'s).

A query searches the augmented vectors when the index has them and the query does not turn them off. A new image
or vector is expanded over the augmented vectors of its nearest photos (alpha-QE); an item of the index uses its
own augmented vectors. The results are then ``[augmented top-1 for an item query] + raw top-guard + augmented
ranking`` without repeats (:func:`simsearch.augment_query.guarded_merge`). Every hit's score stays the raw cosine of
query and photo (1.0 for the same image, comparable with thresholds); the order is the augmented one, so scores
are not always decreasing.
"""

from __future__ import annotations

import numpy as np

from .augment_query import expand_query, guarded_rows, item_first
from .config.augment import AugmentSpec
from .errors import SimsearchError
from .store import Snapshot

Ranked = list[tuple[int, float, int]]  # (item id, score, best photo id), best first

AUGMENT_CHOICES = ("auto", "on", "off", "none", "dba")


def search_spec(snap: Snapshot, augment: bool | str | None) -> AugmentSpec | None:
    """The spec a query runs with, or None for raw search.

    ``augment``: None/``auto``/True/``on``/``dba`` use the index's augmentation when it has one (``on``/True/
    ``dba`` ask for it: an index without augmented vectors then says how to add them); False/``off``/``none``
    search the raw vectors (exactly what an index without augmentation returns).
    """
    if isinstance(augment, str):
        value = augment.strip().lower()
        if value not in AUGMENT_CHOICES:
            raise SimsearchError(f"augment must be one of {', '.join(AUGMENT_CHOICES)}, not {augment!r}")
        augment = None if value == "auto" else value in ("on", "dba")
    if augment is False:
        return None
    if snap.augmented is None or not snap.manifest.augmented:
        if augment is True:
            raise SimsearchError(
                f"{snap.path} has no augmented vectors: run `simsearch index ... --out {snap.path} --augment dba` "
                "(or search without --augment)"
            )
        return None
    rec = snap.manifest.augment_record or {}
    spec = AugmentSpec.from_dict(rec.get("spec"))
    return spec.resolved(int(rec.get("k", 1))) if spec.k == "auto" else spec


def augmented_vectors(snap: Snapshot, photo_ids: np.ndarray) -> np.ndarray:
    """The augmented vectors of stored photos."""
    assert snap.augmented is not None
    ids = np.ascontiguousarray(photo_ids, dtype=np.int64)
    return np.asarray(snap.augmented.reconstruct_batch(ids), dtype=np.float32)


def expand(snap: Snapshot, queries: np.ndarray, spec: AugmentSpec, found=None) -> np.ndarray:
    """New query vectors expanded over the augmented vectors of their ``k`` nearest stored photos (raw search;
    ``found``: that search's ``(sims, photo ids)`` when the caller already has at least ``k`` columns)."""
    if not spec.expand_queries or snap.faiss.ntotal == 0:
        return queries
    k = min(int(spec.k), int(snap.faiss.ntotal))
    if found is None or found[1].shape[1] < k:
        found = snap.faiss.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    sims, pids = found[0][:, :k], found[1][:, :k]
    found = pids >= 0
    vecs = np.zeros((*pids.shape, queries.shape[1]), np.float32)
    if found.any():
        vecs[found] = augmented_vectors(snap, pids[found])
    return expand_query(queries, np.where(found, sims, -np.inf), vecs, spec)


def merged(raw: Ranked, augmented: Ranked, spec: AugmentSpec, *, item_query: bool, raw_score_of) -> Ranked:
    """One ranking: [the item query's first result], the raw top ``guard``, then the augmented ranking, each entry
    with its raw score (``raw_score_of(item, photo)`` for those found in the augmented ranking)."""
    raw_score = {item: (score, photo) for item, score, photo in raw}
    head: list[tuple[int, int]] = []
    if item_query and raw and augmented:
        (r_item, r_score, r_photo), (a_item, _, a_photo) = raw[0], augmented[0]
        first = item_first(r_item, r_score, a_item, raw_score_of(a_item, a_photo), spec)
        head.append((first, a_photo if first == a_item else r_photo))
    head += [(item, photo) for item, _, photo in raw[: spec.guard]]
    out: Ranked = []
    seen: set[int] = set()
    for item, photo in [*head, *((item, photo) for item, _, photo in augmented)]:
        if item in seen:
            continue
        seen.add(item)
        score, best = raw_score.get(item, (None, photo))
        out.append((item, float(raw_score_of(item, best) if score is None else score), best))
    return out


def photo_rows(snap: Snapshot, photo_ids: np.ndarray, fetch: int, spec: AugmentSpec, *, self_exclude: bool = True):
    """Batched "more like this" for stored photos, as a FAISS search answers: ``(raw scores, ids)`` ``(n, fetch)``
    in the augmented order with the guard and the item rule (the photo itself left out with ``self_exclude``);
    -1 / -inf pad short rows. What :mod:`simsearch.neighbors` writes for an augmented index."""
    assert snap.augmented is not None
    photo_ids = np.ascontiguousarray(photo_ids, dtype=np.int64)
    raw_q = np.asarray(snap.faiss.reconstruct_batch(photo_ids), dtype=np.float32)
    aug_q = augmented_vectors(snap, photo_ids)
    n_total = int(snap.faiss.ntotal)
    extra = 1 if self_exclude else 0
    raw_s, raw_ids = snap.faiss.search(raw_q, min(n_total, spec.guard + 1 + extra))
    aug_s, aug_ids = snap.augmented.search(aug_q, min(n_total, fetch + spec.guard + 1 + extra))
    if self_exclude:
        raw_s, raw_ids = _without(raw_s, raw_ids, photo_ids)
        aug_s, aug_ids = _without(aug_s, aug_ids, photo_ids)
    first = None
    if len(aug_ids) and aug_ids.shape[1] and raw_ids.shape[1]:
        first = aug_ids[:, 0]
        if spec.item_first is None:
            first = raw_ids[:, 0]
        else:
            found = first >= 0
            a_raw = np.full(len(first), -np.inf, np.float32)
            if found.any():
                vecs = np.asarray(snap.faiss.reconstruct_batch(first[found]), np.float32)
                a_raw[found] = np.einsum("ij,ij->i", raw_q[found], vecs)
            first = np.where(raw_s[:, 0] - a_raw > spec.item_first, raw_ids[:, 0], first)
    ids = guarded_rows(raw_ids, aug_ids, spec.guard, first)[:, :fetch]
    scores = np.full(ids.shape, -np.inf, np.float32)
    ok = ids >= 0
    if ok.any():
        rows = np.nonzero(ok)[0]
        vecs = np.asarray(snap.faiss.reconstruct_batch(np.ascontiguousarray(ids[ok])), np.float32)
        scores[ok] = np.einsum("ij,ij->i", raw_q[rows], vecs)
    return scores, ids


def _without(scores: np.ndarray, ids: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row without its own id (rows keep their width: -1 / -inf at the end)."""
    drop = ids == own[:, None]
    order = np.argsort(drop, axis=1, kind="stable")
    ids = np.where(drop, -1, ids)
    scores = np.where(drop, -np.inf, scores)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
