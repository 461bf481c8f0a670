"""Automatic FAISS index choice and tuning (``--index auto``), in the spirit of autofaiss.

The choice depends on the number of vectors ``n``, their dimension and a memory budget for the finished index:

* ``n`` below :data:`FLAT_BELOW` (100k) and the vectors fit: exact search, ``Flat`` (the small-collection default);
* the float vectors fit in the budget: ``IVF{nlist},PQ{m},RFlat`` — an inverted file over product-quantised codes
  finds candidates fast, and the exact vectors kept beside them re-rank the candidates (exact scores);
* memory-lean, when they do not fit: ``IVF{nlist},PQ{m}`` with ``m``-byte codes, ``m`` as large as the budget
  allows; recall is then limited by the code size (measured and recorded, with a warning below the target).

The index is trained on a random sample, then its search parameters (``nprobe``, ``k_factor``, ``efSearch``) are
tuned on held-out queries from the collection so that recall@10 against exact search reaches the target at the
lowest measured search time. The choice, the parameters and the measured recall are recorded in the manifest
(``extra["index_auto"]``), and ``simsearch info`` shows them. Search parameters are stored in the FAISS file
itself, so an opened index searches with them.

Inverted-file indexes are wrapped in ``IDMap2`` like every simsearch index. FAISS cannot remove ids from an
``IDMap2`` over an IVF correctly (the inner ids are not renumbered), so :func:`remove_ids` does that itself.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import SimsearchError
from .progress import progress_bar
from .store import new_faiss_index

log = logging.getLogger("simsearch")

AUTO = "auto"
FLAT_BELOW = 100_000
DEFAULT_TARGET_RECALL = 0.95
RECALL_K = 10
REBUILD_GROWTH = 4.0  # `simsearch rebuild` is advised once the index holds this many times what it was trained on
ID_BYTES = 24  # per vector in an IDMap2 over an IVF: the id map, the IVF's own id and its direct map (8 bytes each)
TUNING_QUERIES = 500
MIN_TRAIN = 10_000  # enough for 256-centroid PQ sub-quantisers


# ------------------------------------------------------------------------------ sizes


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(value: str | int | float | None) -> int | None:
    """``"128MB"``, ``"4GiB"``, ``"1.5G"`` or a number of bytes → bytes (None stays None)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise SimsearchError(f"invalid memory size {value!r}: use e.g. 512MB, 4GB or 2GiB")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise SimsearchError(f"memory size must be positive, not {value!r}")
    return int(n)


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def default_memory_budget() -> int:
    """Half of this machine's physical memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


# ------------------------------------------------------------------------------ choosing


@dataclass
class Plan:
    """A chosen index: its factory string (without the IDMap2 prefix), why, and its estimated size."""

    factory: str
    family: str
    reason: str
    bytes_per_vector: float
    nlist: int | None = None
    train_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def nlist_for(n: int) -> int:
    """Inverted lists: a power of two near sqrt(n), with at least 64 training points per list."""
    if n < 64 * 16:
        return max(1, n // 64)
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    while nlist > 16 and n < 64 * nlist:
        nlist //= 2
    return int(min(nlist, 65536))


def _pq_sizes(dim: int) -> list[int]:
    """Numbers of PQ sub-quantisers usable for ``dim`` (``m`` divides the dimension), small to large."""
    return [m for m in (4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256) if dim % m == 0]


def choose(n: int, dim: int, memory_budget: int | None = None, *, flat_below: int = FLAT_BELOW) -> Plan:
    """The index for ``n`` vectors of ``dim`` floats that fits ``memory_budget`` bytes (default: half the RAM)."""
    budget = memory_budget or default_memory_budget()
    n = max(int(n), 1)
    flat_bpv = 4 * dim + 8
    if n < flat_below and flat_bpv * n <= budget:
        return Plan("Flat", "flat", f"{n:,} vectors (< {flat_below:,}): exact search", flat_bpv)
    nlist = nlist_for(n)
    if nlist < 4:
        if flat_bpv * n <= budget:
            return Plan("Flat", "flat", f"too few vectors ({n:,}) for an inverted file: exact search", flat_bpv)
        raise SimsearchError(
            f"{n:,} vectors are too few to train a compressed index, and exact search needs "
            f"{format_size(flat_bpv * n)}: raise --memory-budget"
        )
    train = int(min(n, max(MIN_TRAIN, 64 * nlist)))
    fixed = 4 * dim * nlist + 256 * 4 * dim  # coarse centroids + PQ codebooks
    per_vector = (budget - fixed) / n
    pq = _pq_sizes(dim)
    m_fast = next((m for m in pq if dim // m <= 16 and m >= 8), pq[-1] if pq else None)
    if m_fast is not None and per_vector >= 4 * dim + m_fast + ID_BYTES:
        return Plan(
            f"IVF{nlist},PQ{m_fast},RFlat",
            "ivf-pq-refine",
            f"{n:,} vectors; the float vectors fit in {format_size(budget)}: IVF-PQ candidates re-ranked exactly",
            4 * dim + m_fast + ID_BYTES,
            nlist,
            train,
        )
    # memory-lean: PQ codes only, as many bytes as the budget allows (no exact re-ranking)
    room = per_vector - ID_BYTES
    lean = [m for m in pq if m <= room and dim // m >= 2]
    if not lean:
        raise SimsearchError(
            f"a memory budget of {format_size(budget)} is too small for {n:,} vectors "
            f"(at least {format_size(n * (8 + ID_BYTES) + fixed)} is needed): raise --memory-budget"
        )
    m = max(lean)
    return Plan(
        f"IVF{nlist},PQ{m}",
        "ivf-pq",
        f"{n:,} vectors must fit in {format_size(budget)} ({per_vector:.0f} B/vector): IVF-PQ with {m}-byte codes",
        m + ID_BYTES,
        nlist,
        train,
    )


# ------------------------------------------------------------------------------ the FAISS object tree


def _unwrap(index):
    import faiss

    return faiss.downcast_index(index)


def _parts(index) -> dict:
    """The interesting nodes of an (IDMap2-wrapped) index: idmap, refine, pretransform, ivf, hnsw."""
    import faiss

    out: dict = {}
    node = _unwrap(index)
    for _ in range(8):
        if isinstance(node, (faiss.IndexIDMap2, faiss.IndexIDMap)):
            out["idmap"] = node
            node = _unwrap(node.index)
        elif isinstance(node, faiss.IndexRefine):
            out["refine"] = node
            node = _unwrap(node.base_index)
        elif isinstance(node, faiss.IndexPreTransform):
            out["pretransform"] = node
            node = _unwrap(node.index)
        elif isinstance(node, faiss.IndexIVF):
            out["ivf"] = node
            break
        elif isinstance(node, faiss.IndexHNSW):
            out["hnsw"] = node
            break
        else:
            out["leaf"] = node
            break
    return out


def search_params(index) -> dict:
    """The index's current search parameters (nprobe, k_factor, efSearch)."""
    p = _parts(index)
    out = {}
    if "ivf" in p:
        out["nprobe"] = int(p["ivf"].nprobe)
    if "refine" in p:
        out["k_factor"] = float(p["refine"].k_factor)
    if "hnsw" in p:
        out["efSearch"] = int(p["hnsw"].hnsw.efSearch)
    return out


def set_search_params(index, params: dict) -> None:
    """Set nprobe / k_factor / efSearch wherever they apply (unknown names are ignored)."""
    p = _parts(index)
    if "nprobe" in params and "ivf" in p:
        p["ivf"].nprobe = int(params["nprobe"])
    if "k_factor" in params and "refine" in p:
        p["refine"].k_factor = float(params["k_factor"])
    if "efSearch" in params and "hnsw" in p:
        p["hnsw"].hnsw.efSearch = int(params["efSearch"])


def no_polysemous(index) -> None:
    """Turn off FAISS's polysemous training of PQ codes (slow, and only useful for Hamming filtering, unused here)."""
    import faiss

    p = _parts(index)
    nodes = [p.get("ivf"), p.get("leaf")]
    if "refine" in p:
        nodes.append(_unwrap(p["refine"].refine_index))
    for node in nodes:
        if isinstance(node, (faiss.IndexIVFPQ, faiss.IndexPQ)):
            node.do_polysemous_training = False


def prepare(index) -> None:
    """Give an IVF index a direct map so items can be reconstructed (query by id, export)."""
    import faiss

    ivf = _parts(index).get("ivf")
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.Array)


def remove_ids(index, ids: np.ndarray) -> bool:
    """Remove external ``ids`` from an IDMap2 over an IVF (possibly behind a transform or a refine stage).

    The inner ids are renumbered to stay 0..n-1, as IDMap2 requires. Returns False for other index types
    (the caller then uses FAISS's own ``remove_ids``).
    """
    import faiss

    p = _parts(index)
    idmap, ivf = p.get("idmap"), p.get("ivf")
    if idmap is None or ivf is None or not isinstance(idmap, faiss.IndexIDMap2):
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
    if "pretransform" in p:
        p["pretransform"].ntotal = ivf.ntotal
    if "refine" in p:
        p["refine"].refine_index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))
        p["refine"].ntotal = ivf.ntotal
    keep = np.ones(len(id_map), dtype=bool)
    keep[drop] = False
    faiss.copy_array_to_vector(np.ascontiguousarray(id_map[keep]), idmap.id_map)
    idmap.ntotal = int(keep.sum())
    idmap.construct_rev_map()
    return True


def is_exact_storage(index) -> bool:
    """Whether the index reconstructs the original vectors exactly (flat codes or an exact refine stage)."""
    import faiss

    p = _parts(index)
    if "refine" in p:
        return isinstance(_unwrap(p["refine"].refine_index), faiss.IndexFlat)
    if "ivf" in p:
        return isinstance(p["ivf"], faiss.IndexIVFFlat) and "pretransform" not in p
    if "hnsw" in p:
        return isinstance(_unwrap(p["hnsw"].storage), faiss.IndexFlat)
    return isinstance(p.get("leaf"), faiss.IndexFlat)


# ------------------------------------------------------------------------------ building and tuning


def exact_neighbors(xq: np.ndarray, xb: np.ndarray, k: int, chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product of ``xq`` in ``xb`` (row numbers), in chunks of ``xb``."""
    import faiss

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    best_d = np.full((len(xq), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(xq), k), -1, dtype=np.int64)
    for start in range(0, len(xb), chunk):
        part = np.ascontiguousarray(xb[start : start + chunk], dtype=np.float32)
        d, i = faiss.knn(xq, part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, np.where(i >= 0, i + start, -1)], axis=1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_d, best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean fraction of each row's true top-``k`` present in its found top-``k``."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


def _drop_self(rows: np.ndarray, selves: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for r, (row, s) in enumerate(zip(rows, selves, strict=True)):
        row = row[row != s][:k]
        out[r, : len(row)] = row
    return out


def _grid(index) -> list[list[dict]]:
    """Candidate search parameters: for each secondary setting, a list of increasingly expensive primary ones."""
    p = _parts(index)
    if "ivf" in p:
        nlist = int(p["ivf"].nlist)
        probes = [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if v <= nlist]
        if nlist not in probes and nlist <= 1024:
            probes.append(nlist)
        if "refine" in p:
            return [[{"nprobe": v, "k_factor": kf} for v in probes] for kf in (2, 4, 8, 16, 32)]
        return [[{"nprobe": v} for v in probes]]
    if "hnsw" in p:
        return [[{"efSearch": v} for v in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)]]
    return []


@dataclass
class Tuning:
    params: dict
    recall_at_10: float
    ms_per_query: float
    queries: int
    reached: bool
    tried: list = field(default_factory=list)


def tune(
    index,
    xb: np.ndarray,
    ids: np.ndarray,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    queries: int = TUNING_QUERIES,
    avoid: np.ndarray | None = None,
    seed: int = 0,
    k: int = RECALL_K,
) -> Tuning | None:
    """Pick the fastest search parameters whose recall@k (against exact search over ``xb``) reaches the target.

    Queries are items of the collection not in ``avoid`` (the training sample), each excluded from its own
    results. Leaves the chosen parameters set on ``index``. None when the index has nothing to tune.
    """
    grid = _grid(index)
    if not grid or index.ntotal == 0:
        return None
    rng = np.random.default_rng(seed + 1)
    pool = np.arange(len(xb))
    if avoid is not None and len(avoid) < len(xb) - 50:
        pool = np.setdiff1d(pool, avoid)
    qrows = np.sort(rng.choice(pool, size=min(queries, len(pool)), replace=False))
    xq = np.ascontiguousarray(xb[qrows], dtype=np.float32)
    kk = min(k + 1, len(xb))
    _, truth_rows = exact_neighbors(xq, xb, kk)
    truth = _drop_self(np.where(truth_rows >= 0, ids[np.maximum(truth_rows, 0)], -1), ids[qrows], k)
    tried = []
    for line in grid:
        best_here, stale = -1.0, 0
        for params in line:
            set_search_params(index, params)
            t0 = time.perf_counter()
            _, found = index.search(xq, kk)
            ms = (time.perf_counter() - t0) * 1000 / len(xq)
            r = recall_at_k(_drop_self(found, ids[qrows], k), truth, k)
            tried.append({**params, "recall": round(r, 4), "ms": round(ms, 4)})
            if r >= target_recall:
                break
            stale = stale + 1 if r <= best_here + 1e-3 else 0
            best_here = max(best_here, r)
            if stale >= 2:
                break
    ok = [t for t in tried if t["recall"] >= target_recall]
    best = min(ok, key=lambda t: t["ms"]) if ok else max(tried, key=lambda t: (t["recall"], -t["ms"]))
    params = {key: v for key, v in best.items() if key not in ("recall", "ms")}
    set_search_params(index, params)
    return Tuning(params, best["recall"], best["ms"], len(xq), bool(ok), tried)


def build(
    xb: np.ndarray,
    ids: np.ndarray,
    factory: str = AUTO,
    *,
    memory_budget: int | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    flat_below: int = FLAT_BELOW,
    tuning_queries: int = TUNING_QUERIES,
    seed: int = 0,
    progress: bool = False,
    add_chunk: int = 65536,
):
    """Build an IDMap2-wrapped FAISS index over ``xb`` (unit vectors) with ``ids``: train, add, tune.

    ``factory`` is ``"auto"`` (see :func:`choose`) or any FAISS factory string. Returns ``(index, factory, record)``;
    ``record`` is what goes into the manifest under ``extra["index_auto"]``.
    """
    n, dim = xb.shape
    t0 = time.perf_counter()
    plan = None
    if factory == AUTO:
        plan = choose(n, dim, memory_budget, flat_below=flat_below)
        factory = plan.factory
    index, full = new_faiss_index(dim, factory)
    rng = np.random.default_rng(seed)
    train_rows = None
    no_polysemous(index)
    if not index.is_trained:
        size = plan.train_size if plan and plan.train_size else min(n, max(MIN_TRAIN, 64 * (nlist_for(n) or 1)))
        train_rows = np.sort(rng.choice(n, size=min(n, size), replace=False))
        log.info("training %s on %d of %d vectors", full, len(train_rows), n)
        try:
            index.train(np.ascontiguousarray(xb[train_rows], dtype=np.float32))
        except RuntimeError as e:
            raise SimsearchError(
                f"cannot train FAISS index {full!r} on {len(train_rows)} vectors: "
                f"{str(e).strip().splitlines()[-1][:160]}; use more images or a simpler --index"
            ) from None
    t_train = time.perf_counter() - t0
    prepare(index)
    bar = progress_bar(n, "adding", unit="vec", enabled=progress)
    for start in range(0, n, add_chunk):
        index.add_with_ids(
            np.ascontiguousarray(xb[start : start + add_chunk], dtype=np.float32),
            np.ascontiguousarray(ids[start : start + add_chunk], dtype=np.int64),
        )
        bar.update(min(add_chunk, n - start))
    bar.close()
    t_add = time.perf_counter() - t0 - t_train
    tuning = tune(index, xb, ids, target_recall=target_recall, queries=tuning_queries, avoid=train_rows, seed=seed)
    if tuning is not None and not tuning.reached:
        log.warning(
            "%s reaches recall@10 %.3f at best (target %.2f): raise --memory-budget or choose another --index",
            full,
            tuning.recall_at_10,
            target_recall,
        )
    record = {
        "requested": AUTO if plan else factory,
        "choice": full,
        "reason": plan.reason if plan else "given with --index",
        "memory_budget": memory_budget,
        "target_recall": target_recall,
        "trained_on": len(train_rows) if train_rows is not None else 0,
        "built_for": int(n),
        "estimated_bytes_per_vector": round(plan.bytes_per_vector, 1) if plan else None,
        "params": tuning.params if tuning else {},
        "recall_at_10": tuning.recall_at_10 if tuning else (1.0 if factory == "Flat" else None),
        "recall_queries": tuning.queries if tuning else 0,
        "ms_per_query_batched": tuning.ms_per_query if tuning else None,
        "train_seconds": round(t_train, 2),
        "add_seconds": round(t_add, 2),
        "tune_seconds": round(time.perf_counter() - t0 - t_train - t_add, 2),
    }
    return index, full, record


# ------------------------------------------------------------------------------ the index writer's hook


def auto_config(memory_budget=None, target_recall: float | None = None, flat_below: int | None = None) -> dict:
    """The manifest record of an ``auto`` index before anything was chosen."""
    cfg = {"requested": AUTO, "memory_budget": parse_size(memory_budget), "target_recall": DEFAULT_TARGET_RECALL}
    if target_recall is not None:
        if not 0 < float(target_recall) <= 1:
            raise SimsearchError(f"--target-recall must be in (0, 1], not {target_recall}")
        cfg["target_recall"] = float(target_recall)
    if flat_below is not None:
        cfg["flat_below"] = int(flat_below)
    return cfg


def update_config(cfg: dict, memory_budget=None, target_recall: float | None = None) -> None:
    """Change the budget or target of an existing ``auto`` index (used from its next final commit on)."""
    new = auto_config(memory_budget, target_recall)
    if memory_budget is not None:
        cfg["memory_budget"] = new["memory_budget"]
    if target_recall is not None:
        cfg["target_recall"] = new["target_recall"]


def all_vectors(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of an IDMap2 index, in insertion order."""
    import faiss

    ids = faiss.vector_to_array(_unwrap(index).id_map).astype(np.int64)
    inner = _unwrap(_unwrap(index).index)
    if isinstance(inner, faiss.IndexFlat):  # no copy: a view of the flat storage
        xb = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
        return ids, xb
    return ids, np.asarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)


def finalize(faiss_index, factory: str, dim: int, cfg: dict | None) -> tuple[object, str, dict] | None:
    """At the end of a run: for an ``auto`` index still held as exact Flat, choose again for the current size.

    Returns ``(new index, its factory string, the record for the manifest)``, or None when nothing changes.
    """
    if not isinstance(cfg, dict) or cfg.get("requested") != AUTO:
        return None
    n = int(faiss_index.ntotal)
    flat_below = int(cfg.get("flat_below", FLAT_BELOW))
    if _parts(faiss_index).get("leaf") is None or not factory.endswith(",Flat"):
        return None  # already a trained, tuned index: adds go into it; `simsearch rebuild` retrains
    plan = choose(n, dim, cfg.get("memory_budget"), flat_below=flat_below)
    if plan.family == "flat":
        if cfg.get("choice") == factory and cfg.get("built_for") == n:
            return None
        record = {**cfg, "choice": factory, "reason": plan.reason, "built_for": n, "recall_at_10": 1.0, "params": {}}
        return faiss_index, factory, record
    ids, xb = all_vectors(faiss_index)
    log.info("%d vectors: switching from exact search to %s (%s)", n, plan.factory, plan.reason)
    index, full, record = build(
        xb,
        ids,
        AUTO,
        memory_budget=cfg.get("memory_budget"),
        target_recall=float(cfg.get("target_recall", DEFAULT_TARGET_RECALL)),
        flat_below=flat_below,
    )
    return index, full, {**cfg, **record, "requested": AUTO}


def rebuild_advice(m) -> str | None:
    """Why ``simsearch rebuild`` is advisable for an index with manifest ``m`` (None when it is not)."""
    rec = m.extra.get("index_auto") if isinstance(m.extra, dict) else None
    if not isinstance(rec, dict):
        return None
    built = int(rec.get("built_for") or 0)
    if rec.get("requested") == AUTO and m.index_factory.endswith(",Flat") and "IVF" not in m.index_factory:
        flat_below = int(rec.get("flat_below", FLAT_BELOW))
        if m.count >= flat_below:
            return f"{m.count:,} items: past {flat_below:,}, a compressed index would be faster"
        return None
    if built and m.count > REBUILD_GROWTH * built:
        return f"the index was trained for {built:,} items and now holds {m.count:,}: retrain with `simsearch rebuild`"
    return None


def describe(m) -> dict:
    """What ``simsearch info`` shows about the index choice: ``lines`` for text, other keys for JSON."""
    rec = m.extra.get("index_auto") if isinstance(m.extra, dict) else None
    advice = rebuild_advice(m)
    lines = []
    if isinstance(rec, dict):
        lines.append(
            ("index choice", f"{rec.get('requested', AUTO)}: {rec.get('reason') or 'decided at the end of indexing'}")
        )
        if rec.get("params"):
            lines.append(("search params", ", ".join(f"{k}={v}" for k, v in rec["params"].items())))
        if rec.get("recall_at_10") is not None:
            what = (
                "exact search"
                if rec.get("recall_at_10") == 1.0 and not rec.get("params")
                else (f"measured on {rec.get('recall_queries')} held-out queries, target {rec.get('target_recall')}")
            )
            lines.append(("recall@10", f"{rec['recall_at_10']} ({what})"))
        if rec.get("memory_budget"):
            lines.append(("memory budget", format_size(rec["memory_budget"])))
        if rec.get("trained_on"):
            lines.append(("trained on", f"{rec['trained_on']:,} vectors (index built for {rec.get('built_for', 0):,})"))
    lines.append(("rebuild advised", advice or "no"))
    return {"rebuild_advised": advice, "lines": lines}
