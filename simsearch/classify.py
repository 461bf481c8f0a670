"""Labels from neighbours over a whole index: the services above the vote (evaluation, audit, exact kNN shares).

classify(index, ["new-product.jpg"])          # suggest a label for a new photo (the same as index.classify)
classify(index, [123, "sku-42"], k=20)        # indexed items (by id, key or path) are voted on by the others
classify(index, [pil_image], field="brand")   # any attribute, once the catalogue has them

The vote itself (similarity-weighted, ``exp(similarity / T)``; "unknown" below ``min_confidence``) lives in
:mod:`simsearch.votes`, below the facade, so that ``Index.classify``, this module, the CLI and the server share
one code path; its names are re-exported here. :func:`knn_shares` (exact search over given vectors) and
:func:`field_values` (every item's value) are the whole-index parts used by the evaluation and the audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .config.classify import CLASSIFY
from .evaluate import exact_knn
from .votes import (
    UNKNOWN,
    Classification,
    Neighbor,
    Vote,
    check_confidence,
    check_field,
    check_k,
    check_top,
    decide,
    hit_value,
    no_values,
    vote_shares,
)
from .votes import (
    classify_queries as classify,  # index.classify(queries, ...), as a function
)

if TYPE_CHECKING:
    from .index import Index

__all__ = [
    "UNKNOWN",
    "Classification",
    "Neighbor",
    "Vote",
    "check_confidence",
    "check_field",
    "check_k",
    "check_top",
    "classify",
    "decide",
    "field_values",
    "hit_value",
    "knn_shares",
    "vote_shares",
]


def knn_shares(
    queries: np.ndarray,
    database: np.ndarray,
    db_labels: np.ndarray,
    n_classes: int,
    k: int = CLASSIFY.k,
    *,
    exclude_self: bool = False,
    temperature: float = CLASSIFY.temperature,
) -> np.ndarray:
    """Vote shares of ``queries`` among the ``k`` exactly nearest ``database`` rows (unit vectors, class indices).

    With ``exclude_self`` the queries are the database and no row votes for itself (leave-one-out).
    """
    check_k(k)
    if len(database) - int(exclude_self) < 1:
        return np.zeros((len(queries), n_classes))
    scores, nn = exact_knn(queries, database, k, exclude_self=exclude_self)
    return vote_shares(np.asarray(db_labels)[nn], scores, n_classes, temperature=temperature)


def field_values(index: Index, field: str = CLASSIFY.field) -> dict[int, str]:
    """``{id: value}`` of ``field`` for the items that have one (for whole-index work: evaluation, audit).

    With :func:`hit_value` (one search result) the only places that read labels: the catalogue's attributes
    (``index.attribute_values``; an index without them has folder-name ``labels()``). Raises a one-line
    :class:`SimsearchError` for an unknown field and when no item has a value.
    """
    check_field(index, field)
    getter = getattr(index, "attribute_values", None)
    values = getter(field) if getter is not None else index.labels()
    out = {int(i): str(v) for i, v in values.items() if v is not None and str(v) != ""}
    if not out:
        raise no_values(index, field)
    return out
