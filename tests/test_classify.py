"""Labels from neighbours: the vote by hand, classify, audit, the classification evaluation, its files and the CLI.

The indexes are solid-colour images embedded as their colour (conftest's ``ColorEngine``), so every similarity is
a cosine between two RGB triples and every vote can be worked out by hand.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import COLORS
from PIL import Image

from simsearch import SimsearchError
from simsearch.audit import audit
from simsearch.classify import UNKNOWN, classify, decide, field_values, vote_shares
from simsearch.classify_eval import classification_metrics, evaluate_classification, parse_queries
from simsearch.classify_report import confusion_png, write_audit_gallery, write_classification_report
from simsearch.cli import main

# a: red and yellow, b: magenta and a pale cyan, c: blue; u.png (almost red) has no label and never votes
HAND = {
    "a/a1.png": (255, 0, 0),
    "a/a2.png": (255, 255, 0),
    "b/b1.png": (255, 0, 255),
    "b/b2.png": (60, 255, 255),
    "c/c1.png": (0, 0, 255),
    "u.png": (250, 5, 0),
}


def cos(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def ids_by_path(idx) -> dict[str, int]:
    return {it.path: it.id for it in idx.items()}


@pytest.fixture
def hand_index(make_color_index):
    return make_color_index(HAND, name="hand")


# ------------------------------------------------------------------------------ the vote, pure


def test_vote_shares_by_hand():
    # equal similarities: shares are the counts; -1 (no neighbour) never votes; an empty row is all zeros
    labels = np.array([[0, 1, 0], [2, -1, -1], [-1, -1, -1]])
    scores = np.array([[0.5, 0.5, 0.5], [0.9, 0.8, 0.7], [0.0, 0.0, 0.0]])
    shares = vote_shares(labels, scores, 3)
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3, 0], [0, 0, 1], [0, 0, 0]])
    # weights exp(s / T): with T = 0.1, scores 0.9 (class 0) against 0.8 + 0.8 (class 1)
    shares = vote_shares(np.array([[0, 1, 1]]), np.array([[0.9, 0.8, 0.8]]), 2, temperature=0.1)
    e9, e8 = math.exp(9), math.exp(8)
    np.testing.assert_allclose(shares, [[e9 / (e9 + 2 * e8), 2 * e8 / (e9 + 2 * e8)]])
    assert shares[0, 0] == pytest.approx(0.576117, abs=1e-6)
    # a large temperature tends to plain counting
    np.testing.assert_allclose(vote_shares(np.array([[0, 1, 1]]), np.array([[0.9, 0.1, 0.1]]), 2, temperature=1e6),
                               [[1 / 3, 2 / 3]], atol=1e-5)  # fmt: skip
    with pytest.raises(SimsearchError, match="temperature"):
        vote_shares(labels, scores, 3, temperature=0)


def test_decide_ties_and_threshold():
    pred, conf = decide(np.array([[0.5, 0.5], [0.2, 0.8], [0.0, 0.0]]), 0.6)
    assert pred.tolist() == [-1, 1, -1] and conf.tolist() == [0.5, 0.8, 0.0]
    assert decide(np.array([[0.5, 0.5]]))[0].tolist() == [0]  # a tie goes to the first class by name


def test_classification_metrics_by_hand():
    # class 0: one right, one taken for 1; class 1: both right; class 2: left unknown
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, -1], 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    np.testing.assert_allclose(m["precision"], [1, 2 / 3, 0])
    np.testing.assert_allclose(m["recall"], [1 / 2, 1, 0])
    np.testing.assert_allclose(m["f1"], [2 / 3, 0.8, 0])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 3)
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert m["unknown_per_class"].tolist() == [0, 0, 1]
    assert m["confusion"].sum() + m["unknown_per_class"].sum() == 5


# ------------------------------------------------------------------------------ classify on a hand-made index


def test_classify_image_by_hand(hand_index):
    # a red photo: u.png (unlabelled) is nearest but does not vote; then a1 (cos 1), a2 and b1 (cos 1/sqrt 2)
    (r,) = classify(hand_index, [Image.new("RGB", (16, 16), (255, 0, 0))], k=3, temperature=1.0, min_confidence=0)
    w1, w2 = math.exp(1.0), math.exp(1 / math.sqrt(2))
    assert r.label == "a" and r.confidence == pytest.approx((w1 + w2) / (w1 + 2 * w2), abs=1e-5)
    assert r.confidence == pytest.approx(0.700627, abs=1e-5)
    assert [(v.label, v.neighbors) for v in r.votes] == [("a", 2), ("b", 1)]
    assert r.votes[1].share == pytest.approx(w2 / (w1 + 2 * w2), abs=1e-5)
    assert {n.label for n in r.neighbors} == {"a", "b"} and len(r.neighbors) == 3
    assert r.item_id is None and r.query == "image 0"
    # below the threshold the answer is unknown, with the votes still shown
    (r,) = classify(hand_index, [Image.new("RGB", (16, 16), (255, 0, 0))], k=3, temperature=1.0, min_confidence=0.75)
    assert r.label == UNKNOWN and r.votes[0].label == "a"
    # the default temperature (0.07) lets the nearest neighbour dominate
    (r,) = classify(hand_index, [Image.new("RGB", (16, 16), (255, 0, 0))], k=3)
    x = math.exp((1 / math.sqrt(2) - 1) / 0.07)
    assert r.label == "a" and r.confidence == pytest.approx((1 + x) / (1 + 2 * x), abs=1e-5)  # 0.985


def test_classify_item_is_voted_on_by_the_others(hand_index):
    ids = ids_by_path(hand_index)
    # a1 by id: its voters are a2 and b1 (1/sqrt 2) and b2; never a1 itself
    (r,) = classify(hand_index, [ids["a/a1.png"]], k=3, temperature=1.0, min_confidence=0)
    wa2, wb1, wb2 = (math.exp(cos((255, 0, 0), HAND[p])) for p in ("a/a2.png", "b/b1.png", "b/b2.png"))
    assert r.item_id == ids["a/a1.png"] and r.query == f"item {ids['a/a1.png']}"
    assert ids["a/a1.png"] not in [n.id for n in r.neighbors]
    assert r.label == "b" and r.confidence == pytest.approx((wb1 + wb2) / (wa2 + wb1 + wb2), abs=1e-5)
    # the same item given by its file's path: the file is recognised and left out of its own vote
    (p,) = classify(hand_index, [str(hand_index.manifest.roots[0] + "/a/a1.png")], k=3, temperature=1.0)
    assert [n.id for n in p.neighbors] == [n.id for n in r.neighbors]
    assert p.confidence == pytest.approx(r.confidence, abs=1e-5)
    # and by its key (in a folder index: the photo's relative path)
    (q,) = classify(hand_index, ["a/a1.png"], k=3, temperature=1.0)
    assert q.item_id == ids["a/a1.png"] and [n.id for n in q.neighbors] == [n.id for n in r.neighbors]


def test_classify_bytes_vector_and_batch(hand_index, tmp_path):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 250)).save(buf, "PNG")
    vec = np.zeros(hand_index.manifest.dim, np.float32)
    vec[1] = 1.0  # pure green: nearest a2 (yellow, cos 0.707), then b2 (pale cyan, cos 0.696)
    out = classify(hand_index, [buf.getvalue(), vec], k=1)
    assert [r.label for r in out] == ["c", "a"] and [r.query for r in out] == ["image 0", "vector 1"]
    assert out[1].neighbors[0].id == ids_by_path(hand_index)["a/a2.png"]


def test_field_values_and_bad_input(hand_index, make_color_index):
    values = field_values(hand_index)
    assert sorted(values.values()) == ["a", "a", "b", "b", "c"]  # u.png has no label
    with pytest.raises(SimsearchError, match="unknown field 'color'"):
        classify(hand_index, [0], field="color")
    for k in (0, -1, 1.5):
        with pytest.raises(SimsearchError, match="k must be"):
            classify(hand_index, [0], k=k)
    with pytest.raises(SimsearchError, match="min_confidence"):
        classify(hand_index, [0], min_confidence=1.5)
    with pytest.raises(SimsearchError, match="no item with id 999"):
        classify(hand_index, [999])
    with pytest.raises(SimsearchError, match="neither an item key"):
        classify(hand_index, ["/no/such.jpg"])
    with pytest.raises(SimsearchError, match="nothing to classify"):
        classify(hand_index, [])
    bare = make_color_index({"x.png": (255, 0, 0), "y.png": (0, 255, 0)}, name="bare")
    for call in (lambda: classify(bare, [0]), lambda: audit(bare), lambda: evaluate_classification(bare)):
        with pytest.raises(SimsearchError, match=r"no item .* has a 'label'") as e:
            call()
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ audit and evaluation


@pytest.fixture
def colors_with_a_mistake(make_color_index):
    """conftest's 3 red, 3 green, 3 blue, and a red square filed under green."""
    return make_color_index({**COLORS, "green/g4.png": (240, 10, 10)}, name="mistake")


def test_audit_finds_the_mislabelled_item(colors_with_a_mistake, tmp_path):
    idx = colors_with_a_mistake
    suspects = audit(idx, k=3)
    assert [(s.path, s.label, s.suggested) for s in suspects] == [("green/g4.png", "green", "red")]
    s = suspects[0]
    assert s.confidence == 1.0 and s.own_share == 0.0 and len(s.neighbors) == 3
    assert {n.label for n in s.neighbors} == {"red"} and s.id not in [n.id for n in s.neighbors]
    assert audit(idx, k=3, exclude_labels=["green"]) == []
    page = write_audit_gallery(tmp_path / "audit.html", idx, suspects).read_text()
    assert "green/g4.png" in page and page.count("data:image/jpeg;base64") == 4


def test_evaluation_leave_one_out_and_split(colors_with_a_mistake, tmp_path):
    idx = colors_with_a_mistake
    ev = evaluate_classification(idx, k=3)
    assert ev.protocol == "leave-one-out" and ev.queries == 10 and ev.classes == ("blue", "green", "red")
    assert int(ev.confusion.sum() + ev.unknown_per_class.sum()) == ev.queries
    assert ev.accuracy == pytest.approx(0.9)  # only g4 is wrong (taken for red)
    assert ev.top_confusions() == [{"true": "green", "predicted": "red", "count": 1}]
    # new-query protocol: the split column of a labels CSV
    root = idx.manifest.roots[0]
    test_rows = {"red/r1.png", "green/g1.png", "blue/b1.png", "green/g4.png"}
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for rel in [*COLORS, "green/g4.png"]:
            w.writerow([f"{root}/{rel}", rel.split("/")[0], "test" if rel in test_rows else "train"])
    ev = evaluate_classification(idx, k=2, labels_csv=tmp_path / "labels.csv", queries="split=test")
    assert (ev.queries, ev.references) == (4, 6)
    assert int(ev.confusion.sum() + ev.unknown_per_class.sum()) == 4
    assert ev.accuracy == pytest.approx(0.75) and ev.confusion.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    files = write_classification_report(tmp_path / "report", ev, index_path=str(idx.path))
    with Image.open(files["confusion_png"]) as im:
        assert im.size[0] > 50 and im.size[1] > 50
    assert "data:image/png;base64" in Path(files["html"]).read_text()
    rows = list(csv.reader(Path(files["confusion_csv"]).read_text().splitlines()))
    assert rows[0] == ["true \\ predicted", "blue", "green", "red", "unknown"]
    assert rows[2] == ["green", "0", "1", "1", "0"]
    with pytest.raises(SimsearchError, match="FIELD=VALUE"):
        parse_queries("split")
    with pytest.raises(SimsearchError, match="no labelled item has split=holdout"):
        evaluate_classification(idx, labels_csv=tmp_path / "labels.csv", queries="split=holdout")
    with pytest.raises(SimsearchError, match="unknown field 'split'"):
        evaluate_classification(idx, queries="split=test")  # no CSV, and the index has no such field


def test_confusion_png_draws_counts_and_unknown():
    png = confusion_png(["x", "y"], np.array([[3, 1], [0, 2]]), np.array([0, 1]))
    import io

    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] * 0.8  # three columns: x, y, unknown


# ------------------------------------------------------------------------------ command line


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def test_cli_classify_audit_evaluate(colors_with_a_mistake, tmp_path):
    path = colors_with_a_mistake.path
    ids = ids_by_path(colors_with_a_mistake)
    data = json.loads(run("classify", path, "--id", ids["green/g4.png"], "--id", ids["blue/b1.png"], "-k", 3,
                          "--json").stdout)  # fmt: skip
    assert [r["label"] for r in data["results"]] == ["red", "blue"]
    text = run("classify", path, "--key", "green/g4.png", "-k", 3).stdout
    assert "green/g4.png  red" in text and "confidence" in text
    data = json.loads(run("audit", path, "-k", 3, "--json", "--html", tmp_path / "a.html").stdout)
    assert data["total"] == 1 and data["suspects"][0]["path"] == "green/g4.png" and (tmp_path / "a.html").exists()
    data = json.loads(run("evaluate", path, "--classify", "-k", 3, "--report", tmp_path / "rep", "--json").stdout)
    assert data["queries"] == 10 and data["accuracy"] == pytest.approx(0.9)
    assert (tmp_path / "rep" / "confusion.png").exists() and (tmp_path / "rep" / "report.html").exists()
    assert "recall@1" in json.loads(run("evaluate", path, "--json").stdout)  # without --classify: retrieval as before
    for args, message in [
        (["classify", path, "--id", 0, "-k", 0], "k must be"),
        (["classify", path, "--id", 0, "--field", "color"], "unknown field 'color'"),
        (["classify", path], "give an image"),
        (["audit", path, "--min-confidence", 2], "min_confidence"),
        (["evaluate", path, "-k", 3], "-k: only with --classify"),
        (["evaluate", path, "--classify", "--queries", "split"], "FIELD=VALUE"),
    ]:
        r = run(*args, ok=False)
        assert r.exit_code == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_any_attribute_can_be_voted_on(color_index):
    import simsearch
    from simsearch.compact import compact_index

    for rel in COLORS:  # reds are warm, blues cool, greens have no shade
        if not rel.startswith("green/"):
            color_index.patch(rel, {"shade": "warm" if rel.startswith("red/") else "cool"})
    compact_index(color_index.path)
    with simsearch.open_index(color_index.path, embedder_options=color_index.embedder_options) as idx:
        (r,) = classify(idx, [Image.new("RGB", (8, 8), (0, 250, 10))], k=2, field="shade")  # green: no shade
        assert r.votes[0].label in {"warm", "cool"} and all(n.label in {"warm", "cool"} for n in r.neighbors)
        (r,) = classify(idx, ["red/r1.png"], k=2, field="shade")
        assert r.label == "warm" and r.confidence == 1.0
        assert audit(idx, k=2, field="shade") == []
        ev = evaluate_classification(idx, k=2, field="shade")
        assert ev.classes == ("cool", "warm") and ev.queries == 6 and ev.accuracy == 1.0
        with pytest.raises(SimsearchError, match=r"unknown field 'size'; the items of .* have: label, shade"):
            classify(idx, ["red/r1.png"], field="size")


# ------------------------------------------------------------------------------ HTTP


def test_http_classify_routes(colors_with_a_mistake):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    import io

    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    idx = colors_with_a_mistake
    ids = ids_by_path(idx)
    blue = [0.0, 0.0, 1.0] + [0.0] * (idx.manifest.dim - 3)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(buf, "PNG")
    with TestClient(create_app(idx.path), base_url="http://localhost") as c:
        # an indexed item: voted on by its neighbours, never by itself
        r = c.get(f"/items/{ids['green/g4.png']}/classify", params={"k": 3})
        assert r.status_code == 200, r.text
        d = r.json()
        assert (d["label"], d["confidence"], d["item_id"], d["k"]) == ("red", 1.0, ids["green/g4.png"], 3)
        assert ids["green/g4.png"] not in [n["id"] for n in d["neighbors"]]
        assert d["neighbors"][0]["thumbnail"].endswith(f"/items/{d['neighbors'][0]['id']}/thumbnail")
        # JSON: vectors, then items by id or key, in that order
        body = {"vectors": [blue], "items": [ids["red/r1.png"], "blue/b2.png"], "k": 3}
        r = c.post("/classify", json=body)
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        assert [x["label"] for x in got] == ["blue", "red", "blue"]
        assert [x["query"] for x in got] == ["vector 0", f"item {ids['red/r1.png']}", f"item {ids['blue/b2.png']}"]
        # an uploaded image (embedded by the index's own backbone) and a raw image body
        r = c.post("/classify", files={"image": ("b.png", buf.getvalue(), "image/png")}, data={"k": "3", "top": "2"})
        assert r.status_code == 200, r.text
        (x,) = r.json()["results"]
        assert x["query"] == "image" and len(x["neighbors"]) == 3 and 1 <= len(x["votes"]) <= 2
        r = c.post("/classify?k=2&min_confidence=0.9", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert r.status_code == 200 and len(r.json()["results"][0]["neighbors"]) == 2
        # bad input: one clear message each
        for method, url, kw, status, words in [
            ("post", "/classify", {"json": {"k": 3}}, 422, "vectors and/or items"),
            ("post", "/classify", {"json": {"items": [10**6]}}, 404, "no item with id 1000000"),
            ("post", "/classify", {"json": {"vectors": [[1.0, 2.0]]}}, 400, "has 2 values"),
            ("get", "/items/0/classify", {"params": {"field": "color"}}, 400, "unknown field 'color'"),
            ("get", "/items/0/classify", {"params": {"k": 0}}, 422, "k"),
            ("get", "/items/99999/classify", {}, 404, "no item"),
            ("post", "/classify", {"files": {"image": ("x.png", b"not an image", "image/png")}}, 400, "bad image"),
        ]:
            r = getattr(c, method)(url, **kw)
            assert r.status_code == status and words in r.json()["detail"], (url, kw, r.status_code, r.text)


# ------------------------------------------------------------------------------ one code path: Index.classify


def test_index_classify_is_the_hand_computed_vote(hand_index):
    # the facade method is the vote above: same shares by hand, same unknown, and a batch of vectors as an array
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    (r,) = hand_index.classify(red, k=3, temperature=1.0, min_confidence=0)
    w1, w2 = math.exp(1.0), math.exp(1 / math.sqrt(2))
    assert r.label == "a" and r.confidence == pytest.approx((w1 + w2) / (w1 + 2 * w2), abs=1e-5)
    assert r == classify(hand_index, [red], k=3, temperature=1.0, min_confidence=0)[0]
    (r,) = hand_index.classify([red], k=3, temperature=1.0, min_confidence=0.75)
    assert r.label == UNKNOWN and r.votes[0].label == "a"
    vecs = np.zeros((2, hand_index.manifest.dim), np.float32)
    vecs[0, 2], vecs[1, 0] = 1.0, 1.0  # blue, red
    assert [x.label for x in hand_index.classify(vecs, k=1)] == ["c", "a"]
    with pytest.raises(SimsearchError, match="top must be"):
        hand_index.classify(red, top=0)


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory, real_backbone):
    """The bundled sample photos (6 folders) but the first of each folder, indexed with the default backbone and
    the default settings (augmentation included); the held-out photos are new images to classify."""
    from conftest import SAMPLE, copy_file

    base = tmp_path_factory.mktemp("sample")
    held_out = []
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        held_out.append(photos[0])
        for p in photos[1:]:
            copy_file(p, base / "photos" / folder.name / p.name)
    import simsearch

    simsearch.index.build_index([base / "photos"], base / "index", backbone=real_backbone)
    with simsearch.open_index(base / "index", backbone=real_backbone) as idx:
        yield idx, held_out


def _answer(c) -> tuple:
    return c.label, round(c.confidence, 4), [(v.label, round(v.share, 4)) for v in c.votes], [n.id for n in c.neighbors]


def test_index_classify_equals_cli_and_http_on_real_photos(sample_index):
    idx, held_out = sample_index
    ids = [int(i) for i in idx.ids()]
    by_index = idx.classify([*ids, *map(str, held_out)], k=5, min_confidence=0.3)
    # the vote means something on real photos: most new photos get their folder's label
    right = [c.label == p.parent.name for c, p in zip(by_index[len(ids) :], held_out)]
    assert sum(right) >= len(held_out) - 2, [(c.label, p.parent.name) for c, p in zip(by_index[len(ids) :], held_out)]
    # the CLI, by --id and by image file
    args = ["classify", idx.path, "-k", 5, "--min-confidence", 0.3, "--top", 3, "--json"]
    data = json.loads(run(*args, *[a for i in ids for a in ("--id", i)], *held_out).stdout)
    by_cli = [from_json(d) for d in data["results"]]
    assert [_answer(c) for c in by_cli] == [_answer(c) for c in by_index]
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    with TestClient(create_app(idx.path), base_url="http://localhost") as client:
        got = client.post("/classify", json={"items": ids, "k": 5, "min_confidence": 0.3}).json()["results"]
        assert [_answer(from_json(d)) for d in got] == [_answer(c) for c in by_index[: len(ids)]]
        for i, c in zip(ids, by_index):
            d = client.get(f"/items/{i}/classify", params={"k": 5, "min_confidence": 0.3}).json()
            assert _answer(from_json(d)) == _answer(c)
        for path, c in zip(held_out, by_index[len(ids) :]):  # uploads: embedded by the server's own embedder
            r = client.post("/classify", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                            data={"k": "5", "min_confidence": "0.3"})  # fmt: skip
            (d,) = r.json()["results"]
            assert d["label"] == c.label and [n["id"] for n in d["neighbors"]] == [n.id for n in c.neighbors]
            assert d["confidence"] == pytest.approx(c.confidence, abs=1e-3)


def from_json(d: dict):
    """A :class:`Classification` back from its JSON (CLI ``--json``, HTTP)."""
    from simsearch.votes import Classification, Neighbor, Vote

    votes = tuple(Vote(v["label"], v["share"], v["neighbors"]) for v in d["votes"])
    neighbors = tuple(Neighbor(n["id"], n["score"], n["label"]) for n in d["neighbors"])
    return Classification(d["query"], d["label"], d["confidence"], votes, neighbors, d.get("item_id"))
