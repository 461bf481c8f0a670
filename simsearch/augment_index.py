"""Augmenting a generation as it is written: the glue between :mod:`simsearch.augment` and the store (layer: build).

At the end of an ``index`` run (and of ``compact`` and ``rebuild``) the writer's raw vectors are augmented: from
scratch the first time (neighbour graph of every photo, exact for flat indexes, the index's own ANN search
otherwise), incrementally afterwards (:func:`simsearch.augment.update` from the previous generation's graph and
augmented vectors). The manifest's ``extra["augment"]`` records the spec asked for, the ``k`` chosen and how the
vectors were made; the augmented vectors go in ``augmented-<gen>.faiss`` beside ``vectors-<gen>.faiss`` (same ids,
same kind of FAISS index) and the graph in ``graph-<gen>.npz``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import augment as aug
from .config.augment import AugmentSpec
from .faissops import all_vectors, faiss_module, is_exact_flat, remove_ids
from .store import GenerationWriter, Manifest, load_augmented, new_faiss_index

log = logging.getLogger("simsearch")

RESOLVE_AGAIN = 2.0  # k = auto is chosen again once the collection is this many times larger or smaller


@dataclass(frozen=True)
class AugmentBase:
    """A generation's augmented state, read when a writer opens it (the files may be gone by the final commit)."""

    index: object  # FAISS index of the augmented vectors
    graph: aug.KnnGraph
    record: dict


def recorded_spec(m: Manifest | None) -> AugmentSpec:
    """The spec an index was built with (an index made before augmentation existed: none)."""
    rec = m.augment_record if m is not None else None
    return AugmentSpec.from_dict(rec.get("spec")) if rec else AugmentSpec.none()


def requested_spec(m: Manifest | None, augment: AugmentSpec | str | None) -> AugmentSpec:
    """What a run should do: ``augment`` if given (a spec or its text form), else the index's own spec, else the
    default for a new index."""
    if isinstance(augment, AugmentSpec):
        return augment
    if isinstance(augment, str):
        return AugmentSpec.parse(augment)
    return recorded_spec(m) if m is not None else AugmentSpec()


def load_base(path: Path, m: Manifest | None) -> AugmentBase | None:
    """The current generation's augmented vectors and graph, if it has them."""
    if m is None or not m.augmented:
        return None
    loaded = load_augmented(path, m, graph=True)
    if loaded is None:
        return None
    index, arrays = loaded
    return AugmentBase(index, aug.KnnGraph.from_arrays(arrays), dict(m.augment_record or {}))


def needs_augmenting(writer: GenerationWriter, spec: AugmentSpec) -> bool:
    """Whether the final commit must (re)compute augmented vectors: something changed since the last
    augmented generation (an intermediate commit publishes raw vectors only), or the spec did; with ``none``,
    whether an old record must go."""
    if not spec.enabled:
        return writer.m.augment_record is not None
    return writer.dirty or not writer.m.augmented or recorded_spec(writer.m) != spec


def augment_writer(
    writer: GenerationWriter, spec: AugmentSpec, base: AugmentBase | None, *, progress: bool = False
) -> dict | None:
    """Compute the augmented vectors of everything the writer holds and hand them to it for the next commit.

    Returns the record written to the manifest (None with method ``none``, which also drops an old record).
    """
    if not spec.enabled:
        if writer.m.augment_record is not None:
            extra = {k: v for k, v in writer.m.extra.items() if k != "augment"}
            writer.update_manifest(extra=extra)
        return None
    t0 = time.perf_counter()
    writer.flush_training(final=True)
    ids, vectors = all_vectors(writer.faiss)
    vectors = np.ascontiguousarray(vectors, np.float32)
    exact = is_exact_flat(writer.faiss)
    search = aug.exact_search(vectors, ids) if exact else aug.index_search(writer.faiss)
    usable = base is not None and AugmentSpec.from_dict(base.record.get("spec")) == spec
    resolved = None
    if usable and base is not None:
        resolved = spec if spec.k != "auto" else spec.resolved(int(base.record.get("k", 0)) or 1)
        grown = len(ids) / max(1, int(base.record.get("resolved_for", len(ids))))
        if spec.k == "auto" and not 1 / RESOLVE_AGAIN <= grown <= RESOLVE_AGAIN:
            usable = False  # the collection changed size a lot: choose k again (below), from scratch
        elif base.graph.width < spec.max_k:
            usable = False
    if usable and base is not None and resolved is not None:
        upd = aug.update(base.graph, vectors, ids, resolved, search=search, exact=exact)
        index = _patched(base.index, writer.faiss, upd)
        graph, mode = upd.graph, "incremental"
        recomputed, relisted = len(upd.ids), upd.relisted
        resolved_for = int(base.record.get("resolved_for", len(ids)))
    else:
        graph = aug.knn_graph(vectors, ids, spec.max_k, search=search)
        resolved = aug.resolve_k(vectors, graph, spec)
        augmented = aug.propagate(vectors, graph, resolved, np.arange(len(ids)))
        index = _like(writer.faiss, writer.m.dim, writer.m.index_factory, ids, augmented)
        mode, recomputed, relisted, resolved_for = "full", len(ids), len(ids), len(ids)
    seconds = round(time.perf_counter() - t0, 3)
    record = {
        "spec": spec.to_dict(),
        "k": int(aug.spec_k(resolved)),
        "graph": "exact" if exact else "approximate (the index's own search)",
        "mode": mode,
        "recomputed": int(recomputed),
        "relisted": int(relisted),
        "resolved_for": int(resolved_for),
        "seconds": seconds,
    }
    writer.set_augmented(index, graph.to_arrays(), record)
    log.info("augmented %d vectors (%s, k=%d) in %.1f s", recomputed, mode, record["k"], seconds)
    return record


def _like(raw_index, dim: int, factory: str, ids: np.ndarray, vectors: np.ndarray):
    """A FAISS index of the same kind as ``raw_index`` (trained the same way) holding ``vectors``."""
    faiss = faiss_module()
    if is_exact_flat(raw_index):
        index, _ = new_faiss_index(dim, factory)
    else:
        index = faiss.clone_index(raw_index)  # keeps training and search parameters
        index.reset()
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    return index


def _patched(base_index, raw_index, upd: aug.Update):
    """The previous augmented index with removed and recomputed ids replaced (rebuilt if its kind changed)."""
    faiss = faiss_module()
    drop = np.union1d(upd.removed, upd.ids)

    def rebuilt():
        keep_ids, keep_vecs = all_vectors(base_index)
        mask = ~np.isin(keep_ids, drop)
        ids = np.concatenate([keep_ids[mask], upd.ids])
        vecs = np.vstack([np.asarray(keep_vecs)[mask], upd.vectors])
        return _like(raw_index, raw_index.d, "IDMap2,Flat", ids, vecs)

    same_kind = type(faiss.downcast_index(base_index)) is type(faiss.downcast_index(raw_index))
    if not same_kind or is_exact_flat(base_index) != is_exact_flat(raw_index):
        return rebuilt()
    if len(drop) and not remove_ids(base_index, drop):
        try:
            base_index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(np.ascontiguousarray(drop))))
        except RuntimeError:  # index types that cannot remove (HNSW): built again from the kept vectors
            return rebuilt()
    if len(upd.ids):
        base_index.add_with_ids(np.ascontiguousarray(upd.vectors, np.float32), upd.ids)
    return base_index
