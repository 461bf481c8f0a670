"""Label audit: items whose own label disagrees with a confident vote of their neighbours.

Each labelled item is voted on, leave-one-out, by its ``k`` nearest labelled neighbours (exact search on the
index's vectors; the item itself never votes). When another label wins with at least ``min_confidence`` of the
vote, the item is a suspect: mislabelled, ambiguous, or an odd photo of its class. Suspects come most confident
first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .classify import field_values
from .config.classify import CLASSIFY
from .errors import SimsearchError
from .evaluate import exact_knn
from .votes import Neighbor, check_confidence, check_k, decide, vote_shares

if TYPE_CHECKING:
    from .index import Index


@dataclass(frozen=True)
class Suspect:
    """An item whose neighbours confidently vote for another label."""

    id: int
    path: str
    abspath: str
    label: str  # its own
    suggested: str  # the label its neighbours vote for
    confidence: float  # the suggested label's share of the vote
    own_share: float  # its own label's share of the vote
    neighbors: tuple[Neighbor, ...]  # the voters, nearest first

    def to_dict(self) -> dict:
        return asdict(self)


def audit(
    index: Index,
    k: int = CLASSIFY.k,
    *,
    field: str = CLASSIFY.field,
    min_confidence: float = CLASSIFY.audit_min_confidence,
    temperature: float = CLASSIFY.temperature,
    exclude_labels: Sequence[str] = (),
    limit: int | None = None,
) -> list[Suspect]:
    """Labelled items whose leave-one-out neighbour vote picks another label with share >= ``min_confidence``.

    Sorted by that share (highest first), then by how little their own label got. ``limit`` keeps the first ones.
    Items with a label in ``exclude_labels`` (e.g. a clutter class) neither vote nor are audited.
    """
    check_k(k)
    check_confidence(min_confidence)
    if limit is not None and limit < 1:
        raise SimsearchError(f"limit must be at least 1, not {limit}")
    excluded = set(exclude_labels)
    values = {i: v for i, v in field_values(index, field).items() if v not in excluded}
    ids, vectors = index.vectors(sorted(values))
    if len(ids) < 2:
        return []
    names = sorted(set(values.values()))
    col = {c: n for n, c in enumerate(names)}
    y = np.array([col[values[int(i)]] for i in ids], np.int64)
    scores, nn = exact_knn(vectors, vectors, k, exclude_self=True)
    shares = vote_shares(y[nn], scores, len(names), temperature=temperature)
    pred, conf = decide(shares, min_confidence)
    flagged = np.flatnonzero((pred >= 0) & (pred != y))
    own = shares[np.arange(len(y)), y]
    order = sorted(flagged.tolist(), key=lambda r: (-conf[r], own[r], int(ids[r])))
    if limit is not None:
        order = order[:limit]
    items = {it.id: it for it in index.items(int(ids[r]) for r in order)}
    out = []
    for r in order:
        it = items[int(ids[r])]
        voters = tuple(
            Neighbor(int(ids[j]), round(float(s), 6), names[y[j]]) for j, s in zip(nn[r], scores[r], strict=True)
        )
        out.append(
            Suspect(
                id=it.id,
                path=it.path,
                abspath=str(it.abspath),
                label=names[y[r]],
                suggested=names[pred[r]],
                confidence=round(float(conf[r]), 6),
                own_share=round(float(own[r]), 6),
                neighbors=voters,
            )
        )
    return out
