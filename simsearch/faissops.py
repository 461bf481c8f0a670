"""Operations on FAISS index objects that FAISS lacks or hides (pure functions; no simsearch state).

Every simsearch index is an ``IndexIDMap2`` (ids are photo ids) over a factory string
(:func:`simsearch.store.new_faiss_index`). FAISS cannot remove ids from an ``IDMap2`` over an IVF correctly (the inner ids are not renumbered):
:func:`remove_ids` does. Search parameters are set with ``faiss.ParameterSpace`` and IVF stages are found with
``faiss.try_extract_index_ivf``; the few stages FAISS has no accessor for (refine, HNSW) are found by following
the wrapped indexes (:func:`stages`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLAT_FACTORY = "IDMap2,Flat"  # the default index, and what an `auto` index holds until it is chosen
FAISS_PARAMS = {"nprobe": "nprobe", "k_factor": "k_factor_rf", "efSearch": "efSearch"}  # record key → ParameterSpace


def faiss_module() -> Any:
    """The ``faiss`` module, imported on first use (an index's reader may never need it), typed loosely: its
    SWIG objects are downcast at run time."""
    import faiss

    return faiss


def stages(index: Any) -> list[Any]:
    """The index and the indexes it wraps (IDMap → Refine / PreTransform → ...), each downcast."""
    faiss = faiss_module()

    out = [faiss.downcast_index(index)]
    while len(out) < 8:
        inner = getattr(out[-1], "base_index", None) or getattr(out[-1], "index", None)
        if inner is None:
            break
        out.append(faiss.downcast_index(inner))
    return out


def find_stage(index: Any, cls: type) -> Any:
    return next((node for node in stages(index) if isinstance(node, cls)), None)


def search_params(index: Any) -> dict[str, float]:
    """The index's current search parameters (nprobe, k_factor, efSearch: those that apply)."""
    faiss = faiss_module()

    out: dict[str, float] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
    refine = find_stage(index, faiss.IndexRefine)
    if refine is not None:
        out["k_factor"] = float(refine.k_factor)
    hnsw = find_stage(index, faiss.IndexHNSW)
    if hnsw is not None:
        out["efSearch"] = int(hnsw.hnsw.efSearch)
    return out


def set_search_params(index: Any, params: dict[str, float]) -> None:
    """Set nprobe / k_factor / efSearch with ``faiss.ParameterSpace`` wherever they apply (others are ignored)."""
    faiss = faiss_module()

    space = faiss.ParameterSpace()
    for key, value in params.items():
        if key in FAISS_PARAMS:
            try:
                space.set_index_parameter(index, FAISS_PARAMS[key], float(value))
            except RuntimeError:  # "could not set parameter": not a parameter of this index
                continue


def no_polysemous(index: Any) -> None:
    """Turn off FAISS's polysemous training of PQ codes (slow, and only useful for Hamming filtering, unused here)."""
    faiss = faiss_module()

    nodes = stages(index)
    refine = find_stage(index, faiss.IndexRefine)
    if refine is not None:
        nodes.append(faiss.downcast_index(refine.refine_index))
    for node in nodes:
        if isinstance(node, (faiss.IndexIVFPQ, faiss.IndexPQ)):
            node.do_polysemous_training = False


def prepare(index: Any) -> None:
    """Give an IVF index a direct map so items can be reconstructed (query by id, export)."""
    faiss = faiss_module()

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.Array)


def remove_ids(index: Any, ids: np.ndarray) -> bool:
    """Remove external ``ids`` from an IDMap2 over an IVF (possibly behind a transform or a refine stage).

    The inner ids are renumbered to stay 0..n-1, as IDMap2 requires. Returns False for other index types
    (the caller then uses FAISS's own ``remove_ids``).
    """
    faiss = faiss_module()

    idmap = faiss.downcast_index(index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not isinstance(idmap, faiss.IndexIDMap2):
        return False
    id_map = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    drop = np.flatnonzero(np.isin(id_map, np.asarray(ids, dtype=np.int64)))
    if len(drop) == 0:
        return True
    dm_type = ivf.direct_map.type
    if dm_type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    ivf.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))
    invlists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if not size:
            continue
        view = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
        view -= np.searchsorted(drop, view)  # inner ids above removed ones move down
    if dm_type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(dm_type)
    for node in stages(index)[1:]:  # the stages between the id map and the IVF count vectors too
        if isinstance(node, faiss.IndexRefine):
            node.refine_index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))
        if isinstance(node, (faiss.IndexRefine, faiss.IndexPreTransform)):
            node.ntotal = ivf.ntotal
    keep = np.ones(len(id_map), dtype=bool)
    keep[drop] = False
    faiss.copy_array_to_vector(np.ascontiguousarray(id_map[keep]), idmap.id_map)
    idmap.ntotal = int(keep.sum())
    idmap.construct_rev_map()
    return True


def is_exact_storage(index: Any) -> bool:
    """Whether the index reconstructs the original vectors exactly (flat codes or an exact refine stage)."""
    faiss = faiss_module()

    refine = find_stage(index, faiss.IndexRefine)
    if refine is not None:
        return isinstance(faiss.downcast_index(refine.refine_index), faiss.IndexFlat)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return (
            isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
            and find_stage(index, faiss.IndexPreTransform) is None
        )
    hnsw = find_stage(index, faiss.IndexHNSW)
    if hnsw is not None:
        return isinstance(faiss.downcast_index(hnsw.storage), faiss.IndexFlat)
    return isinstance(stages(index)[-1], faiss.IndexFlat)


def is_exact_flat(index: Any) -> bool:
    """An IDMap2 directly over exact flat storage (what an ``auto`` index holds until it is chosen)."""
    faiss = faiss_module()

    nodes = stages(index)
    return len(nodes) == 2 and isinstance(nodes[0], faiss.IndexIDMap2) and isinstance(nodes[1], faiss.IndexFlat)


def all_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of an IDMap2 index, in insertion order (a view, not a copy, of flat storage)."""
    faiss = faiss_module()

    idmap = faiss.downcast_index(index)
    ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    inner = faiss.downcast_index(idmap.index)
    if isinstance(inner, faiss.IndexFlat):
        xb = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
        return ids, xb
    return ids, np.asarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)
