"""Retrieval quality: leave-one-out Recall@k and MAP@R with exact search, as pure numpy functions.

MAP@R follows Musgrave et al., "A Metric Learning Reality Check" (2020): for a query whose class has R other
members, average precision over the first R results, counting only the positions that are relevant.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise SimsearchError(f"{path}: a labels CSV needs a header with 'path' and 'label' columns")
            out = {}
            for row in reader:
                p = Path(row["path"])
                out[(p if p.is_absolute() else path.parent / p).resolve()] = row["label"]
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
) -> dict:
    """Leave-one-out retrieval quality over the labelled items of an index (exact search on its vectors)."""
    items = index.items()
    if labels_csv is not None:
        by_path = read_labels_csv(labels_csv)
        labels = {it.id: by_path.get(it.abspath.resolve()) for it in items}
    else:
        labels = {it.id: it.label for it in items}
    excluded = set(exclude_labels)
    usable = [i for i, lab in labels.items() if lab is not None and lab not in excluded]
    chosen = select_classes([str(labels[i]) for i in usable], classes)
    ids = [i for i in usable if labels[i] in chosen]
    if not ids:
        raise SimsearchError("no labelled items to evaluate (labels come from folder names or --labels CSV)")
    ids_arr, vectors = index.vectors(ids)
    result = retrieval_metrics(vectors, [labels[int(i)] for i in ids_arr], ks)
    result.update({"unlabelled": len(items) - len([1 for v in labels.values() if v is not None]), "split": classes})
    result["excluded_labels"] = sorted(excluded)
    return result
