"""Near-duplicate groups (simsearch.duplicates) and `simsearch duplicates`.

The main test makes re-encoded, resized, cropped and flipped copies of every bundled sample photo, indexes them
with the real default backbone, and checks each copy lands in its original's group and nothing else does.
The default threshold is checked against the similarities measured here (see ``test_default_threshold_...``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE, TINY, copy_file, write_image
from PIL import Image, ImageOps

import simsearch
from simsearch import SimsearchError
from simsearch import duplicates as dup
from simsearch.cli import main
from simsearch.duplicates import DEFAULT_THRESHOLD, duplicates_of, find_duplicates, neighbours_above
from simsearch.images import load_image
from simsearch.index import build_index

KINDS = ("reencoded", "resized", "cropped", "flipped")


def make_copies(src: Path, dst_dir: Path) -> dict[str, Path]:
    """The near-copies a catalogue collects: a re-upload re-encoded at JPEG quality 75, a 75% resize,
    a centre crop keeping 95% of each side, a mirror image."""
    img = load_image(src)
    w, h = img.size
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = {k: dst_dir / f"{src.stem}__{k}.{'png' if k == 'resized' else 'jpg'}" for k in KINDS}
    img.save(out["reencoded"], "JPEG", quality=75)
    img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS).save(out["resized"])
    dx, dy = w * 25 // 1000, h * 25 // 1000
    img.crop((dx, dy, w - dx, h - dy)).save(out["cropped"], "JPEG", quality=90)
    ImageOps.mirror(img).save(out["flipped"], "JPEG", quality=90)
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
    """(kind -> similarities of copies to their original, highest similarity between different families)."""
    ids, vecs = idx.vectors()
    sims = vecs @ vecs.T
    items = {it.id: it for it in idx.items()}
    orig_row = {fam[i]: r for r, i in enumerate(ids) if "__" not in items[i].path}
    by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    for r, i in enumerate(ids):
        path = items[i].path
        if "__" in path:
            by_kind[Path(path).stem.split("__")[1]].append(float(sims[r, orig_row[fam[i]]]))
    families = np.array([fam[i] for i in ids])
    unrelated = float(sims[families[:, None] != families[None, :]].max())
    return by_kind, unrelated


def test_default_threshold_separates_copies_from_unrelated_photos(copies_index):
    """Why 0.90 (see simsearch/duplicates.py): every copy scores above it with its original, every pair of
    different photos far below it."""
    idx, fam = copies_index
    by_kind, unrelated = _similarities(idx, fam)
    lowest = {k: round(min(v), 4) for k, v in by_kind.items()}
    print(f"lowest copy-original similarity by kind: {lowest}; highest unrelated pair: {unrelated:.4f}")
    assert min(lowest.values()) >= DEFAULT_THRESHOLD + 0.01, lowest
    assert unrelated <= DEFAULT_THRESHOLD - 0.1, unrelated
    # a CNN embedding is not flip-invariant by construction, but mirror images of photos stay very close
    assert lowest["flipped"] >= 0.93


def test_each_copy_is_grouped_with_its_original_and_nothing_else(copies_index):
    idx, fam = copies_index
    groups = find_duplicates(idx)  # default threshold
    assert len(groups) == len(set(fam.values()))
    for g in groups:
        families = {fam[it.id] for it in g.items}
        assert len(families) == 1, [it.path for it in g.items]  # no unrelated image joined
        assert g.size == 1 + len(KINDS), [it.path for it in g.items]  # every copy joined
        assert g.scores[0] == pytest.approx(1.0, abs=1e-5) and all(s >= DEFAULT_THRESHOLD - 0.2 for s in g.scores)
        assert g.scores[1:] == sorted(g.scores[1:], reverse=True)
    # the group of an item, as the service's /items/{id}/duplicates gives it
    some = next(i for i, f in fam.items() if f == "dahlia" and "__" not in idx.item(i).path)
    g = duplicates_of(idx, some)
    assert g.items[0].id == some and g.size == 5 and {fam[it.id] for it in g.items} == {"dahlia"}


def test_a_strict_threshold_keeps_only_the_closest_copies(copies_index):
    idx, fam = copies_index
    groups = find_duplicates(idx, 0.99)
    assert all(len({fam[it.id] for it in g.items}) == 1 for g in groups)
    assert sum(g.size for g in groups) < len(fam) // 2


def test_duplicates_cli(copies_index, tmp_path):
    idx, fam = copies_index
    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["threshold"] == DEFAULT_THRESHOLD and len(data["groups"]) == 35
    first = data["groups"][0]
    assert first["size"] == 5 and first["items"][0]["id"] == first["representative"]
    assert set(first["items"][0]) == {"id", "path", "label", "score", "bytes"}

    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--csv", "--threshold", "0.93"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == "group,size,id,path,label,score"
    sizes = [int(line.split(",")[1]) for line in lines[1:]]
    assert sizes == sorted(sizes, reverse=True)  # largest groups first

    out = tmp_path / "dups.html"
    r = CliRunner().invoke(main, ["duplicates", str(idx.path), "--html", str(out), "-q"])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert page.count('class="group"') == 35 and page.count("data:image/jpeg;base64,") == len(fam)
    assert "group 1 (5 items)" in r.output

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
def test_groups_match_connected_components(color_index, threshold):
    assert _group_sets(find_duplicates(color_index, threshold)) == _hand_groups(color_index, threshold)


def test_chains_are_grouped_transitively(make_color_index):
    """a~b and b~c put a, b and c in one group even when a and c are less similar than the threshold."""
    idx = make_color_index({"x/a.png": (255, 0, 0), "x/b.png": (255, 60, 0), "x/c.png": (255, 120, 0),
                            "y/far.png": (0, 0, 255)})  # fmt: skip
    ids, vecs = idx.vectors()
    s = vecs @ vecs.T
    a, b, c = (idx.id_for_path(p) for p in ("x/a.png", "x/b.png", "x/c.png"))
    pos = {int(i): n for n, i in enumerate(ids)}
    t = float(min(s[pos[a], pos[b]], s[pos[b], pos[c]])) - 1e-4
    assert s[pos[a], pos[c]] < t
    groups = find_duplicates(idx, t)
    assert _group_sets(groups) == [["x/a.png", "x/b.png", "x/c.png"]]
    g = duplicates_of(idx, a, t)
    assert next(it.id for it in g.items) == a and g.size == 3


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
    assert _group_sets(find_duplicates(color_index, 0.9)) == _hand_groups(color_index, 0.9)


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
    """Byte-identical files are always grouped; the representative is the largest file."""
    root = tmp_path / "photos"
    write_image(root / "a/one.jpg", 1, size=(120, 90))
    copy_file(root / "a/one.jpg", root / "b/one_again.jpg")
    Image.open(root / "a/one.jpg").save(root / "b/one_big.png")  # same pixels, a bigger file
    write_image(root / "a/two.jpg", 2)
    build_index([root], tmp_path / "index", backbone=TINY, workers=1)
    with simsearch.open_index(tmp_path / "index") as idx:
        groups = find_duplicates(idx, 0.999)
        assert _group_sets(groups) == [["a/one.jpg", "b/one_again.jpg", "b/one_big.png"]]
        assert groups[0].representative.path == "b/one_big.png"
        assert groups[0].to_dict()["representative"] == groups[0].items[0].id
