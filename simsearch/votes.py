"""Labels from neighbours, the vote itself: similarity-weighted votes of the k nearest labelled items (layer: query).

``Index.classify`` (the facade), :mod:`simsearch.classify` (evaluation, audit), the ``classify`` command and the
HTTP routes all vote through :func:`classify_queries`; :func:`vote_shares` and :func:`decide` are the pure numpy
core, shared with the whole-index work above.

Each of the ``k`` nearest labelled neighbours votes for its label with the weight ``exp(similarity / T)``
(``T`` = ``temperature``, 0.07 by default, so a nearer neighbour counts more); a label's share is its votes over
all votes. The answer is the label with the largest share, or ``"unknown"`` when that share is below
``min_confidence``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config.classify import CLASSIFY
from .config.limits import LIMITS
from .errors import SimsearchError

UNKNOWN = CLASSIFY.unknown


class Votable(Protocol):
    """What voting needs of an opened index (:class:`simsearch.index.Index` is one)."""

    @property
    def path(self) -> Path: ...

    @property
    def manifest(self) -> Any: ...

    def __len__(self) -> int: ...

    def resolve_item(self, ref) -> int | None: ...

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def embed(self, images: Sequence) -> np.ndarray: ...

    def search_vectors(self, vectors: np.ndarray, k: int = 10, **kwargs) -> list[list[Any]]: ...


@dataclass(frozen=True)
class Vote:
    """One label's part of the vote."""

    label: str
    share: float  # of the total weight, 0..1
    neighbors: int  # how many of the k neighbours carry this label


@dataclass(frozen=True)
class Neighbor:
    """A labelled neighbour that voted."""

    id: int
    score: float
    label: str


@dataclass(frozen=True)
class Classification:
    """The vote for one query."""

    query: str  # what was classified: "item 12", a key or path as given, "image 3" (bytes, PIL), "vector 4"
    label: str  # the label with the largest share, or "unknown" below min_confidence
    confidence: float  # that label's share (0 when no labelled neighbour was found)
    votes: tuple[Vote, ...]  # the top labels, largest share first
    neighbors: tuple[Neighbor, ...]  # the voters, nearest first
    item_id: int | None = None  # the query's id when it is an indexed item

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ the vote (pure numpy)


def vote_shares(
    neighbor_labels: np.ndarray, scores: np.ndarray, n_classes: int, *, temperature: float = CLASSIFY.temperature
) -> np.ndarray:
    """Each class's share of the vote, ``(n, n_classes)``; a row sums to 1, or to 0 when it has no voter.

    ``neighbor_labels`` ``(n, k)`` holds class indices (-1: no neighbour), ``scores`` ``(n, k)`` similarities.
    A neighbour's weight is ``exp(score / temperature)``.
    """
    labels = np.asarray(neighbor_labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError("neighbor_labels and scores must both have shape (n, k)")
    if not temperature > 0:
        raise SimsearchError(f"temperature must be positive, not {temperature}")
    if labels.size and labels.max() >= n_classes:
        raise ValueError("a class index is >= n_classes")
    valid = labels >= 0
    top = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.where(valid, np.exp((np.where(valid, scores, 0.0) - top[:, None]) / temperature), 0.0)
    votes = np.zeros((len(labels), n_classes), np.float64)
    rows = np.broadcast_to(np.arange(len(labels))[:, None], labels.shape)
    np.add.at(votes, (rows[valid], labels[valid]), weights[valid])
    total = votes.sum(axis=1, keepdims=True)
    return np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)


def decide(shares: np.ndarray, min_confidence: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted class index, its share)`` per row; -1 when the share is below ``min_confidence`` or 0.

    Ties go to the lower class index (classes sorted by name: the first name).
    """
    shares = np.asarray(shares)
    best = shares.argmax(axis=1) if shares.shape[1] else np.zeros(len(shares), np.int64)
    conf = shares[np.arange(len(shares)), best] if shares.shape[1] else np.zeros(len(shares))
    pred = np.where((conf > 0) & (conf >= min_confidence), best, -1)
    return pred, conf


def tally(
    neighbors: Sequence[Sequence[tuple[int, float, str]]],
    k: int,
    *,
    min_confidence: float = CLASSIFY.min_confidence,
    top: int = CLASSIFY.top,
    temperature: float = CLASSIFY.temperature,
    names: Sequence[str] | None = None,
    item_ids: Sequence[int | None] | None = None,
) -> list[Classification]:
    """One :class:`Classification` per row of voters ``(id, score, value)`` (nearest first, at most ``k``)."""
    classes = sorted({v for row in neighbors for _, _, v in row})
    col = {c: n for n, c in enumerate(classes)}
    lab = np.full((len(neighbors), k), -1, np.int64)
    sc = np.zeros((len(neighbors), k))
    for r, row in enumerate(neighbors):
        for j, (_, s, v) in enumerate(row[:k]):
            lab[r, j], sc[r, j] = col[v], s
    shares = vote_shares(lab, sc, len(classes), temperature=temperature)
    pred, conf = decide(shares, min_confidence)
    out = []
    for r in range(len(neighbors)):
        counts = np.bincount(lab[r][lab[r] >= 0], minlength=len(classes))
        order = sorted((c for c in range(len(classes)) if shares[r, c] > 0), key=lambda c: (-shares[r, c], c))
        out.append(
            Classification(
                query=names[r] if names is not None else f"vector {r}",
                label=classes[pred[r]] if pred[r] >= 0 else UNKNOWN,
                confidence=round(float(conf[r]), 6),
                votes=tuple(Vote(classes[c], round(float(shares[r, c]), 6), int(counts[c])) for c in order[:top]),
                neighbors=tuple(Neighbor(int(i), round(float(s), 6), v) for i, s, v in neighbors[r][:k]),
                item_id=item_ids[r] if item_ids is not None else None,
            )
        )
    return out


# ------------------------------------------------------------------------------ checks


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= LIMITS.max_k:
        raise SimsearchError(f"k must be a whole number between 1 and {LIMITS.max_k}, not {k!r}")


def check_confidence(min_confidence: float) -> None:
    if not 0 <= min_confidence <= 1:
        raise SimsearchError(f"min_confidence must be between 0 and 1, not {min_confidence}")


def check_top(top: int) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SimsearchError(f"top must be a positive whole number, not {top!r}")


# ------------------------------------------------------------------------------ labels of an index


def check_field(index: Votable, field: str) -> None:
    """A one-line :class:`SimsearchError` unless ``field`` is one of the index's attributes."""
    known = getattr(index.manifest, "attributes", None) or {"label": "str"}  # older indexes: the folder label
    if field not in known:
        raise SimsearchError(f"unknown field {field!r}; the items of {index.path} have: {', '.join(sorted(known))}")


def no_values(index: Votable, field: str, where: str | None = None) -> SimsearchError:
    hint = " (labels are the names of the folders the images are in)" if field == "label" else ""
    return SimsearchError(f"no item {where or f'in {index.path}'} has a {field!r} to vote with{hint}")


def hit_value(hit, field: str = CLASSIFY.field) -> str | None:
    """The value of ``field`` of a search result: its label, or one of its attributes."""
    value = hit.label if field == "label" else (getattr(hit, "attributes", None) or {}).get(field)
    return None if value is None or str(value) == "" else str(value)


# ------------------------------------------------------------------------------ classifying queries


def _is_id(q) -> bool:
    return isinstance(q, (int, np.integer)) and not isinstance(q, bool)


def resolve_queries(index: Votable, queries: Sequence) -> tuple[list[str], np.ndarray, list[int | None]]:
    """Descriptions, unit vectors and the item ids of queries that name an indexed item.

    An id, a key or the path of an indexed photo names an item (its stored vector is used); any other path,
    bytes or PIL image is embedded; a vector is used as it is.
    """
    dim = index.manifest.dim
    vecs: list[np.ndarray | None] = []
    item_ids: list[int | None] = []
    names: list[str] = []
    to_embed: list[tuple[int, object]] = []
    for n, q in enumerate(queries):
        item_id = None
        if isinstance(q, bool):
            raise SimsearchError(f"not a query: {q!r}")
        if isinstance(q, np.ndarray):
            v = np.asarray(q, np.float32)
            if v.shape != (dim,) or not np.isfinite(v).all() or not np.any(v):
                raise SimsearchError(f"a query vector must be finite, non-zero and of shape ({dim},)")
            names.append(f"vector {n}")
            vecs.append(v / np.linalg.norm(v))
        elif _is_id(q) or isinstance(q, (str, Path)):
            item_id = index.resolve_item(int(q) if _is_id(q) else q)
            if item_id is None and _is_id(q):
                raise SimsearchError(f"no item with id {int(q)} in {index.path}")
            if item_id is None and not Path(q).expanduser().is_file():
                raise SimsearchError(f"{q} is neither an item key of {index.path} nor an image file")
            names.append(f"item {item_id}" if _is_id(q) else str(q))
            vecs.append(None)
            if item_id is None:
                to_embed.append((n, Path(q).expanduser()))
        else:  # bytes or a PIL image
            names.append(f"image {n}")
            vecs.append(None)
            to_embed.append((n, q))
        item_ids.append(item_id)
    wanted = sorted({i for i in item_ids if i is not None})
    if wanted:
        got_ids, got = index.vectors(wanted)
        by_id = dict(zip(got_ids.tolist(), got, strict=True))
        for n, i in enumerate(item_ids):
            if i is not None:
                vecs[n] = by_id[i]
    if to_embed:
        embedded = index.embed([q for _, q in to_embed])
        for (n, _), v in zip(to_embed, embedded, strict=True):
            vecs[n] = v
    matrix = np.vstack([np.asarray(v, np.float32) for v in vecs]) if vecs else np.zeros((0, dim), np.float32)
    return names, matrix, item_ids


def labelled_neighbors(
    index: Votable, vectors: np.ndarray, field: str, k: int, item_ids: Sequence[int | None]
) -> list[list[tuple[int, float, str]]]:
    """The ``k`` nearest neighbours with a value of ``field`` of each vector, by the index's own search, without
    the query item: ``(id, score, value)``. Searches again, fetching more, for rows where unlabelled items or the
    query itself took places (up to the search limit). Raises when no row found any labelled neighbour.
    """
    n_items = len(index)
    limit = min(n_items, LIMITS.max_k)
    out: list[list[tuple[int, float, str]]] = [[] for _ in range(len(vectors))]
    todo = list(range(len(vectors)))
    fetch = min(k + 1, limit)
    while todo and fetch > 0:
        results = index.search_vectors(vectors[todo], k=fetch)
        short = []
        for row, hits in zip(todo, results, strict=True):
            kept = [(h.id, float(h.score), v) for h in hits
                    if h.id != item_ids[row] and (v := hit_value(h, field)) is not None]  # fmt: skip
            out[row] = kept[:k]
            if len(kept) < k and len(hits) == fetch:
                short.append(row)
        if fetch >= limit:
            break
        todo, fetch = short, min(fetch * 4, limit)
    if vectors.shape[0] and not any(out):
        raise no_values(index, field, None if limit == n_items else f"among the {limit} nearest items")
    return out


def classify_queries(
    index: Votable,
    queries,
    k: int = CLASSIFY.k,
    *,
    field: str = CLASSIFY.field,
    min_confidence: float = CLASSIFY.min_confidence,
    top: int = CLASSIFY.top,
    temperature: float = CLASSIFY.temperature,
) -> list[Classification]:
    """Suggest a label for each query by a similarity-weighted vote of its ``k`` nearest labelled items.

    ``queries`` is a list (or one) of: item ids, item keys, image paths, image bytes, PIL images or vectors.
    An indexed item (by id, key or the path of its photo) is voted on by the others, never by itself. Returns one
    :class:`Classification` per query, in order.
    """
    check_k(k)
    check_confidence(min_confidence)
    check_top(top)
    if isinstance(queries, np.ndarray) and queries.ndim == 2:  # a batch of vectors, one per row
        queries = list(queries)
    if isinstance(queries, (str, Path, bytes, np.ndarray, int, np.integer)) or not isinstance(queries, Sequence):
        queries = [queries]
    if not queries:
        raise SimsearchError("nothing to classify: give image paths, images or item ids")
    check_field(index, field)
    names, vectors, item_ids = resolve_queries(index, list(queries))
    neighbors = labelled_neighbors(index, vectors, field, k, item_ids)
    return tally(
        neighbors, k, min_confidence=min_confidence, top=top, temperature=temperature, names=names, item_ids=item_ids
    )
