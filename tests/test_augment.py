"""Collection-side augmentation (simsearch.augment), query expansion (simsearch.augment_query) and its spec (simsearch.config.augment)."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.augment import (
    KnnGraph,
    affected,
    augment,
    auto_k,
    background_similarity,
    index_search,
    knn_graph,
    update,
)
from simsearch.augment_query import expand_query, guarded_merge, guarded_rows, item_first
from simsearch.config.augment import AugmentSpec, AugmentSpecError

# a, b, c, d on the unit circle: cos(a,b) = 0.8, cos(b,c) = 0.6, cos(a,c) = 0, cos(c,d) = 0, cos(a,d) = -1
TINY = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], np.float32)
TINY_IDS = np.array([10, 11, 12, 13])


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x)


def clustered(n, dim=16, clusters=12, seed=0, spread=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_tiny_collection_one_neighbour_hand_computed():
    spec = AugmentSpec(k=1, power=1.0, rounds=1)
    got = augment(TINY, TINY_IDS, spec)
    expected = [
        unit([1 + 0.8 * 0.8, 0.8 * 0.6]),  # a + 0.8 b
        unit([0.8 + 0.8 * 1, 0.6 + 0]),  # b + 0.8 a
        unit([0.6 * 0.8, 1 + 0.6 * 0.6]),  # c + 0.6 b
        [-1.0, 0.0],  # d's nearest (c, cosine 0) weighs 0
    ]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tiny_collection_power_and_two_rounds_hand_computed():
    spec = AugmentSpec(k=2, power=3.0, rounds=2)
    graph = knn_graph(TINY, TINY_IDS, 2)
    assert graph.neighbors.tolist() == [[11, 12], [10, 12], [11, 10], [12, 11]]  # c: a and d tie at 0, lower id first
    np.testing.assert_allclose(graph.sims, [[0.8, 0.0], [0.8, 0.6], [0.6, 0.0], [0.0, -0.8]], atol=1e-6)
    a, b, c, d = (np.asarray(v, np.float64) for v in TINY)
    w8, w6 = 0.8**3, 0.6**3
    r1 = {"a": unit(a + w8 * b), "b": unit(b + w8 * a + w6 * c), "c": unit(c + w6 * b), "d": d}
    r2 = [
        unit(r1["a"] + w8 * r1["b"]),  # c weighs 0 ** 3
        unit(r1["b"] + w8 * r1["a"] + w6 * r1["c"]),
        unit(r1["c"] + w6 * r1["b"]),
        r1["d"],  # c weighs 0, b's negative cosine counts as 0
    ]
    np.testing.assert_allclose(augment(TINY, TINY_IDS, spec), r2, atol=1e-6)


def test_none_is_identity_everywhere():
    x = clustered(50)
    ids = np.arange(100, 150)
    none = AugmentSpec.none()
    np.testing.assert_array_equal(augment(x, ids, none), x)
    q = clustered(3, seed=9)
    np.testing.assert_array_equal(expand_query(q, np.ones((3, 5)), np.ones((3, 5, 16)), none), q)
    graph = knn_graph(x, ids, 10)
    upd = update(graph, x[:40], ids[:40], none)
    assert len(upd.ids) == 0 and upd.removed.tolist() == list(range(140, 150))


def test_graph_is_padded_for_tiny_collections():
    g = knn_graph(TINY[:2], TINY_IDS[:2], 4)
    assert g.neighbors.tolist() == [[11, -1, -1, -1], [10, -1, -1, -1]]
    assert np.isinf(g.sims[:, 1:]).all()
    one = augment(TINY[:1], TINY_IDS[:1], AugmentSpec())
    np.testing.assert_array_equal(one, TINY[:1])


def _apply(old_ids, old_aug, upd):
    """What a store does with an Update: drop removed ids, replace recomputed ones."""
    table = {int(i): v for i, v in zip(old_ids, old_aug)}
    for i in upd.removed:
        table.pop(int(i), None)
    for i, v in zip(upd.ids, upd.vectors):
        table[int(i)] = v
    return table


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_incremental_update_equals_from_scratch(rounds):
    spec = AugmentSpec(k=6, power=3.0, rounds=rounds)
    x = clustered(400, clusters=40, seed=1)
    ids = np.arange(1000, 1400)
    old = np.arange(300)  # the first collection: rows 0-299
    graph = knn_graph(x[old], ids[old], spec.k)
    aug0 = augment(x[old], ids[old], spec, graph=graph)
    # then: 20 removed, 5 re-embedded, 100 added (and the rows come in another order)
    removed = old[::15][:20]
    changed_rows = np.array([3, 50, 77, 120, 299])
    x2 = x.copy()
    x2[changed_rows] = clustered(5, seed=7)
    keep = np.setdiff1d(np.arange(400), removed)
    rng = np.random.default_rng(3)
    keep = rng.permutation(keep)  # the new collection in another order
    upd = update(graph, x2[keep], ids[keep], spec, changed=ids[changed_rows])

    scratch_graph = knn_graph(x2[keep], ids[keep], spec.k)
    np.testing.assert_array_equal(upd.graph.ids, scratch_graph.ids)
    np.testing.assert_array_equal(upd.graph.neighbors, scratch_graph.neighbors)
    np.testing.assert_array_equal(upd.graph.sims, scratch_graph.sims)
    scratch = augment(x2[keep], ids[keep], spec, graph=scratch_graph)
    table = _apply(ids[old], aug0, upd)
    assert sorted(table) == sorted(ids[keep].tolist())
    np.testing.assert_array_equal(np.stack([table[int(i)] for i in ids[keep]]), scratch)
    assert sorted(upd.removed.tolist()) == sorted(ids[removed].tolist())


def test_incremental_update_recomputes_only_what_changed():
    spec = AugmentSpec(k=5, rounds=2)
    x = clustered(1000, dim=32, clusters=100, seed=2, spread=0.2)
    ids = np.arange(1000)
    g = knn_graph(x[:990], ids[:990], 5)
    up = update(g, x, ids, spec)  # 10 added
    assert 10 < len(up.ids) < 200 and up.relisted < 100


def test_incremental_only_additions_and_only_removals():
    spec = AugmentSpec(k=5, rounds=2)
    x = clustered(200, seed=4)
    ids = np.arange(200)
    g = knn_graph(x[:150], ids[:150], 5)
    a = augment(x[:150], ids[:150], spec, graph=g)
    up = update(g, x, ids, spec)  # 50 added
    table = _apply(ids[:150], a, up)
    np.testing.assert_array_equal(np.stack([table[i] for i in range(200)]), augment(x, ids, spec))
    down = update(up.graph, x[:180], ids[:180], spec)  # 20 removed
    table = _apply(ids, np.stack([table[i] for i in range(200)]), down)
    np.testing.assert_array_equal(np.stack([table[i] for i in range(180)]), augment(x[:180], ids[:180], spec))
    same = update(down.graph, x[:180], ids[:180], spec)  # nothing changed: nothing recomputed
    assert len(same.ids) == 0 and len(same.removed) == 0 and same.relisted == 0


def test_approximate_update_with_ann_index():
    import faiss

    spec = AugmentSpec(k=5, rounds=2)
    x = clustered(600, dim=32, seed=5)
    ids = np.arange(600)
    quantizer = faiss.IndexFlatIP(32)
    ivf = faiss.IndexIVFFlat(quantizer, 32, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.nprobe = 8  # all lists: the ANN search is exact here
    index = faiss.IndexIDMap2(ivf)
    index.add_with_ids(x[:500], ids[:500])
    g = knn_graph(x[:500], ids[:500], 5, search=index_search(index))
    assert np.array_equal(g.neighbors, knn_graph(x[:500], ids[:500], 5).neighbors)
    index.add_with_ids(x[500:], ids[500:])
    up = update(g, x, ids, spec, search=index_search(index), exact=False)
    scratch = knn_graph(x, ids, 5)
    same_rows = (up.graph.neighbors == scratch.neighbors).all(axis=1).mean()
    assert same_rows > 0.9  # entrants found among the new items' nearest only: approximate
    exact = update(g, x, ids, spec, search=index_search(index), exact=True)
    np.testing.assert_array_equal(exact.graph.neighbors, scratch.neighbors)


def test_affected_follows_rounds():
    g = KnnGraph(
        np.array([1, 2, 3, 4]),
        np.array([[2, -1], [3, -1], [4, -1], [1, -1]]),
        np.array([[0.9, -np.inf]] * 4, np.float32),
    )
    assert affected(g, [4], rounds=1).tolist() == [4]
    assert affected(g, [4], rounds=2).tolist() == [3, 4]
    assert affected(g, [4], rounds=3).tolist() == [2, 3, 4]


def test_expand_query_hand_computed():
    spec = AugmentSpec(k=2, power=2.0)
    q = np.array([[1.0, 0.0]], np.float32)
    sims = np.array([[0.5, -0.2, 0.9]], np.float32)  # only the first k = 2 count; negative weighs 0
    vecs = np.array([[[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]], np.float32)
    np.testing.assert_allclose(expand_query(q, sims, vecs, spec), [unit([1.0, 0.25])], atol=1e-6)
    off = AugmentSpec(expand_queries=False)
    np.testing.assert_array_equal(expand_query(q, sims, vecs, off), q)


def test_guarded_merge_and_item_first():
    raw = np.array([5, 6, 7, 8])
    aug = np.array([9, 6, 1, 5, 2, -1])
    assert guarded_merge(raw, aug, 2, 10).tolist() == [5, 6, 9, 1, 2]
    assert guarded_merge(raw, aug, 2, 3, first=9).tolist() == [9, 5, 6]
    assert guarded_merge(raw, aug, 0, 3).tolist() == [9, 6, 1]
    assert guarded_merge(raw, aug, 2, 10, first=6).tolist() == [6, 5, 9, 1, 2]
    rows = guarded_rows(np.stack([raw, raw, raw]), np.stack([aug, aug, aug]), 2, np.array([9, 6, 5]))
    assert rows.tolist() == [[9, 5, 6, 1, 2, -1], [6, 5, 9, 1, 2, -1], [5, 6, 9, 1, 2, -1]]
    assert guarded_rows(raw[None], aug[None], 0).tolist() == [aug.tolist()]
    spec = AugmentSpec(item_first=0.05)
    assert item_first(5, 0.90, 9, 0.88, spec) == 9
    assert item_first(5, 0.95, 9, 0.80, spec) == 5
    assert item_first(5, 0.90, 9, 0.88, AugmentSpec(item_first=None)) == 5


def test_auto_k_reads_the_neighbourhood_size():
    rng = np.random.default_rng(0)

    def groups(size, count, dim=64, spread=0.25):
        centres = rng.normal(size=(count, dim))
        x = np.repeat(centres, size, axis=0) + spread * rng.normal(size=(size * count, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    for size, lo, hi in ((3, 1, 2), (30, 8, 20)):
        x = groups(size, 300 // size)
        g = knn_graph(x, np.arange(len(x)), 20)
        k = auto_k(g, background_similarity(x))
        assert lo <= k <= hi, (size, k)


def test_spec_validation_and_round_trip():
    spec = AugmentSpec()
    assert AugmentSpec.from_dict(spec.to_dict()) == spec
    assert AugmentSpec.from_dict(None) == AugmentSpec.none()
    assert not AugmentSpec.none().enabled
    assert AugmentSpec.parse("none") == AugmentSpec.none()
    p = AugmentSpec.parse("dba:k=5,power=2,rounds=1,expand-queries=off")
    assert (p.k, p.power, p.rounds, p.expand_queries) == (5, 2.0, 1, False)
    assert AugmentSpec.parse("dba:k=auto").k == "auto"
    assert AugmentSpec(k="auto").resolved(7).k == 7
    for bad in (
        {"method": "diffusion"},
        {"k": 0},
        {"k": "many"},
        {"k": True},
        {"power": -1},
        {"power": float("nan")},
        {"rounds": 0},
        {"guard": -1},
        {"expand_queries": "yes"},
    ):
        with pytest.raises(AugmentSpecError):
            AugmentSpec(**bad)
    for text in ("dba:k", "dba:colour=red", "dba:k=ten"):
        with pytest.raises(AugmentSpecError):
            AugmentSpec.parse(text)
    with pytest.raises(AugmentSpecError, match="newer simsearch"):
        AugmentSpec.from_dict({**spec.to_dict(), "future": 1})
