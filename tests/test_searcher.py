"""simsearch.searcher and the batched path of search_vectors: rows searched together give what each row
searched alone gives (ids, order, scores, ranks), with exclusions, filters (searched row by row) and rules."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from simsearch.backbones import l2_normalize
from simsearch.config import BatchSpec
from simsearch.search import Rules, search_vectors
from simsearch.searcher import Searcher


def _queries(idx, n: int = 8) -> np.ndarray:
    _, vecs = idx.vectors()
    rng = np.random.default_rng(3)
    q = np.vstack([vecs, vecs])[:n] + rng.normal(0, 0.05, (n, vecs.shape[1])).astype(np.float32)
    return l2_normalize(q)


def _same(together, alone):
    assert [[h.id for h in row] for row in together] == [[h.id for h in row] for row in alone]
    assert [[h.rank for h in row] for row in together] == [[h.rank for h in row] for row in alone]
    for r1, r2 in zip(together, alone, strict=True):
        assert [h.score for h in r1] == pytest.approx([h.score for h in r2], abs=1e-5)
        assert [(h.key, h.attributes, h.path) for h in r1] == [(h.key, h.attributes, h.path) for h in r2]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"exclude": [0, 3]},
        {"exclude": list(range(6))},
        {"filter": {"label": "cats"}},
        {"filter": 'label = "dogs"'},
        {"rules": Rules(max_per={"label": 1})},
    ],
)
@pytest.mark.parametrize("k", [1, 3, 8, 50])
def test_rows_together_give_each_rows_own_results(built_index, options, k):
    q = _queries(built_index)
    together = search_vectors(built_index, q, k, **options)
    alone = [search_vectors(built_index, row[None, :], k, **options)[0] for row in q]
    _same(together, alone)


def test_searcher_answers_like_search_vectors_under_concurrency(built_index):
    q = _queries(built_index, 16)
    searcher = Searcher(BatchSpec(linger_s=0.001))
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        results[i] = searcher.search(built_index, q[i], 3, exclude=[i % 4])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    searcher.close()
    want = [search_vectors(built_index, q[i][None, :], 3, exclude=[i % 4])[0] for i in range(16)]
    _same([results[i] for i in range(16)], want)
    assert searcher.queries == 16 and 1 <= searcher.batches <= 16


def test_the_searcher_checks_each_submitted_vector_on_its_own(built_index):
    """Rows reach the batch as unit vectors: a scaled query gives the unit query's results, a bad one fails in
    its own caller (not the batch it would have joined)."""
    from simsearch.errors import SimsearchError

    q = _queries(built_index, 2)
    searcher = Searcher(BatchSpec())
    try:
        unit = searcher.search(built_index, q[0], 5)
        scaled = searcher.search(built_index, q[0] * 37.5, 5)
        assert [h.id for h in scaled] == [h.id for h in unit]
        assert [h.score for h in scaled] == pytest.approx(
            [h.score for h in unit], abs=2e-6
        )  # scores are rounded to 6 places
        assert [h.id for h in unit] == [h.id for h in search_vectors(built_index, q[:1], k=5)[0]]
        for bad in (np.zeros_like(q[0]), np.full_like(q[0], np.nan)):
            with pytest.raises(SimsearchError, match=r"non-zero|finite"):
                searcher.submit(built_index, bad, 5)
        assert [h.id for h in searcher.search(built_index, q[1], 5)] == [
            h.id for h in search_vectors(built_index, q[1:2], k=5)[0]
        ]
    finally:
        searcher.close()
