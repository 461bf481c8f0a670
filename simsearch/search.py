"""Queries: resolve what the user gave (ids, paths, images, vectors) to a vector and search the index.

search(index, "cat.jpg", k=10)              # a new image
search(index, 123, k=10)                    # "more like this": the item itself is excluded
search(index, [12, 40, "dog.jpg"], k=10)    # several items: mean of their normalised embeddings
recommend(index, positive=[12, 40], negative=[7], exclude=[12, 40], k=20)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .backbones import l2_normalize
from .errors import SimsearchError

if TYPE_CHECKING:
    from .index import Index

MAX_K = 10_000


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    id: int
    score: float
    path: str
    label: str | None
    abspath: str

    def to_dict(self) -> dict:
        return asdict(self)


def _is_id(q) -> bool:
    return isinstance(q, (int, np.integer)) and not isinstance(q, bool)


def resolve_query(index: Index, query) -> tuple[np.ndarray, set[int]]:
    """Turn a query into one unit vector, plus the ids of indexed items it names (to exclude from results).

    A query is an item id, a path (an indexed file is looked up, any other image file is embedded),
    a PIL image, image bytes, a vector, or a list of these (the mean of their normalised embeddings).
    """
    items = list(query) if isinstance(query, (list, tuple)) else [query]
    if not items:
        raise SimsearchError("empty query: give an image path, an item id, an image or a vector")
    vectors: list[np.ndarray] = []
    self_ids: set[int] = set()
    to_embed = []
    for q in items:
        if _is_id(q):
            if not index.has_id(int(q)):
                raise SimsearchError(f"no item with id {int(q)} in {index.path}")
            vectors.append(index.vector(int(q)))
            self_ids.add(int(q))
        elif isinstance(q, np.ndarray):
            v = np.asarray(q, dtype=np.float32)
            if v.ndim != 1 or v.shape[0] != index.manifest.dim:
                raise SimsearchError(f"a query vector must have shape ({index.manifest.dim},), not {v.shape}")
            if not np.isfinite(v).all() or not np.any(v):
                raise SimsearchError("a query vector must be finite and non-zero")
            vectors.append(l2_normalize(v))
        elif isinstance(q, (str, Path)):
            item_id = index.id_for_path(q)
            if item_id is not None:
                vectors.append(index.vector(item_id))
                self_ids.add(item_id)
            elif Path(q).expanduser().exists():
                to_embed.append(Path(q).expanduser())
            else:
                raise SimsearchError(f"query image not found: {q}")
        else:  # PIL image or bytes
            to_embed.append(q)
    if to_embed:
        vectors.extend(index.embed(to_embed))
    mean = np.mean(l2_normalize(np.vstack(vectors)), axis=0)
    if not np.any(mean):
        raise SimsearchError("the query items cancel out (their mean embedding is zero)")
    return l2_normalize(mean), self_ids


def search(
    index: Index,
    query,
    k: int = 10,
    *,
    exclude: Iterable[int] = (),
    exclude_query: bool = True,
    filter: dict | None = None,
) -> list[Hit]:
    """Nearest neighbours of ``query`` (see :func:`resolve_query`), best first.

    Indexed items named in the query are left out of the results unless ``exclude_query=False``.
    """
    vector, self_ids = resolve_query(index, query)
    skip = set(int(i) for i in exclude) | (self_ids if exclude_query else set())
    return search_vectors(index, vector[None, :], k=k, exclude=skip, filter=filter)[0]


def recommend(
    index: Index,
    positive: Sequence = (),
    negative: Sequence = (),
    exclude: Iterable[int] = (),
    k: int = 20,
    *,
    negative_weight: float = 0.5,
    filter: dict | None = None,
) -> list[Hit]:
    """Items like the ``positive`` ones and unlike the ``negative`` ones (Rocchio: p - w·n), never ``exclude``.

    Positives and negatives may be ids, paths, images or vectors; indexed ones never appear in the results.
    """
    if not positive:
        raise SimsearchError("recommend needs at least one positive item")
    pos, pos_ids = resolve_query(index, list(positive))
    query = pos
    neg_ids: set[int] = set()
    if negative:
        neg, neg_ids = resolve_query(index, list(negative))
        query = pos - float(negative_weight) * neg
        if not np.any(query):
            query = pos
    skip = set(int(i) for i in exclude) | pos_ids | neg_ids
    return search_vectors(index, l2_normalize(query)[None, :], k=k, exclude=skip, filter=filter)[0]


def search_vectors(
    index: Index,
    vectors: np.ndarray,
    k: int = 10,
    *,
    exclude: Iterable[int] = (),
    filter: dict | None = None,
) -> list[list[Hit]]:
    """Batch search of unit vectors ``(n, dim)``; ``filter`` may hold ``label`` and/or ``path_prefix``."""
    import faiss

    vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if vectors.shape[1] != index.manifest.dim:
        raise SimsearchError(f"query vectors must have dim {index.manifest.dim}, not {vectors.shape[1]}")
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise SimsearchError(f"k must be between 1 and {MAX_K}, not {k}")
    exclude = np.array(sorted(set(int(i) for i in exclude)), dtype=np.int64)
    allowed = _filter_ids(index, filter)
    n_candidates = len(index) if allowed is None else len(allowed)
    k_eff = max(1, min(k, n_candidates))
    if len(index) == 0 or n_candidates == 0:
        return [[] for _ in range(len(vectors))]

    selectors = []
    if allowed is not None:
        selectors.append(faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed)))
    if len(exclude):
        selectors.append(faiss.IDSelectorNot(faiss.IDSelectorBatch(len(exclude), faiss.swig_ptr(exclude))))
    sel = None
    if len(selectors) == 1:
        sel = selectors[0]
    elif len(selectors) == 2:
        sel = faiss.IDSelectorAnd(*selectors)
    try:
        if sel is None:
            scores, ids = index.faiss.search(vectors, k_eff)
        else:
            scores, ids = index.faiss.search(vectors, k_eff, params=faiss.SearchParameters(sel=sel))
    except RuntimeError:  # index types without selector support: over-fetch and filter
        scores, ids = index.faiss.search(
            vectors, min(len(index), k_eff + len(exclude) + 64 if allowed is None else len(index))
        )
        keep = ~np.isin(ids, exclude) & (ids >= 0)
        if allowed is not None:
            keep &= np.isin(ids, allowed)
        scores = [s[m][:k_eff] for s, m in zip(scores, keep, strict=True)]
        ids = [i[m][:k_eff] for i, m in zip(ids, keep, strict=True)]
    del selectors  # the SWIG selectors must outlive the search call
    return [_hits(index, row_ids, row_scores) for row_ids, row_scores in zip(ids, scores, strict=True)]


def _hits(index: Index, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
    valid = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]
    items = {it.id: it for it in index.items(i for i, _ in valid)}
    out = []
    for i, s in valid:
        it = items.get(i)
        if it is None:
            continue
        out.append(Hit(len(out) + 1, i, round(s, 6), it.path, it.label, str(it.abspath)))
    return out


def _filter_ids(index: Index, filter: dict | None) -> np.ndarray | None:
    if not filter:
        return None
    unknown = set(filter) - {"label", "path_prefix"}
    if unknown:
        raise SimsearchError(f"unknown filter keys {sorted(unknown)}; use label and/or path_prefix")
    if filter.get("label") is None and not filter.get("path_prefix"):
        return None
    return index.ids_matching(label=filter.get("label"), path_prefix=filter.get("path_prefix"))
