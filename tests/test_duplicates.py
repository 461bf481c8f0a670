"""Near-duplicate groups (simsearch.duplicates) and `simsearch duplicates`.

The main test makes re-encoded, resized, cropped, mirrored and grayscale copies of every bundled sample photo,
indexes them with the real default backbone, and checks each copy lands in its original's group (with the
original as representative) and nothing else does. The default rule is checked against the similarities and hash
distances measured here (see ``test_default_rule_...``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE, TINY, copy_file, write_image
from PIL import Image, ImageOps

import simsearch
from simsearch import SimsearchError
from simsearch.cli import main
from simsearch.config import DUPLICATES
from simsearch.duplicates import (
    DEFAULT_THRESHOLD,
    duplicates_of,
    find_duplicates,
    links_among,
    neighbours_above,
    pair_hash_distances,
    phashes_stored,
)
from simsearch.duplicates import pairs as dup
from simsearch.images import load_image
from simsearch.index import build_index

KINDS = ("reencoded", "resized", "cropped", "flipped", "gray")
COSINE_KINDS = ("reencoded", "resized", "cropped", "flipped")  # the embedding alone finds these


def make_copies(src: Path, dst_dir: Path) -> dict[str, Path]:
    """The near-copies a catalogue collects: a re-upload re-encoded at JPEG quality 75, a 75% resize,
    a centre crop keeping 95% of each side, a mirror image, a grayscale version."""
    img = load_image(src)
    w, h = img.size
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = {k: dst_dir / f"{src.stem}__{k}.{'png' if k == 'resized' else 'jpg'}" for k in KINDS}
    img.save(out["reencoded"], "JPEG", quality=75)
    img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS).save(out["resized"])
    dx, dy = w * 25 // 1000, h * 25 // 1000
    img.crop((dx, dy, w - dx, h - dy)).save(out["cropped"], "JPEG", quality=90)
    ImageOps.mirror(img).save(out["flipped"], "JPEG", quality=90)
    ImageOps.grayscale(img).save(out["gray"], "JPEG", quality=90)
    return out


@pytest.fixture(scope="module")
def copies_index(tmp_path_factory, real_backbone):
    """Every sample photo (35, in 6 labelled folders) plus its 4 near-copies in copies/, indexed for real."""
    base = tmp_path_factory.mktemp("dups")
    root = base / "photos"
    originals = sorted(SAMPLE.glob("*/*.jpg"))
    assert len(originals) >= 30
    family: dict[str, str] = {}  # relative path -> stem of the original it comes from
    for src in originals:
        rel = f"{src.parent.name}/{src.name}"
        copy_file(src, root / rel)
        family[rel] = src.stem
        for path in make_copies(src, root / "copies").values():
            family[path.relative_to(root).as_posix()] = src.stem
    build_index([root], base / "index", backbone=real_backbone, batch_size=32)
    idx = simsearch.open_index(base / "index", backbone=real_backbone)
    fam = {it.id: family[it.path] for it in idx.items()}
    assert len(fam) == len(originals) * (1 + len(KINDS))
    yield idx, fam
    idx.close()


def _similarities(idx, fam):
    """(kind -> (similarity, hash distance) of copies to their original, highest similarity and lowest hash
    distance between different families)."""
    ids, vecs = idx.vectors()
    sims = vecs @ vecs.T
    hd = pair_hash_distances(idx, ids, np.tile(ids, (len(ids), 1)))
    items = {it.id: it for it in idx.items()}
    orig_row = {fam[i]: r for r, i in enumerate(ids) if "__" not in items[i].path}
    by_kind: dict[str, list[tuple[float, int]]] = {k: [] for k in KINDS}
    for r, i in enumerate(ids):
        path = items[i].path
        if "__" in path:
            o = orig_row[fam[i]]
            by_kind[Path(path).stem.split("__")[1]].append((float(sims[r, o]), int(hd[r, o])))
    families = np.array([fam[i] for i in ids])
    different = families[:, None] != families[None, :]
    return by_kind, float(sims[different].max()), int(hd[different].min())


def test_default_rule_separates_copies_from_unrelated_photos(copies_index):
    """Why the default rule works here (see simsearch/duplicates.py): every copy the embedding finds scores above
    the cosine threshold with its original, every grayscale copy has a close hash (and a cosine above the lower
    bar), and every pair of different photos is far from both."""
    idx, fam = copies_index
    by_kind, unrelated, unrelated_hash = _similarities(idx, fam)
    lowest = {k: round(min(s for s, _ in v), 4) for k, v in by_kind.items()}
    farthest_hash = {k: max(h for _, h in v) for k, v in by_kind.items()}
    print(f"lowest copy-original similarity by kind: {lowest}; highest hash distance by kind: {farthest_hash}; "
          f"different photos: highest similarity {unrelated:.4f}, lowest hash distance {unrelated_hash}")  # fmt: skip
    assert min(lowest[k] for k in COSINE_KINDS) >= DEFAULT_THRESHOLD + 0.01, lowest
    assert unrelated <= DEFAULT_THRESHOLD - 0.1, unrelated
    # a CNN embedding is not flip-invariant by construction, but mirror images of photos stay very close
    assert lowest["flipped"] >= 0.93
    # grayscale copies: the embedding alone cannot find them all, the luminance hash does
    assert lowest["gray"] < DEFAULT_THRESHOLD and lowest["gray"] >= DUPLICATES.hash_threshold
    assert max(farthest_hash["gray"], farthest_hash["flipped"]) <= min(4, DUPLICATES.hash_distance)
    assert unrelated_hash > DUPLICATES.hash_distance + 4


def test_each_copy_is_grouped_with_its_original_and_nothing_else(copies_index):
    idx, fam = copies_index
    groups = find_duplicates(idx)  # default rule
    assert len(groups) == len(set(fam.values()))
    for g in groups:
        families = {fam[it.id] for it in g.items}
        assert len(families) == 1, [it.path for it in g.items]  # no unrelated image joined
        assert g.size == 1 + len(KINDS), [it.path for it in g.items]  # every copy joined
        assert "__" not in g.representative.path  # the original represents its copies
        assert g.scores[0] == pytest.approx(1.0, abs=1e-5) and all(s >= DUPLICATES.hash_threshold for s in g.scores)
        assert g.scores[1:] == sorted(g.scores[1:], reverse=True)
        assert g.reasons[0] is None and all(g.reasons[1:]) and g.hash_distances[0] == 0
        gray = next(n for n, it in enumerate(g.items) if it.path.endswith("__gray.jpg"))
        assert "hash" in g.reasons[gray] and g.hash_distances[gray] <= 2
        assert g.weakest is not None and g.weakest.score == pytest.approx(min(g.scores[1:]), abs=1e-5)
    # the group of an item, as the service's /items/{id}/duplicates gives it
    some = next(i for i, f in fam.items() if f == "dahlia" and "__" not in idx.item(i).path)
    g = duplicates_of(idx, some)
    assert g.items[0].id == some and g.size == 1 + len(KINDS) and {fam[it.id] for it in g.items} == {"dahlia"}
    assert {Path(it.path).stem.split("__")[-1]: r for it, r in zip(g.items[1:], g.reasons[1:], strict=True)}[
        "gray"
    ] in ("hash", "cosine+hash")


def test_grayscale_and_mirrored_copies_group_with_their_original(copies_index):
    idx, _fam = copies_index
    for g in find_duplicates(idx):
        kinds = {Path(it.path).stem.split("__")[1] for it in g.items[1:]}
        assert {"gray", "flipped"} <= kinds, [it.path for it in g.items]


def test_two_different_photos_of_one_class_do_not_group(copies_index):
    idx, fam = copies_index
    originals = [it for it in idx.items() if "__" not in it.path and it.label == "flowers"]
    assert len(originals) >= 5
    assert links_among(idx, [it.id for it in originals]) == []
    seeds = next(it for it in originals if "dandelion_seeds" in it.path)
    wings = next(it for it in originals if "dandelion_two_wings" in it.path)
    assert wings.id not in {it.id for it in duplicates_of(idx, seeds.id).items}
    assert all(link.reason for link in links_among(idx, [i for i, f in fam.items() if f == "dahlia"]))


def test_neighbours_without_duplicates(copies_index, tmp_path):
    """``neighbors --exclude-duplicates``: an original's copies (grayscale ones too, by their hash) are left out
    of its neighbours (two copies of one photo may be too different to be near-duplicates of each other)."""
    pytest.importorskip("pyarrow")
    from simsearch.neighbors import compute_neighbors

    idx, fam = copies_index
    out = tmp_path / "n.csv"
    compute_neighbors(idx, out, k=5, exclude_duplicates=DEFAULT_THRESHOLD)
    import csv

    rows = [r for r in csv.DictReader(out.open()) if "__" not in r["item_path"]]
    assert len(rows) == 5 * 35 and all(fam[int(r["item_id"])] != fam[int(r["neighbor_id"])] for r in rows)
    compute_neighbors(idx, out, k=5, overwrite=True)
    rows = [r for r in csv.DictReader(out.open()) if "__" not in r["item_path"]]
    assert sum(fam[int(r["item_id"])] == fam[int(r["neighbor_id"])] for r in rows) >= 4 * 35  # without: copies


def test_a_strict_threshold_keeps_only_the_closest_copies(copies_index):
    idx, fam = copies_index
    groups = find_duplicates(idx, 0.99, hash_distance=-1)
    assert all(len({fam[it.id] for it in g.items}) == 1 for g in groups)
    assert sum(g.size for g in groups) < len(fam) // 2


def test_duplicates_cli(copies_index, tmp_path):
    idx, fam = copies_index
    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["threshold"] == DEFAULT_THRESHOLD and len(data["groups"]) == 35 and data["linkage"] == "star"
    first = data["groups"][0]
    assert first["size"] == 1 + len(KINDS) and first["items"][0]["id"] == first["representative"]
    assert set(first["items"][0]) == {"id", "path", "label", "score", "hash_distance", "reason", "bytes"}
    assert set(first["weakest_link"]) == {"a", "b", "score", "hash_distance", "reason"}

    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--csv", "--threshold", "0.93", "--linkage", "single"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == "group,size,id,path,label,score,hash_distance,reason"
    sizes = [int(line.split(",")[1]) for line in lines[1:]]
    assert sizes == sorted(sizes, reverse=True)  # largest groups first

    out = tmp_path / "dups.html"
    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--html", str(out), "-q"])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert page.count('class="group"') == 35 and page.count("data:image/jpeg;base64,") == len(fam)
    assert page.count("representative") >= 35 and "hash · " in page  # the reason of each member
    assert "group 1 (6 items; weakest link" in r.output

    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--hash-distance", "-1", "--json"])
    assert r.exit_code == 0, r.output
    sizes = [g["size"] for g in json.loads(r.output)["groups"]]
    assert max(sizes) == 1 + len(KINDS) and min(sizes) < 1 + len(KINDS)  # some grayscale copies left out

    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--threshold", "1.5"])
    assert r.exit_code == 2 and "1.5" in r.output


# ------------------------------------------------------------------------------ the algorithm, by hand


def _group_sets(groups):
    return sorted(sorted(it.path for it in g.items) for g in groups)


def _hand_groups(idx, threshold):
    """Connected components over an explicit all-pairs matrix (fine for a few items: the reference)."""
    ids, vecs = idx.vectors()
    adj = (vecs @ vecs.T) >= threshold
    paths = {it.id: it.path for it in idx.items()}
    seen, comps = set(), []
    for s in range(len(ids)):
        if s in seen:
            continue
        comp, stack = set(), [s]
        while stack:
            a = stack.pop()
            if a in comp:
                continue
            comp.add(a)
            stack += [b for b in np.flatnonzero(adj[a]) if b not in comp]
        seen |= comp
        if len(comp) > 1:
            comps.append(sorted(paths[int(ids[a])] for a in comp))
    return sorted(comps)


@pytest.mark.parametrize("threshold", [0.999, 0.99, 0.95, 0.9, 0.5])
def test_single_linkage_groups_match_connected_components(color_index, threshold):
    groups = find_duplicates(color_index, threshold, linkage="single")
    assert _group_sets(groups) == _hand_groups(color_index, threshold)


@pytest.mark.parametrize("threshold", [0.99, 0.95, 0.9, 0.5])
def test_star_and_complete_groups(color_index, threshold):
    """star: every member within the threshold of the representative; complete: of every other member; both
    partition the items of the connected components."""
    ids, vecs = color_index.vectors()
    pos = {int(i): n for n, i in enumerate(ids)}
    sims = vecs @ vecs.T
    comps = _hand_groups(color_index, threshold)
    for linkage in ("star", "complete"):
        groups = find_duplicates(color_index, threshold, linkage=linkage)
        members = [it.id for g in groups for it in g.items]
        assert len(members) == len(set(members))
        for g in groups:
            rep = pos[g.representative.id]
            others = [pos[it.id] for it in g.items[1:]]
            assert all(sims[rep, o] >= threshold - 1e-5 for o in others)
            if linkage == "complete":
                assert all(sims[a, b] >= threshold - 1e-5 for a in others for b in others)
            assert any(set(it.path for it in g.items) <= set(c) for c in comps)
            assert g.weakest.score == pytest.approx(
                min(
                    sims[a, b] for a in [rep, *others] for b in others if a != b and (linkage == "complete" or a == rep)
                ),
                abs=1e-5,
            )


def test_chains_are_grouped_transitively_only_with_single_linkage(make_color_index):
    """a~b and b~c put a, b and c in one group with single linkage even when a and c are less similar than the
    threshold; star (the default) and complete linkage keep c out."""
    idx = make_color_index({"x/a.png": (255, 0, 0), "x/b.png": (255, 60, 0), "x/c.png": (255, 120, 0),
                            "y/far.png": (0, 0, 255)})  # fmt: skip
    ids, vecs = idx.vectors()
    s = vecs @ vecs.T
    a, b, c = (idx.id_for_path(p) for p in ("x/a.png", "x/b.png", "x/c.png"))
    pos = {int(i): n for n, i in enumerate(ids)}
    t = float(min(s[pos[a], pos[b]], s[pos[b], pos[c]])) - 1e-4
    assert s[pos[a], pos[c]] < t
    groups = find_duplicates(idx, t, linkage="single")
    assert _group_sets(groups) == [["x/a.png", "x/b.png", "x/c.png"]]
    assert groups[0].reasons.count(None) == 2  # the representative, and the member linked only through another
    for linkage in ("star", "complete"):
        groups = find_duplicates(idx, t, linkage=linkage)
        assert len(groups) == 1 and groups[0].size == 2 and c not in {it.id for it in groups[0].items}
    g = duplicates_of(idx, a, t)  # the item's own near-duplicates: no chain either
    assert next(it.id for it in g.items) == a and g.size == 2


def test_knn_fallback_matches_range_search(color_index, monkeypatch):
    """Index types without range search use k-NN with a growing k: same neighbours."""
    _ids, vecs = color_index.vectors()
    expected = [sorted(r[0].tolist()) for r in neighbours_above(color_index, vecs, 0.9)]

    class NoRange:
        def __init__(self, inner):
            self.inner = inner
            self.ntotal = inner.ntotal

        def range_search(self, *a):
            raise RuntimeError("range search not implemented for this type of index")

        def search(self, x, k):
            return self.inner.search(x, k)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(color_index.snapshot, "faiss", NoRange(color_index.faiss))
    monkeypatch.setattr(dup, "_knn_above", _spy(dup._knn_above))
    got = [sorted(r[0].tolist()) for r in neighbours_above(color_index, vecs, 0.9)]
    assert got == expected and dup._knn_above.calls == 1
    assert _group_sets(find_duplicates(color_index, 0.9, linkage="single")) == _hand_groups(color_index, 0.9)


def _spy(fn):
    def wrapper(*a, **kw):
        wrapper.calls += 1
        return fn(*a, **kw)

    wrapper.calls = 0
    return wrapper


def test_knn_fallback_grows_k(color_index):
    """More neighbours above the threshold than the first k: k grows until one falls below."""
    ids, vecs = color_index.vectors()
    got = dup._knn_above(color_index, vecs[:1], 0.0)  # every item is >= 0 similar to a colour
    assert len(got[0][0]) == len(ids)


def test_no_duplicates_and_bad_thresholds(color_index):
    assert find_duplicates(color_index, 0.9999999) == []
    for t in (0, -1, 1.5, float("nan")):
        with pytest.raises(SimsearchError, match="threshold"):
            find_duplicates(color_index, t)
    with pytest.raises(KeyError):
        duplicates_of(color_index, 999)
    alone = duplicates_of(color_index, int(color_index.ids()[0]), 0.9999999)
    assert alone.size == 1 and alone.scores == [pytest.approx(1.0, abs=1e-6)]


def test_too_low_a_threshold_is_refused(color_index, monkeypatch):
    monkeypatch.setattr(dup, "MAX_PAIRS", 5)
    with pytest.raises(SimsearchError, match="raise the threshold"):
        find_duplicates(color_index, 0.1)


def test_exact_copies_with_the_tiny_backbone(tmp_path, _register_tiny_backbone):
    """Byte-identical files are always grouped; with the same pixels the representative is the oldest file (not
    the largest: a PNG re-save is bigger)."""
    root = tmp_path / "photos"
    write_image(root / "a/one.jpg", 1, size=(120, 90))
    copy_file(root / "a/one.jpg", root / "b/one_again.jpg")
    Image.open(root / "a/one.jpg").save(root / "b/one_big.png")  # same pixels, a bigger file
    write_image(root / "a/two.jpg", 2)
    build_index([root], tmp_path / "index", backbone=TINY, workers=1)
    with simsearch.open_index(tmp_path / "index") as idx:
        groups = find_duplicates(idx, 0.999)
        assert _group_sets(groups) == [["a/one.jpg", "b/one_again.jpg", "b/one_big.png"]]
        assert groups[0].representative.path == "a/one.jpg"
        assert groups[0].to_dict()["representative"] == groups[0].items[0].id
        assert groups[0].hash_distances == [0, 0, 0] and set(groups[0].reasons[1:]) == {"cosine+hash"}


def _assert_same_groups(got, expected):
    """Same members and reasons; hash distances within 2 bits (hashes computed from the files are decoded at
    another scale than at index time)."""
    assert [[(it.id, r) for it, r in zip(g.items, g.reasons, strict=True)] for g in got] == [
        [(it.id, r) for it, r in zip(g.items, g.reasons, strict=True)] for g in expected
    ]
    for a, b in zip(got, expected, strict=True):
        assert all(abs(x - y) <= 2 for x, y in zip(a.hash_distances, b.hash_distances, strict=True))


def _write_family(src: Path, root: Path) -> dict[str, Path]:
    """An original JPEG and two copies that would have won the old rule (the largest file): a 90 % crop saved as
    PNG and a grayscale copy, both dated before the original."""
    img = load_image(src)
    w, h = img.size
    out = {"original": copy_file(src, root / "a" / src.name)}
    out["crop_png"] = root / "b" / f"{src.stem}_crop.png"
    out["crop_png"].parent.mkdir(parents=True, exist_ok=True)
    img.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(out["crop_png"])
    out["gray"] = root / "b" / f"{src.stem}_gray.jpg"
    ImageOps.grayscale(img).save(out["gray"], quality=95)
    old = out["original"].stat().st_mtime - 3600
    for k in ("crop_png", "gray"):
        os.utime(out[k], (old, old))
    assert out["crop_png"].stat().st_size > out["original"].stat().st_size
    return out


def test_the_representative_is_the_original_jpeg(tmp_path, real_backbone):
    """Most pixels wins over the larger (PNG) file and the older date; colour wins over grayscale. Then the same
    with an index that stores no hashes (written before they were): they are computed from the files."""
    root = tmp_path / "photos"
    _write_family(SAMPLE / "flowers" / "dahlia.jpg", root)
    copy_file(SAMPLE / "flowers" / "dandelion_seeds.jpg", root / "a" / "dandelion_seeds.jpg")
    build_index([root], tmp_path / "index", backbone=real_backbone)
    with simsearch.open_index(tmp_path / "index", backbone=real_backbone) as idx:
        groups = find_duplicates(idx)
        assert len(groups) == 1 and groups[0].size == 3
        assert groups[0].representative.path == "a/dahlia.jpg"
        assert all(h is not None for h in phashes_stored(idx, idx.ids()))
    meta = next((tmp_path / "index").glob("meta-*.sqlite"))
    with sqlite3.connect(meta) as db:
        db.execute("UPDATE photos SET phash = NULL")
    with simsearch.open_index(tmp_path / "index", backbone=real_backbone) as idx:
        assert phashes_stored(idx, idx.ids()) == [None] * 4
        _assert_same_groups(find_duplicates(idx), groups)
        assert duplicates_of(idx, idx.id_for_path("a/dahlia.jpg")).size == 3
        gray = duplicates_of(idx, idx.id_for_path("b/dahlia_gray.jpg"))  # a star around the grayscale copy
        assert "a/dahlia.jpg" in {it.path for it in gray.items}


def test_collapse_duplicates_in_search_uses_the_pair_rule(copies_index):
    """``Rules(collapse_duplicates=t)``: one result per group of near-duplicates, grayscale copies (close hash,
    low cosine) included; a query image's copies collapse into one result."""
    from simsearch.search import Rules

    idx, fam = copies_index
    dahlia = next(i for i, f in fam.items() if f == "dahlia" and "__" not in idx.item(i).path)
    plain = idx.search(dahlia, k=10, exclude_query=False)
    assert sum(fam[h.id] == "dahlia" for h in plain) >= 4
    collapsed = idx.search(dahlia, k=10, exclude_query=False, rules=Rules(collapse_duplicates=DEFAULT_THRESHOLD))
    assert [fam[h.id] for h in collapsed].count("dahlia") == 1 and len(collapsed) == 10
    assert len({fam[h.id] for h in collapsed}) == 10
