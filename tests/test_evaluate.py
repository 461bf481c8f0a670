"""Retrieval metrics on hand-computed examples, exact k-NN, class splits, labels CSV and evaluate_index."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch import SimsearchError, evaluate_index, map_at_r, recall_at_k, retrieval_metrics
from simsearch.evaluate import exact_knn, read_labels_csv, select_classes

# A 6-item toy: classes a (3 items), b (2 items), c (1 item). Row i lists i's neighbours, best first (never i).
LABELS = np.array(["a", "a", "a", "b", "b", "c"])
NEIGHBORS = np.array(
    [
        [1, 3, 2, 4, 5],  # a: a b a ...
        [3, 0, 2, 4, 5],  # a: b a a ...
        [0, 1, 3, 4, 5],  # a: a a ...
        [4, 0, 1, 2, 5],  # b: b ...
        [0, 3, 1, 2, 5],  # b: a b ...
        [0, 3, 1, 2, 4],  # c: the only c, nothing relevant
    ]
)


def test_recall_at_k_by_hand():
    # first same-label neighbour at rank: 1, 2, 1, 1, 2, never
    r = recall_at_k(LABELS, NEIGHBORS, ks=(1, 2, 5))
    assert r[1] == pytest.approx(3 / 6)
    assert r[2] == pytest.approx(5 / 6)
    assert r[5] == pytest.approx(5 / 6)


def test_map_at_r_by_hand():
    # R = 2 for a, 1 for b, 0 for c (left out of the mean). AP@R = sum of precision at relevant ranks <= R, / R
    ap = [
        (1 / 1) / 2,  # a: hit at 1, miss at 2
        (1 / 2) / 2,  # a: miss at 1, hit at 2 → precision 1/2
        (1 / 1 + 2 / 2) / 2,  # a: both
        1.0,  # b: hit at 1
        0.0,  # b: miss at 1 (the hit at rank 2 is beyond R)
    ]
    assert map_at_r(LABELS, NEIGHBORS) == pytest.approx(sum(ap) / 5)
    assert map_at_r(LABELS, NEIGHBORS) == pytest.approx(0.55)
    perfect = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [4, 0, 1], [3, 0, 1], [0, 1, 2]])
    assert map_at_r(LABELS, perfect) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least R columns"):
        map_at_r(LABELS, NEIGHBORS[:, :1])


def test_exact_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((7, 8)).astype(np.float32)
    scores, idx = exact_knn(q, db, 5, block=3)
    sims = q @ db.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5)
    # leave-one-out over the database itself
    scores, idx = exact_knn(db, db, 4, exclude_self=True, block=16)
    assert not (idx == np.arange(50)[:, None]).any()
    sims = db @ db.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-sims, axis=1, kind="stable")[:, :4])
    # k larger than the database is clipped
    assert exact_knn(q, db[:3], 10)[1].shape == (7, 3)
    assert exact_knn(db[:3], db[:3], 10, exclude_self=True)[1].shape == (3, 2)


def test_exact_knn_breaks_ties_by_lower_index():
    db = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
    scores, idx = exact_knn(np.array([[1, 0]], np.float32), db, 3)
    assert idx.tolist() == [[0, 2, 3]] and scores.tolist() == [[1, 1, 1]]


def test_retrieval_metrics_on_constructed_vectors():
    # two tight clusters far apart, and one point of cluster x placed inside cluster y
    x = [[1, 0.01 * i] for i in range(4)]
    y = [[0.01 * i, 1] for i in range(3)]
    vecs = np.array(x + y + [[0.015, 1]], np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = ["x"] * 4 + ["y"] * 3 + ["x"]
    m = retrieval_metrics(vecs, labels, ks=(1, 5))
    assert (m["items"], m["classes"], m["singleton_classes"]) == (8, 2, 0)
    # misses at rank 1: the misplaced x (nearest: y1 or y2), and y1 and y2 (nearest: the misplaced x)
    assert m["recall@1"] == pytest.approx(round(5 / 8, 4))
    assert m["recall@5"] == 1.0
    with pytest.raises(SimsearchError, match="two classes"):
        retrieval_metrics(vecs[:3], ["x"] * 3)
    with pytest.raises(ValueError, match="one label per vector"):
        retrieval_metrics(vecs, labels[:-1])


def test_select_classes_halves():
    labels = ["e", "a", "c", "b", "d", "a", "c"]
    first, second = select_classes(labels, "first-half"), select_classes(labels, "second-half")
    assert first == {"a", "b"} and second == {"c", "d", "e"}  # an odd count: the second half is the larger
    assert first | second == select_classes(labels, "all") == set(labels)
    assert select_classes(["p", "q"], "first-half") == {"p"}
    assert select_classes(["p", "q"], "second-half") == {"q"}
    with pytest.raises(SimsearchError, match="first-half"):
        select_classes(labels, "middle")


def test_read_labels_csv_relative_and_absolute(tmp_path):
    sub = tmp_path / "data"
    sub.mkdir()
    absolute = tmp_path / "elsewhere" / "z.jpg"
    (sub / "labels.csv").write_text(f"path,label,split\nimgs/a.jpg,cat,train\n../b.jpg,dog,test\n{absolute},fox,x\n")
    got = read_labels_csv(sub / "labels.csv")
    assert got == {
        (sub / "imgs" / "a.jpg").resolve(): "cat",
        (tmp_path / "b.jpg").resolve(): "dog",
        absolute.resolve(): "fox",
    }
    (sub / "bad.csv").write_text("file,class\na.jpg,cat\n")
    with pytest.raises(SimsearchError, match="'path' and 'label'"):
        read_labels_csv(sub / "bad.csv")
    with pytest.raises(SimsearchError, match="cannot read labels file"):
        read_labels_csv(sub / "missing.csv")


# ----------------------------------------------------------------------------- evaluate_index (colour index)


def test_evaluate_index_with_folder_labels(color_index):
    r = evaluate_index(color_index)
    # every colour's nearest neighbours are the other two shades of its hue
    assert (r["items"], r["classes"], r["unlabelled"]) == (9, 3, 0)
    assert r["recall@1"] == 1.0 and r["map@r"] == 1.0
    assert r["split"] == "all" and r["excluded_labels"] == []
    r = evaluate_index(color_index, exclude_labels=["blue"])
    assert (r["items"], r["classes"], r["excluded_labels"]) == (6, 2, ["blue"])
    r = evaluate_index(color_index, classes="second-half")  # sorted: blue | green, red
    assert (r["items"], r["classes"], r["split"]) == (6, 2, "second-half")
    with pytest.raises(SimsearchError, match="two classes"):
        evaluate_index(color_index, classes="first-half")  # blue only


def test_evaluate_index_with_labels_csv(color_index, tmp_path):
    """Labels from a CSV that puts the dark red r3 in class g with the greens, and leaves the blues out.

    Database: r1 r2 (class r), r3 g1 g2 g3 (class g). Cosine similarities of the colours decide, by hand:
    r1→r2, r2→r1 (hits, AP 1); r3→r1, r2, then g2 (AP@3 = (1/3)/3 = 1/9); each green → the two other greens,
    then r2 (AP@3 = 2/3). Recall@1 = 5/6, MAP@R = (1 + 1 + 1/9 + 3 * 2/3) / 6.
    """
    csv = tmp_path / "labels.csv"
    rows = ["path,label", "colors/red/r1.png,r", "colors/red/r2.png,r", "colors/red/r3.png,g"]
    rows += [f"colors/green/g{i}.png,g" for i in (1, 2, 3)]
    rows += [f"{tmp_path / 'nowhere.png'},r"]  # labels for files that are not indexed are ignored
    csv.write_text("\n".join(rows) + "\n")
    r = evaluate_index(color_index, labels_csv=csv)
    assert (r["items"], r["classes"], r["unlabelled"]) == (6, 2, 3)
    assert r["recall@1"] == pytest.approx(round(5 / 6, 4))
    assert r["recall@5"] == 1.0
    assert r["map@r"] == pytest.approx(round((2 + 1 / 9 + 2) / 6, 4))
    # leaving a class out
    with pytest.raises(SimsearchError, match="two classes"):
        evaluate_index(color_index, labels_csv=csv, exclude_labels=["r"])
    folder = evaluate_index(color_index, exclude_labels=["red"])
    assert folder["recall@1"] == 1.0 and folder["items"] == 6
    # nothing labelled at all
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(SimsearchError, match="no labelled items"):
        evaluate_index(color_index, labels_csv=empty)
