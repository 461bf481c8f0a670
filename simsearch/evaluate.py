"""Retrieval quality: Recall@k and MAP@R with exact search, raw and augmented side by side.

MAP@R follows Musgrave et al., "A Metric Learning Reality Check" (2020): for a query whose class has R other
members, average precision over the first R results, counting only the positions that are relevant.

Protocols: leave-one-out (every labelled item queries the others, as "more like this" does), or *new queries*
(``queries="split=test"`` or a fraction such as ``0.3``): those items leave the collection, the augmentation is
computed without them, and they are searched like new images (expanded, guarded). Augmented figures are computed
in memory over the evaluated items with :mod:`simsearch.augment` and follow what a search of an augmented index
returns (:mod:`simsearch.search_augment`).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .augment import knn_graph, propagate, resolve_k
from .augment_query import expand_query, guarded_rows
from .config.augment import AugmentSpec
from .errors import SimsearchError

if TYPE_CHECKING:
    from .index import Index

CLASS_SPLITS = ("all", "first-half", "second-half")


def exact_knn(queries: np.ndarray, database: np.ndarray, k: int, *, exclude_self: bool = False, block: int = 1024):
    """Exact top-``k`` by inner product: ``(scores, indices)``, best first, ties broken by lower index.

    With ``exclude_self`` the queries are the database and row ``i`` never returns ``i``.
    """
    queries = np.asarray(queries, np.float32)
    database = np.asarray(database, np.float32)
    n = len(database)
    k = min(k, n - 1 if exclude_self else n)
    scores_out = np.empty((len(queries), k), np.float32)
    idx_out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ database.T
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(sims), 1))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        idx_out[start : start + block] = np.take_along_axis(part, order, axis=1)
        scores_out[start : start + block] = np.take_along_axis(part_scores, order, axis=1)
    return scores_out, idx_out


def recall_at_k(labels: np.ndarray, neighbors: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries with at least one same-label item among their first ``k`` neighbours."""
    labels = np.asarray(labels)
    match = labels[neighbors] == labels[:, None]
    return {k: float(match[:, :k].any(axis=1).mean()) for k in ks}


def map_at_r(labels: np.ndarray, neighbors: np.ndarray) -> float:
    """Mean average precision at R, where R is the number of other items sharing the query's label."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    if neighbors.shape[1] < r.max(initial=0):
        raise ValueError("neighbors must have at least R columns for every query")
    match = labels[neighbors] == labels[:, None]
    positions = np.arange(1, neighbors.shape[1] + 1)
    within_r = positions[None, :] <= r[:, None]
    rel = match & within_r
    precision = np.cumsum(rel, axis=1) / positions[None, :]
    ap = np.where(r > 0, (precision * rel).sum(axis=1) / np.maximum(r, 1), np.nan)
    return float(np.nanmean(ap))


def metrics_of(
    q_labels: np.ndarray, db_labels: np.ndarray, neighbors: np.ndarray, ks: Sequence[int], *, loo: bool = False
) -> dict:
    """Recall@k and MAP@R of queries (labels ``q_labels``) whose ranked results are rows of ``neighbors``
    (indices into ``db_labels``, -1 = none). R counts the query's class in the database (minus the query itself
    with ``loo``); MAP@R leaves out queries with R = 0, recall counts them as misses (as :func:`retrieval_metrics`)."""
    names, db_codes = np.unique(db_labels, return_inverse=True)
    counts = np.bincount(db_codes, minlength=len(names))
    at = np.minimum(np.searchsorted(names, q_labels), len(names) - 1)
    r = np.where(names[at] == q_labels, counts[at], 0) - (1 if loo else 0)
    match = (db_labels[np.maximum(neighbors, 0)] == q_labels[:, None]) & (neighbors >= 0)
    out: dict = {f"recall@{k}": round(float(match[:, :k].any(axis=1).mean()), 4) for k in ks}
    keep = r > 0
    positions = np.arange(1, neighbors.shape[1] + 1)
    rel = match[keep] & (positions[None, :] <= r[keep][:, None])
    precision = np.cumsum(rel, axis=1) / positions[None, :]
    out["map@r"] = round(float(((precision * rel).sum(axis=1) / r[keep]).mean()), 4) if keep.any() else float("nan")
    return out


def retrieval_metrics(vectors: np.ndarray, labels: Sequence, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Leave-one-out Recall@k and MAP@R of ``vectors`` (unit rows) against each other, by exact search."""
    names = np.asarray([str(x) for x in labels])
    if len(names) != len(vectors):
        raise ValueError("one label per vector")
    counts: Counter[str] = Counter(names.tolist())
    if len(names) < 2 or len(counts) < 2:
        raise SimsearchError("evaluation needs at least two labelled items in at least two classes")
    k = max(max(ks), max(counts.values()) - 1)
    _, neighbors = exact_knn(vectors, vectors, k, exclude_self=True)
    recalls = recall_at_k(names, neighbors, ks)
    singletons = sum(1 for c in counts.values() if c == 1)
    return {
        "items": len(names),
        "classes": len(counts),
        **{f"recall@{k}": round(v, 4) for k, v in recalls.items()},
        "map@r": round(map_at_r(names, neighbors), 4),
        "singleton_classes": singletons,
    }


def select_classes(labels: Sequence[str], split: str) -> set[str]:
    """``all`` classes, or the ``first-half`` / ``second-half`` of the sorted class names (odd: second is larger)."""
    if split not in CLASS_SPLITS:
        raise SimsearchError(f"--classes must be one of {', '.join(CLASS_SPLITS)}, not {split!r}")
    names = sorted(set(labels))
    half = len(names) // 2  # 101 classes: the first 50 and the other 51
    if split == "first-half":
        return set(names[:half])
    if split == "second-half":
        return set(names[half:])
    return set(names)


def read_labels_csv(path: str | Path) -> dict[Path, str]:
    """``path,label`` rows; relative paths are taken relative to the CSV's folder."""
    return {p: row["label"] for p, row in read_csv_rows(path).items()}


def read_csv_rows(path: str | Path, required: tuple[str, ...] = ("path", "label")) -> dict[Path, dict[str, str]]:
    """Rows of a labels CSV (the ``required`` columns and any others), by resolved path (relative paths: relative
    to the CSV's folder)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not set(required) <= set(reader.fieldnames):
                need = " and ".join(repr(c) for c in required)
                raise SimsearchError(
                    f"{path}: a labels CSV needs a header with {need} column{'s' * (len(required) > 1)}"
                )
            out = {}
            for row in reader:
                p = Path(row["path"])
                out[(p if p.is_absolute() else path.parent / p).resolve()] = row
            return out
    except OSError as e:
        raise SimsearchError(f"cannot read labels file {path}: {e.strerror or e}") from None


def evaluate_index(
    index: Index,
    *,
    labels_csv: str | Path | None = None,
    exclude_labels: Sequence[str] = (),
    classes: str = "all",
    ks: Sequence[int] = (1, 5, 10),
    queries: str | float | None = None,
    augment: AugmentSpec | str | None = None,
    seed: int = 0,
) -> dict:
    """Retrieval quality over the labelled items of an index (exact search on their vectors), raw and augmented.

    The top-level ``recall@k``/``map@r`` are the raw vectors'; ``augmented`` holds the same figures with
    augmentation (``augment``: a spec or its text form; default the index's own, or the default spec when the
    index has none; ``none`` skips it). ``queries``: None for leave-one-out; ``"FIELD=VALUE"`` (a column of the
    labels CSV, or an attribute) or a fraction in (0, 1) (a seeded random share) for the new-query protocol.
    """
    items = index.items()
    rows = read_csv_rows(labels_csv) if labels_csv is not None else None
    if rows is not None:
        labels = {it.id: (rows.get(it.abspath.resolve()) or {}).get("label") or None for it in items}
    else:
        labels = {it.id: it.label for it in items}
    excluded = set(exclude_labels)
    usable = [i for i, lab in labels.items() if lab is not None and lab not in excluded]
    chosen = select_classes([str(labels[i]) for i in usable], classes)
    ids = [i for i in usable if labels[i] in chosen]
    if not ids:
        raise SimsearchError("no labelled items to evaluate (labels come from folder names or --labels CSV)")
    ids_arr, vectors = index.vectors(ids)
    lab = np.asarray([str(labels[int(i)]) for i in ids_arr])
    q_mask = _query_mask(index, rows, ids_arr, queries, seed)
    spec = _evaluation_spec(index, augment)
    if q_mask is None:
        result = retrieval_metrics(vectors, lab.tolist(), ks)
        result["protocol"] = "leave-one-out"
    else:
        result = _new_query_metrics(vectors, lab, q_mask, ks)
        result["protocol"] = f"new queries ({queries}): {int(q_mask.sum())} queries, {int((~q_mask).sum())} indexed"
    if spec.enabled:
        result["augmented"], result["augment"] = augmented_metrics(vectors, ids_arr, lab, spec, ks, q_mask)
    result.update({"unlabelled": len(items) - len([1 for v in labels.values() if v is not None]), "split": classes})
    result["excluded_labels"] = sorted(excluded)
    return result


def augmented_metrics(
    vectors: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    spec: AugmentSpec,
    ks: Sequence[int] = (1, 5, 10),
    queries: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """Recall@k and MAP@R of what an augmented index returns, and the spec used (``k`` resolved).

    ``queries``: None for leave-one-out (each item searches with its augmented vector: first result by the
    item rule, then the raw top ``guard``, then the augmented ranking); else a mask of new queries, left out of the
    collection and its augmentation, searched expanded (raw top ``guard``, then the augmented ranking)."""
    vectors = np.asarray(vectors, np.float32)
    db = np.arange(len(vectors)) if queries is None else np.flatnonzero(~queries)
    graph = knn_graph(vectors[db], np.asarray(ids)[db], spec.max_k)
    spec = resolve_k(vectors[db], graph, spec)
    aug = propagate(vectors[db], graph, spec, np.arange(len(db)))
    db_labels = labels[db]
    counts = np.unique(db_labels, return_counts=True)[1]
    depth = max(*ks, int(counts.max())) + spec.guard + 1
    if queries is None:
        raw_s, raw_nb = exact_knn(vectors, vectors, depth, exclude_self=True)
        _, aug_nb = exact_knn(aug, aug, depth, exclude_self=True)
        q_labels, q_raw = labels, vectors
    else:
        q_raw = vectors[queries]
        raw_s, raw_nb = exact_knn(q_raw, vectors[db], depth)
        k = int(spec.k)
        expanded = expand_query(q_raw, raw_s[:, :k], aug[raw_nb[:, :k]], spec)
        _, aug_nb = exact_knn(expanded, aug, depth)
        q_labels = labels[queries]
    first = None
    if queries is None:  # an item's first result: see simsearch.augment_query.item_first
        first = aug_nb[:, 0]
        if spec.item_first is not None:
            gap = raw_s[:, 0] - np.einsum("ij,ij->i", q_raw, vectors[first])
            first = np.where(gap > spec.item_first, raw_nb[:, 0], first)
        else:
            first = raw_nb[:, 0]
    rows = guarded_rows(raw_nb, aug_nb, spec.guard, first)
    result = metrics_of(q_labels, db_labels, rows, ks, loo=queries is None)
    return result, {**spec.to_dict(), "neighbour_graph": "exact"}


def _new_query_metrics(vectors: np.ndarray, labels: np.ndarray, q_mask: np.ndarray, ks: Sequence[int]) -> dict:
    db_labels = labels[~q_mask]
    counts = np.unique(db_labels, return_counts=True)[1]
    _, nb = exact_knn(vectors[q_mask], vectors[~q_mask], max(*ks, int(counts.max())))
    result = metrics_of(labels[q_mask], db_labels, nb, ks)
    return {"items": len(labels), "classes": len(set(labels.tolist())), **result, "queries": int(q_mask.sum())}


def _evaluation_spec(index: Index, augment: AugmentSpec | str | None) -> AugmentSpec:
    if isinstance(augment, AugmentSpec):
        return augment
    if isinstance(augment, str):
        return AugmentSpec.parse(augment)
    rec = index.manifest.augment_record
    return AugmentSpec.from_dict(rec.get("spec")) if rec else AugmentSpec()


def _query_mask(index: Index, rows, ids: np.ndarray, queries: str | float | None, seed: int) -> np.ndarray | None:
    """Which evaluated items are new queries: a FIELD=VALUE of the labels CSV or the index, or a random share."""
    if queries is None:
        return None
    share = _fraction(queries)
    if share is not None:
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(ids), bool)
        mask[rng.permutation(len(ids))[: max(1, round(share * len(ids)))]] = True
    else:
        name, sep, value = str(queries).partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SimsearchError(f"--queries must be FIELD=VALUE (e.g. split=test) or a fraction, not {queries!r}")
        name, value = name.strip(), value.strip()
        if rows is not None:
            by_id = {it.id: (rows.get(it.abspath.resolve()) or {}).get(name) for it in index.items(ids)}
        else:
            by_id = {int(i): v for i, v in index.attribute_values(name).items()}
        mask = np.array([str(by_id.get(int(i))) == value for i in ids])
        if not mask.any():
            raise SimsearchError(f"no evaluated item has {name}={value}")
    if mask.all():
        raise SimsearchError(f"every evaluated item is a query ({queries}): nothing is left to search")
    return mask


def _fraction(queries) -> float | None:
    try:
        share = float(queries)
    except (TypeError, ValueError):
        return None
    if not 0 < share < 1:
        raise SimsearchError(f"a --queries fraction must be between 0 and 1, not {queries}")
    return share
