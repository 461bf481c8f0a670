"""Queries of every kind, filters and exclusions, checked against exact brute-force search; recommendations."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from conftest import copy_file, write_solid
from PIL import Image

from simsearch import SimsearchError, recommend, search
from simsearch.backbones import l2_normalize
from simsearch.search import Hit, check_vector, check_vectors, resolve_query, search_vectors

TOL = 1e-5


def brute_force(idx, q, exclude=(), allowed=None):
    """All (ids, scores) by exact inner product with numpy, best first."""
    ids, vecs = idx.vectors()
    scores = vecs @ np.asarray(q, np.float32)
    keep = ~np.isin(ids, list(exclude))
    if allowed is not None:
        keep &= np.isin(ids, list(allowed))
    ids, scores = ids[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def assert_exact(hits, idx, q, k, exclude=(), allowed=None):
    """``hits`` are a correct top-k: right scores in order, each id with its true score, untied ids all present."""
    ids, scores = brute_force(idx, q, exclude, allowed)
    n = min(k, len(ids))
    assert len(hits) == n
    assert [h.rank for h in hits] == list(range(1, n + 1))
    got = np.array([h.score for h in hits], np.float32)
    np.testing.assert_allclose(got, scores[:n], atol=TOL)
    true = dict(zip(ids.tolist(), scores.tolist()))
    for h in hits:
        assert h.id in true, f"{h.id} should have been excluded or filtered out"
        assert abs(true[h.id] - h.score) < TOL
    if n:
        boundary = scores[n - 1]
        must = {int(i) for i, s in zip(ids[:n], scores[:n]) if s > boundary + TOL}  # not tied with the k-th
        assert must <= {h.id for h in hits}
    assert len({h.id for h in hits}) == len(hits)


def ids_by_path(idx):
    return {it.path: it.id for it in idx.items()}


# ----------------------------------------------------------------------------- query kinds


def test_search_by_id_excludes_itself_and_is_exact(built_index):
    for item_id in built_index.ids().tolist():
        hits = search(built_index, item_id, k=5)
        assert item_id not in {h.id for h in hits}
        assert_exact(hits, built_index, built_index.vector(item_id), 5, exclude=[item_id])
    assert all(h1.score >= h2.score for h1, h2 in itertools.pairwise(hits))


def test_hits_describe_the_items(built_index):
    hits = built_index.search(0, k=7)
    for h in hits:
        item = built_index.item(h.id)
        assert (h.path, h.label, h.abspath) == (item.path, item.label, str(item.abspath))
        assert h.to_dict()["id"] == h.id
        # built without Hit's __init__ (see hits._new_hit): every field, in order, as Hit(...) would hold them
        assert list(vars(h)) == [f.name for f in dataclasses.fields(Hit)]
        assert h == Hit(**vars(h)) and repr(h) == repr(Hit(**vars(h)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            h.score = 0.0  # type: ignore[misc]
    assert len(hits) == 7


def test_search_without_excluding_the_query(built_index):
    hits = search(built_index, 3, k=2, exclude_query=False)
    assert hits[0].id == 3 and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_search_by_indexed_path(built_index):
    ids = ids_by_path(built_index)
    item = built_index.item(ids["cats/c2.jpg"])
    by_id = search(built_index, item.id, k=4)
    by_abs = search(built_index, item.abspath, k=4)
    by_str = search(built_index, str(item.abspath), k=4)
    by_rel = search(built_index, "cats/c2.jpg", k=4)
    assert by_id == by_abs == by_str == by_rel
    assert item.id not in {h.id for h in by_abs}


def test_search_by_new_image_file_pil_and_bytes(built_index, tmp_path):
    ids = ids_by_path(built_index)
    original = built_index.item(ids["dogs/d2.png"])
    copy = copy_file(original.abspath, tmp_path / "elsewhere" / "query.png")  # not an indexed path
    by_file = search(built_index, copy, k=3)
    assert by_file[0].id == original.id and by_file[0].score == pytest.approx(1.0, abs=1e-4)
    assert by_file[1].score < 0.999
    assert_exact(by_file, built_index, built_index.embed([copy])[0], 3)
    by_pil = search(built_index, Image.open(copy), k=3)
    by_bytes = search(built_index, copy.read_bytes(), k=3)
    assert [h.id for h in by_pil] == [h.id for h in by_bytes] == [h.id for h in by_file]
    np.testing.assert_allclose([h.score for h in by_pil], [h.score for h in by_file], atol=TOL)


def test_search_by_vector(built_index):
    v = built_index.vector(5)
    hits = search(built_index, v, k=3)
    assert hits[0].id == 5 and hits[0].score == pytest.approx(1.0, abs=1e-4)  # a vector names no item
    assert [h.id for h in search(built_index, 3.5 * v, k=3)] == [h.id for h in hits]  # normalised
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.standard_normal(built_index.manifest.dim).astype(np.float32)
        assert_exact(search(built_index, q, k=4), built_index, l2_normalize(q), 4)
    with pytest.raises(SimsearchError, match="shape"):
        search(built_index, np.ones(7, np.float32))
    with pytest.raises(SimsearchError, match="non-zero"):
        search(built_index, np.zeros(built_index.manifest.dim, np.float32))
    with pytest.raises(SimsearchError, match="finite"):
        search(built_index, np.full(built_index.manifest.dim, np.nan, np.float32))


def test_search_by_list_uses_the_mean(built_index, tmp_path):
    a, b = 1, 6
    q = l2_normalize(np.mean([built_index.vector(a), built_index.vector(b)], axis=0))
    hits = search(built_index, [a, b], k=4)
    assert {a, b}.isdisjoint(h.id for h in hits)
    assert_exact(hits, built_index, q, 4, exclude=[a, b])
    # an id and a new image file mixed
    outside = copy_file(built_index.item(b).abspath, tmp_path / "q.jpg")
    mixed = search(built_index, [a, outside], k=4)
    assert a not in {h.id for h in mixed}
    q2 = l2_normalize(np.mean([built_index.vector(a), built_index.embed([outside])[0]], axis=0))
    assert_exact(mixed, built_index, q2, 4, exclude=[a])
    assert search(built_index, (a, b), k=4) == hits


def test_exclude_list(built_index):
    full = search(built_index, 0, k=7)
    drop = [full[0].id, full[2].id]
    hits = search(built_index, 0, k=7, exclude=drop)
    assert [h.id for h in hits] == [h.id for h in full if h.id not in drop]
    assert_exact(hits, built_index, built_index.vector(0), 7, exclude=[0, *drop])


def test_filter_by_label_and_path_prefix(built_index):
    ids = ids_by_path(built_index)
    cats = {i for p, i in ids.items() if p.startswith("cats/")}
    q = built_index.vector(ids["dogs/d1.jpg"])
    hits = search(built_index, ids["dogs/d1.jpg"], k=10, filter={"label": "cats"})
    assert {h.id for h in hits} == cats and all(h.label == "cats" for h in hits)
    assert_exact(hits, built_index, q, 10, allowed=cats)
    two = search(built_index, ids["dogs/d1.jpg"], k=10, filter={"label": ["cats", "birds"]})
    assert {h.label for h in two} == {"cats", "birds"} and len(two) == 5
    dogs = search(built_index, ids["cats/c1.jpg"], k=10, filter={"path_prefix": "dogs/"})
    assert {h.path for h in dogs} == {"dogs/d1.jpg", "dogs/d2.png", "dogs/puppies/p1.jpg"}
    combined = search(
        built_index,
        ids["dogs/d1.jpg"],
        k=10,
        filter={"label": "dogs", "path_prefix": "dogs/"},
        exclude=[ids["dogs/d2.png"]],
    )
    assert combined == []  # d1 (the query) and d2 (excluded) are the only items labelled dogs
    assert search(built_index, 0, filter={"label": "no-such-label"}) == []
    assert search(built_index, 0, k=3, filter={"label": None, "path_prefix": None}) == search(built_index, 0, k=3)
    with pytest.raises(SimsearchError, match="unknown attribute"):
        search(built_index, 0, filter={"colour": "red"})


def test_k_larger_than_the_index_and_bad_k(built_index):
    assert len(search(built_index, 0, k=100)) == 7
    assert len(search(built_index, built_index.vector(0), k=100)) == 8
    with pytest.raises(SimsearchError, match="k must be"):
        search(built_index, 0, k=0)


def test_bad_queries(built_index, tmp_path):
    with pytest.raises(SimsearchError, match="no item with id 999"):
        search(built_index, 999)
    with pytest.raises(SimsearchError, match="not found"):
        search(built_index, tmp_path / "missing.jpg")
    with pytest.raises(SimsearchError, match="empty query"):
        search(built_index, [])
    v = built_index.vector(0)
    with pytest.raises(SimsearchError, match="cancel out"):
        resolve_query(built_index, [v, -v])


def test_search_vectors_batch_equals_single(built_index):
    _, vecs = built_index.vectors()
    batch = search_vectors(built_index, vecs[:4], k=3)
    assert len(batch) == 4
    for row, v in zip(batch, vecs[:4]):
        single = search_vectors(built_index, v, k=3)[0]
        # A batched BLAS product may differ from a single one in the last bit.
        assert [(h.rank, h.id, h.path) for h in row] == [(h.rank, h.id, h.path) for h in single]
        assert [h.score for h in row] == pytest.approx([h.score for h in single], abs=1e-5)
        assert_exact(row, built_index, v, 3)
    with pytest.raises(SimsearchError, match="dim"):
        search_vectors(built_index, np.ones((1, 3), np.float32))


def test_colour_queries_are_predictable(color_index, tmp_path):
    ids = ids_by_path(color_index)
    # a new orange-red image: nearest are the reds, in the order of their angle to it
    q = write_solid(tmp_path / "q.png", (250, 10, 5))
    hits = search(color_index, q, k=3)
    assert [h.path for h in hits] == ["red/r1.png", "red/r2.png", "red/r3.png"]
    hits = search(color_index, ids["green/g2.png"], k=2)
    assert [h.path for h in hits] == ["green/g1.png", "green/g3.png"]


# ----------------------------------------------------------------------------- recommend


PUSH = {
    "p/positive.png": (255, 0, 0),  # (1, 0, 0)
    "n/negative.png": (0, 0, 255),  # (0, 0, 1)
    "c/a.png": (255, 0, 128),  # (1, 0, 0.5): closest to the positive, but towards the negative
    "c/b.png": (255, 153, 0),  # (1, 0.6, 0): a bit further from the positive, away from the negative
    "c/c.png": (0, 255, 0),
    "c/d.png": (0, 51, 255),  # mostly the negative
}


def test_negative_pushes_results_away(make_color_index):
    idx = make_color_index(PUSH, "push")
    ids = ids_by_path(idx)
    pos, neg = ids["p/positive.png"], ids["n/negative.png"]
    plain = search(idx, pos, k=10)
    assert [h.path for h in plain[:2]] == ["c/a.png", "c/b.png"]
    rec = recommend(idx, positive=[pos], negative=[neg], k=10)
    paths = [h.path for h in rec]
    assert paths[:2] == ["c/b.png", "c/a.png"]  # the negative flipped the order
    assert paths[-1] == "c/d.png"
    assert {pos, neg}.isdisjoint(h.id for h in rec)
    # exact Rocchio query p - 0.5 n
    q = l2_normalize(idx.vector(pos) - 0.5 * idx.vector(neg))
    assert_exact(rec, idx, q, 10, exclude=[pos, neg])
    # without weight the negative only excludes itself
    same = recommend(idx, positive=[pos], negative=[neg], k=10, negative_weight=0.0)
    assert [h.id for h in same] == [h.id for h in plain if h.id != neg]
    assert [h.path for h in recommend(idx, positive=[pos], negative=[neg], exclude=[ids["c/b.png"]], k=1)] == [
        "c/a.png"
    ]


def test_recommend_never_returns_positive_negative_or_excluded(built_index, tmp_path):
    all_ids = set(built_index.ids().tolist())
    positive, negative, exclude = [0, 4], [2], [5, 7]
    rec = built_index.recommend(positive=positive, negative=negative, exclude=exclude, k=100)
    assert {h.id for h in rec} == all_ids - {0, 4, 2, 5, 7}
    q = l2_normalize(
        l2_normalize(np.mean([built_index.vector(0), built_index.vector(4)], axis=0)) - 0.5 * built_index.vector(2)
    )
    assert_exact(rec, built_index, q, 100, exclude=[0, 2, 4, 5, 7])
    # positives and negatives given as indexed paths are excluded too
    p = built_index.item(1).abspath
    n = built_index.item(3).path
    rec = recommend(built_index, positive=[p], negative=[n], k=100)
    assert {h.id for h in rec} == all_ids - {1, 3}
    # a new image as positive is not an item: nothing to exclude
    new = copy_file(built_index.item(6).abspath, tmp_path / "new.jpg")
    rec = recommend(built_index, positive=[new], k=1)
    assert rec[0].id == 6
    with pytest.raises(SimsearchError, match="at least one positive"):
        recommend(built_index, positive=[], negative=[1])


def test_query_vectors_are_normalised_row_by_row():
    """Any finite non-zero row becomes a unit float32 row in its own direction, the same alone or in a batch
    (huge and tiny rows take a rescaling path; the usual ones one division)."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((6, 32))
    rows[1] *= 1e200  # its square overflows float64
    rows[2] *= 1e-200  # its square underflows
    rows[4] = np.float32(3.0e38)  # the largest float32 values
    out = check_vectors(rows, 32)
    assert out.dtype == np.float32 and out.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)
    for i, row in enumerate(rows):
        assert np.array_equal(check_vectors(rows[i : i + 1], 32)[0], out[i])
        assert np.array_equal(check_vector(row, 32), out[i])
        np.testing.assert_allclose(out[i], row / np.linalg.norm(row / np.abs(row).max()) / np.abs(row).max(), 1e-6)
    for bad, words in (
        (np.zeros(32), "non-zero"),
        (np.full(32, np.nan), "finite"),
        (np.r_[np.inf, np.ones(31)], "finite"),
    ):
        with pytest.raises(SimsearchError, match=words):
            check_vectors(np.vstack([rows[0], bad]), 32)
    with pytest.raises(SimsearchError, match="dim 32"):
        check_vectors(np.ones((2, 31)), 32)
    assert check_vectors(np.empty((0, 32)), 32).shape == (0, 32)


def test_search_vectors_with_each_rows_own_exclusions(built_index):
    ids, vecs = built_index.vectors()
    own = [[int(ids[0])], [], [int(i) for i in ids[:5]], ["no-such-key", 10**9]]
    rows = search_vectors(built_index, vecs[:4], k=3, exclude=[int(ids[6])], exclude_per_row=own)
    for v, mine, row in zip(vecs[:4], own, rows, strict=True):
        alone = search_vectors(built_index, v, k=3, exclude=[int(ids[6]), *mine])[0]
        assert [h.score for h in row] == pytest.approx([h.score for h in alone], abs=1e-5)
        assert not {h.id for h in row} & {int(ids[6]), *mine}
        assert_exact(row, built_index, v, 3, exclude=[int(ids[6]), *(i for i in mine if isinstance(i, int))])
    with pytest.raises(SimsearchError, match="2 entries for 4"):
        search_vectors(built_index, vecs[:4], k=3, exclude_per_row=[[], []])
