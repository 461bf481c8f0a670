"""How well neighbour votes classify: accuracy, macro precision / recall / F1, per-class figures, confusion matrix.

Two protocols over the labelled items of an index (exact search on the index's vectors):

- leave-one-out: every labelled item is voted on by all the others;
- new queries (``queries="split=test"``): the items whose ``split`` is ``test`` are voted on by the other
  labelled items only, as new photos would be. ``split`` comes from a labels CSV's column of that name, or
  from the index's attribute once the catalogue has attributes.

:func:`classification_metrics` is the pure numpy part (zero where a ratio is undefined, as scikit-learn does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .classify import field_values, knn_shares
from .config.classify import CLASSIFY
from .errors import SimsearchError
from .evaluate import read_csv_rows, select_classes
from .votes import check_confidence, check_k, decide

if TYPE_CHECKING:
    from .index import Index


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, unknown)``: ``matrix[t, p]`` counts queries of class t predicted p; ``unknown[t]`` those of
    class t left unknown (prediction -1). Together they sum to the number of queries."""
    t = np.asarray(y_true, np.int64)
    p = np.asarray(y_pred, np.int64)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred must have the same length")
    known = p >= 0
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (t[known], p[known]), 1)
    unknown = np.bincount(t[~known], minlength=n_classes).astype(np.int64)
    return matrix, unknown


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> dict:
    """Accuracy, macro precision / recall / F1 and per-class arrays from class indices (-1: unknown).

    Macro averages run over the classes that occur as a truth or a prediction; an unknown counts as wrong.
    """
    matrix, unknown = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1) + unknown
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    n = int(support.sum())

    def macro(a):
        return float(a[present].mean()) if present.any() else 0.0

    return {
        "queries": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "unknown": int(unknown.sum()),
        "confusion": matrix,
        "unknown_per_class": unknown,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


@dataclass(frozen=True)
class ClassEvaluation:
    """The result of :func:`evaluate_classification`; ``to_dict`` gives the JSON form."""

    protocol: str
    k: int
    field: str
    classes: tuple[str, ...]
    queries: int
    references: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    min_confidence: float
    coverage: float  # share of queries whose vote reaches min_confidence
    confident_accuracy: float  # accuracy over those queries
    confusion: np.ndarray = dataclasses.field(repr=False)
    unknown_per_class: np.ndarray = dataclasses.field(repr=False)
    per_class: tuple[dict, ...] = dataclasses.field(repr=False)
    excluded_labels: tuple[str, ...] = ()

    def top_confusions(self, n: int = 10) -> list[dict]:
        """The largest off-diagonal cells: ``{"true", "predicted", "count"}``, most first."""
        m = self.confusion.copy()
        np.fill_diagonal(m, 0)
        flat = np.argsort(-m, axis=None, kind="stable")[:n]
        out = []
        for f in flat:
            t, p = divmod(int(f), m.shape[1])
            if m[t, p] > 0:
                out.append({"true": self.classes[t], "predicted": self.classes[p], "count": int(m[t, p])})
        return out

    def to_dict(self) -> dict:
        keys = ["protocol", "k", "field", "queries", "references", "accuracy", "macro_precision", "macro_recall",
                "macro_f1", "min_confidence", "coverage", "confident_accuracy"]  # fmt: skip
        d = {key: getattr(self, key) for key in keys}
        d.update(
            classes=list(self.classes),
            excluded_labels=list(self.excluded_labels),
            per_class=list(self.per_class),
            top_confusions=self.top_confusions(),
            confusion=self.confusion.tolist(),
            unknown_per_class=self.unknown_per_class.tolist(),
        )
        return d


def parse_queries(spec: str) -> tuple[str, str]:
    """``"split=test"`` -> ``("split", "test")``."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise SimsearchError(f"--queries must look like FIELD=VALUE (e.g. split=test), not {spec!r}")
    return name.strip(), value.strip()


def _column(index: Index, rows: dict[Path, dict[str, str]] | None, name: str) -> dict[int, str]:
    """``{id: value}`` of a column of the labels CSV, or of the index's own field when there is no CSV."""
    if rows is None:
        return field_values(index, name)
    if rows and name not in next(iter(rows.values())):
        raise SimsearchError(f"the labels CSV has no {name!r} column")
    out = {}
    for it in index.items():
        row = rows.get(it.abspath.resolve())
        if row is not None and row.get(name):
            out[it.id] = row[name]
    if not out:
        raise SimsearchError(f"no indexed item is in the labels CSV with a {name!r} (paths must match)")
    return out


def evaluate_classification(
    index: Index,
    *,
    k: int = CLASSIFY.k,
    field: str = CLASSIFY.field,
    labels_csv: str | Path | None = None,
    queries: str | None = None,
    exclude_labels: Sequence[str] = (),
    classes: str = "all",
    min_confidence: float = CLASSIFY.min_confidence,
    temperature: float = CLASSIFY.temperature,
) -> ClassEvaluation:
    """Classify labelled items by their neighbours' votes and compare with their labels.

    Without ``queries``: leave-one-out over all labelled items. With ``queries="FIELD=VALUE"`` (e.g.
    ``split=test``): the items with that value are the queries, the other labelled items the references.
    Labels come from ``labels_csv``'s column ``field`` when given, else from the index. Accuracy and the
    confusion matrix count the top vote; ``coverage`` and ``confident_accuracy`` what ``min_confidence`` keeps.
    """
    check_k(k)
    check_confidence(min_confidence)
    rows = read_csv_rows(labels_csv, required=("path",)) if labels_csv is not None else None
    labels = _column(index, rows, field)
    excluded = set(exclude_labels)
    usable = {i: lab for i, lab in labels.items() if lab not in excluded}
    chosen = select_classes(list(usable.values()), classes)
    usable = {i: lab for i, lab in usable.items() if lab in chosen}
    if len(usable) < 2:
        raise SimsearchError(f"classification needs at least two items with a {field!r}")
    ids = sorted(usable)
    names = sorted(set(usable.values()))
    col = {c: n for n, c in enumerate(names)}
    ids_arr, vectors = index.vectors(ids)
    y = np.array([col[usable[int(i)]] for i in ids_arr], np.int64)
    if queries is None:
        protocol = "leave-one-out"
        q_mask = np.ones(len(y), bool)
        shares = knn_shares(vectors, vectors, y, len(names), k, exclude_self=True, temperature=temperature)
    else:
        qfield, qvalue = parse_queries(queries)
        split = _column(index, rows, qfield)
        q_mask = np.array([split.get(int(i)) == qvalue for i in ids_arr])
        if not q_mask.any():
            raise SimsearchError(f"no labelled item has {qfield}={qvalue}")
        if q_mask.all():
            raise SimsearchError(f"every labelled item has {qfield}={qvalue}: nothing is left to vote")
        protocol = f"queries {qfield}={qvalue}"
        shares = knn_shares(vectors[q_mask], vectors[~q_mask], y[~q_mask], len(names), k, temperature=temperature)
    y_true = y[q_mask]
    pred, conf = decide(shares, 0.0)
    m = classification_metrics(y_true, pred, len(names))
    sure = (conf > 0) & (conf >= min_confidence)
    per_class = tuple(
        {"class": c, "support": int(m["support"][n]), "precision": round(float(m["precision"][n]), 4),
         "recall": round(float(m["recall"][n]), 4), "f1": round(float(m["f1"][n]), 4)}
        for n, c in enumerate(names)
    )  # fmt: skip
    return ClassEvaluation(
        protocol=protocol,
        k=k,
        field=field,
        classes=tuple(names),
        queries=int(q_mask.sum()),
        references=int(len(y) - (0 if queries is None else q_mask.sum())),
        accuracy=round(m["accuracy"], 4),
        macro_precision=round(m["macro_precision"], 4),
        macro_recall=round(m["macro_recall"], 4),
        macro_f1=round(m["macro_f1"], 4),
        min_confidence=min_confidence,
        coverage=round(float(sure.mean()), 4),
        confident_accuracy=round(float((pred[sure] == y_true[sure]).mean()), 4) if sure.any() else 0.0,
        confusion=m["confusion"],
        unknown_per_class=m["unknown_per_class"],
        per_class=per_class,
        excluded_labels=tuple(sorted(excluded)),
    )
