"""The perceptual hash (simsearch.phash), the pair rule, the Hamming range search and the index-time hook."""

from __future__ import annotations

import itertools
import sqlite3

import numpy as np
import pytest
from conftest import SAMPLE, pattern_image, write_image
from PIL import Image, ImageEnhance, ImageOps

import simsearch
from simsearch import phash as ph
from simsearch.config import DuplicateRule
from simsearch.duplicates import hash_pairs, phashes_stored
from simsearch.embed import Embedder
from simsearch.errors import SimsearchError
from simsearch.images import load_image

PHOTOS = sorted(SAMPLE.glob("*/*.jpg"))


@pytest.fixture(scope="module")
def photos():
    return [load_image(p) for p in PHOTOS[:12]]


def reference_hash(img: Image.Image) -> int:
    """The documented algorithm, written out with loops (no matrices): the implementation must agree."""
    x = ph.luminance_thumbnail(img)
    n = x.shape[0]

    def coef(u: int, v: int) -> float:
        total = 0.0
        for i in range(n):
            for j in range(n):
                total += x[i, j] * np.cos(np.pi * (2 * i + 1) * u / (2 * n)) * np.cos(np.pi * (2 * j + 1) * v / (2 * n))
        return total  # the DCT's positive normalisation factors do not change signs

    value = 0
    for u, v in itertools.product(range(8), range(8)):
        c = coef(8, 0) if (u, v) == (0, 0) else coef(u, v)
        value |= int(c > 0) << (8 * u + v)
    return ph.to_signed(value)


def test_matches_the_documented_algorithm(photos):
    for img in photos[:2]:
        assert ph.phash(img) == reference_hash(img)


def test_signed_64_bit_format_fits_sqlite(photos):
    hashes = [ph.phash(img) for img in photos]
    assert all(-(2**63) <= h < 2**63 for h in hashes)
    assert any(h < 0 for h in hashes) and any(h > 0 for h in hashes)  # the top bit is used
    for h in hashes:
        assert ph.to_signed(ph.to_unsigned(h)) == h
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t(h INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(h,) for h in hashes])
    assert [r[0] for r in db.execute("SELECT h FROM t")] == hashes


def test_mirror_flips_exactly_the_odd_frequency_bits(photos):
    for img in photos:
        h, m = ph.phash(img), ph.phash(ImageOps.mirror(img))
        assert ph.distance(m, ph.mirrored(h), mirror=False) <= 2  # resampling may tip a near-zero coefficient
        assert ph.distance(h, m) <= 2 and ph.distance(m, h) <= 2
        assert ph.distance(h, m, mirror=False) >= 16


def test_copies_hash_close_to_their_original(photos):
    for img in photos:
        h = ph.phash(img)
        w, hgt = img.size
        copies = {
            "gray": ImageOps.grayscale(img),
            "brighter": ImageEnhance.Brightness(img).enhance(1.25),
            "darker": ImageEnhance.Brightness(img).enhance(0.7),
            "smaller": img.resize((w // 3, hgt // 3), Image.Resampling.BILINEAR),
            "contrast": ImageEnhance.Contrast(img).enhance(1.3),
        }
        got = {k: ph.distance(h, ph.phash(c)) for k, c in copies.items()}
        assert max(got.values()) <= 8, got  # brightening clips the highlights: the most changed
        assert got["gray"] <= 2


def test_different_photos_hash_far_apart(photos):
    hashes = [ph.phash(img) for img in photos]
    closest = min(ph.distance(a, b) for a, b in itertools.combinations(hashes, 2))
    assert closest > DuplicateRule().hash_distance + 4


def test_flat_images_have_no_hash():
    assert ph.phash(Image.new("RGB", (64, 48), (200, 30, 30))) is None
    assert ph.phash(Image.new("L", (10, 10), 0)) is None
    assert ph.phash(pattern_image(1)) is not None


def test_vectorised_distances_agree(photos):
    hashes = np.array([ph.phash(img) for img in photos], dtype=np.int64)
    for mirror in (True, False):
        d = ph.distances(int(hashes[0]), hashes, mirror=mirror)
        assert d.tolist() == [ph.distance(int(hashes[0]), int(h), mirror=mirror) for h in hashes]
        pd = ph.pair_distances(hashes[:, None], hashes[None, :], mirror=mirror)
        assert pd[3].tolist() == [ph.distance(int(hashes[3]), int(h), mirror=mirror) for h in hashes]


def test_the_pair_rule():
    rule = DuplicateRule(threshold=0.9, hash_distance=8, hash_threshold=0.5)
    assert ph.duplicate_reason(0.95, 30, rule) == "cosine"
    assert ph.duplicate_reason(0.95, 3, rule) == "cosine+hash"
    assert ph.duplicate_reason(0.6, 8, rule) == "hash"
    assert ph.duplicate_reason(0.6, 9, rule) is None
    assert ph.duplicate_reason(0.4, 0, rule) is None  # close hashes, but the embeddings disagree
    assert ph.duplicate_reason(0.6, None, rule) is None and ph.duplicate_reason(0.6, ph.NO_HASH, rule) is None
    off = DuplicateRule(threshold=0.9, hash_distance=-1)
    assert ph.duplicate_reason(0.6, 0, off) is None and ph.is_duplicate(0.9, None, off)
    mask = ph.duplicate_mask(np.array([0.95, 0.6, 0.6, 0.4]), np.array([30, 8, -1, 0]), rule)
    assert mask.tolist() == [True, True, False, False]
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"hash_distance": 65}, {"hash_threshold": 2},
                {"linkage": "average"}, {"threshold": float("nan")}):  # fmt: skip
        with pytest.raises(SimsearchError):
            DuplicateRule(**bad)


def test_hash_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    values = rng.integers(-(2**63), 2**63 - 1, size=300, dtype=np.int64)
    # plant near copies: a few bits flipped, some of them mirrored
    for n in range(0, 60, 2):
        x = ph.to_unsigned(int(values[n]))
        for b in rng.choice(64, size=n % 7, replace=False):
            x ^= 1 << int(b)
        values[n + 1] = ph.mirrored(ph.to_signed(x)) if n % 4 == 0 else ph.to_signed(x)
    ids = np.arange(1000, 1300, dtype=np.int64)
    for d in (0, 3, 6, 12):
        a, b, dist = hash_pairs(ids, values, d, batch_size=64)
        got = {(int(i), int(j), int(k)) for i, j, k in zip(a, b, dist, strict=True)}
        expected = {
            (int(ids[i]), int(ids[j]), ph.distance(int(values[i]), int(values[j])))
            for i, j in itertools.combinations(range(len(ids)), 2)
            if ph.distance(int(values[i]), int(values[j])) <= d
        }
        assert got == expected and len(got) >= (15 if d >= 6 else 1)


def test_embedder_hashes_the_decoded_images(tiny_backbone, tmp_path):
    files = [write_image(tmp_path / f"{n}.jpg", n, size=(90, 60)) for n in range(5)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    batches = list(Embedder(tiny_backbone, batch_size=2, workers=2).embed_files([*files[:2], bad, *files[2:]]))
    items = [x for b in batches for x in b.items]
    hashes = [h for b in batches for h in b.phashes]
    assert items == files and all(len(b.phashes) == len(b.items) for b in batches)
    assert hashes == [ph.phash(load_image(f)) for f in files]
    off = list(Embedder(tiny_backbone, batch_size=2, phash=False).embed_files(files))
    assert [h for b in off for h in b.phashes] == [None] * 5


def test_the_index_stores_the_hashes(tmp_path, tiny_backbone):
    root = tmp_path / "photos"
    for n in range(4):
        write_image(root / f"{n}.jpg", n, size=(90, 60))
    Image.new("RGB", (40, 40), (10, 200, 10)).save(root / "flat.png")
    with simsearch.build_index([root], tmp_path / "index", backbone=tiny_backbone, workers=1) as idx:
        by_path = {it.path: it.id for it in idx.items()}
        stored = dict(zip(idx.ids().tolist(), phashes_stored(idx, idx.ids()), strict=True))
        assert stored[by_path["flat.png"]] is None
        for n in range(4):
            assert stored[by_path[f"{n}.jpg"]] == ph.phash(load_image(root / f"{n}.jpg"))
        assert phashes_stored(idx, [999]) == [None]
    # an update adds hashes for the new files and keeps the others
    write_image(root / "new.jpg", 9, size=(90, 60))
    with simsearch.build_index([root], tmp_path / "index", backbone=tiny_backbone, workers=1) as idx:
        got = dict(
            zip((it.path for it in idx.items()), phashes_stored(idx, [it.id for it in idx.items()]), strict=True)
        )
        assert got["new.jpg"] == ph.phash(load_image(root / "new.jpg")) and got["0.jpg"] is not None
