"""Search-parameter tuning of a FAISS index for ``--index auto``: exact neighbours as the truth, recall@k, the grid
of settings each kind of index is tried with (``nprobe``, re-ranking depth ``k_factor``, ``efSearch``), and the
pick of the cheapest setting (or candidate) that reaches the target recall. Pure functions over FAISS indexes and
arrays; :mod:`simsearch.autoindex` builds the indexes and calls them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config.autoindex import RECALL_TIE, AutoIndexSpec
from .faissops import faiss_module, find_stage, set_search_params

RECALL_K = 10
REFINE_DEPTHS = (2, 4, 8, 16, 32, 64, 128)  # k_factor values tried: candidates re-ranked = k_factor × k. A denser
# collection needs deeper re-ranking for the same recall (1M mixture vectors: 4-bit fast-scan codes stayed at 0.894
# with 32, where 50,000 of them reached 0.964)


def pick(results: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The cheapest result (``ms``) whose ``recall`` reaches ``target``; when none does, the cheapest of those
    within :data:`RECALL_TIE` of the best recall (a setting that costs more for the same recall is not kept)."""
    ok = [r for r in results if r["recall"] >= target]
    if ok:
        return min(ok, key=lambda r: r["ms"])
    best = max(r["recall"] for r in results)
    return min((r for r in results if r["recall"] >= best - RECALL_TIE), key=lambda r: (r["ms"], -r["recall"]))


# ------------------------------------------------------------------------------ tuning


def exact_neighbors(
    xq: np.ndarray, xb: np.ndarray, k: int, chunk: int = 200_000, *, skip: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product of ``xq`` in ``xb`` (row numbers), in chunks of ``xb``; rows in ``skip``
    (sorted) are left out, as if ``xb`` did not hold them (without copying ``xb``)."""
    faiss = faiss_module()

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    best_d = np.full((len(xq), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(xq), k), -1, dtype=np.int64)
    for start in range(0, len(xb), chunk):
        part = np.ascontiguousarray(xb[start : start + chunk], dtype=np.float32)
        here = np.empty(0, np.int64) if skip is None else skip[(skip >= start) & (skip < start + len(part))]
        extra = len(here)  # enough more neighbours that k remain once they are left out
        d, i = faiss.knn(xq, part, min(k + extra, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
        i = np.where(i >= 0, i + start, -1)
        if extra:
            gone = np.isin(i, here)
            d, i = np.where(gone, -np.inf, d).astype(np.float32), np.where(gone, -1, i)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, i], axis=1)
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


def search_grid(index: Any) -> list[list[dict[str, float]]]:
    """Candidate search parameters: for each secondary setting, a list of increasingly expensive primary ones."""
    faiss = faiss_module()

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nlist = int(ivf.nlist)
        probes = [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if v <= nlist]
        if nlist not in probes and nlist <= 1024:
            probes.append(nlist)
        if find_stage(index, faiss.IndexRefine) is not None:
            return [[{"nprobe": v, "k_factor": kf} for v in probes] for kf in REFINE_DEPTHS]
        return [[{"nprobe": v} for v in probes]]
    if find_stage(index, faiss.IndexHNSW) is not None:
        return [[{"efSearch": v} for v in (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)]]
    return []


@dataclass(frozen=True)
class Tuning:
    params: dict[str, float]
    recall_at_10: float
    ms_per_query: float
    queries: int
    reached: bool
    tried: list[dict[str, float]] = field(default_factory=list)


def tune(
    index: Any,
    xb: np.ndarray,
    ids: np.ndarray,
    spec: AutoIndexSpec | None = None,
    *,
    avoid: np.ndarray | None = None,
    held: np.ndarray | None = None,
    k: int = RECALL_K,
) -> Tuning | None:
    """Pick the fastest search parameters whose recall@k (against exact search over ``xb``, the vectors in
    ``index``) reaches the spec's target. Queries: the rows ``held`` of ``xb`` when given (held out: not in the
    index, nor in the truth; the measured chooser's way, see :func:`simsearch.autoindex._build_one`), else
    ``spec.tuning_queries`` items of the collection not in ``avoid`` (the training sample), each excluded from its
    own results (the fixed rule's way: for a graph, such in-index queries are easier than new ones). Leaves the
    chosen parameters set on ``index``. None when the index has nothing to tune."""
    spec = spec or AutoIndexSpec()
    grid = search_grid(index)
    if not grid or index.ntotal == 0:
        return None
    if held is not None:
        xq = np.ascontiguousarray(xb[held], dtype=np.float32)
        kk, selves = min(k, len(xb) - len(held)), None
        _, truth_rows = exact_neighbors(xq, xb, kk, skip=held)
        truth = np.where(truth_rows >= 0, ids[np.maximum(truth_rows, 0)], -1)
    else:
        rng = np.random.default_rng(spec.seed + 1)
        pool = np.arange(len(xb))
        if avoid is not None and len(avoid) < len(xb) - 50:
            pool = np.setdiff1d(pool, avoid)
        qrows = np.sort(rng.choice(pool, size=min(spec.tuning_queries, len(pool)), replace=False))
        xq = np.ascontiguousarray(xb[qrows], dtype=np.float32)
        kk, selves = min(k + 1, len(xb)), ids[qrows]
        _, truth_rows = exact_neighbors(xq, xb, kk)
        truth = _drop_self(np.where(truth_rows >= 0, ids[np.maximum(truth_rows, 0)], -1), selves, k)
    tried: list[dict[str, float]] = []
    for line in grid:
        best_here, stale = -1.0, 0
        for params in line:
            set_search_params(index, params)
            t0 = time.perf_counter()
            _, found = index.search(xq, kk)
            ms = (time.perf_counter() - t0) * 1000 / len(xq)
            r = recall_at_k(found if selves is None else _drop_self(found, selves, k), truth, k)
            tried.append({**params, "recall": round(r, 4), "ms": round(ms, 4)})
            if r >= spec.target_recall:
                break
            stale = stale + 1 if r <= best_here + 1e-3 else 0
            best_here = max(best_here, r)
            if stale >= 2:
                break
    best = pick(tried, spec.target_recall)
    params = {key: v for key, v in best.items() if key not in ("recall", "ms")}
    set_search_params(index, params)
    return Tuning(params, best["recall"], best["ms"], len(xq), best["recall"] >= spec.target_recall, tried)
