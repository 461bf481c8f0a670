"""Indexing a catalogue: keys, typed attributes, several photos per item, incremental re-runs, filters."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import TINY, bump_mtime, write_image, write_solid

import simsearch
from simsearch.errors import SimsearchError
from simsearch.index import verify_index


def write_catalog(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def shop(tmp_path, counting_engine):
    photos = tmp_path / "shop" / "photos"
    for i in range(6):
        write_image(photos / f"p{i}.jpg", seed=i)
    rows = [
        {
            "key": "sku-1",
            "image": "photos/p0.jpg|photos/p1.jpg",
            "category": "shoes",
            "price": "20",
            "in_stock": "true",
        },
        {"key": "sku-2", "image": "photos/p2.jpg", "category": "shoes", "price": "120.5", "in_stock": "false"},
        {"key": "sku-3", "image": "photos/p3.jpg|photos/p4.jpg", "category": "bags", "price": "80", "in_stock": "true"},
        {"key": "sku-4", "image": "photos/p5.jpg", "category": "bags", "price": "", "in_stock": "true"},
    ]
    cat = write_catalog(tmp_path / "shop" / "items.csv", rows)
    engine = counting_engine()
    return {"catalog": cat, "rows": rows, "out": tmp_path / "idx", "engine": engine, "photos": photos}


def build(shop, **kw):
    return simsearch.build_index(catalog=shop["catalog"], out=shop["out"], engine=shop["engine"], backbone=TINY, **kw)


def test_catalog_items_have_keys_typed_attributes_and_several_photos(shop):
    idx = build(shop)
    r = idx.report
    assert (r.added, r.count, r.photos, r.embedded) == (4, 4, 6, 6)
    assert idx.manifest.attributes == {"category": "str", "price": "float", "in_stock": "bool"}
    assert idx.manifest.source["kind"] == "catalog"
    item = idx.item(idx.id_for_key("sku-1"))
    assert [p.path for p in item.photos] == ["photos/p0.jpg", "photos/p1.jpg"]
    assert item.attributes == {"category": "shoes", "price": 20.0, "in_stock": True}
    assert "price" not in idx.item(idx.id_for_key("sku-4")).attributes  # empty cell = missing
    # results are items, never the same key twice; search by key uses all its photos and excludes it
    hits = idx.search("sku-1", k=10)
    assert sorted(h.key for h in hits) == ["sku-2", "sku-3", "sku-4"]
    v = idx.vectors([idx.id_for_key("sku-3")])[1][0]
    hits = idx.search(v, k=10)
    assert len({h.key for h in hits}) == len(hits) == 4
    assert verify_index(shop["out"])[0] == []
    idx.close()


def test_filters_in_both_forms_give_the_matching_items_only(shop):
    with build(shop) as idx:
        q = idx.vectors([idx.id_for_key("sku-2")])[1][0]
        by_dict = idx.search(q, k=10, filter={"category": "bags", "price": {"lt": 100}, "in_stock": True})
        by_text = idx.search(q, k=10, filter='category = "bags" and price < 100 and in_stock')
        assert [h.key for h in by_dict] == [h.key for h in by_text] == ["sku-3"]
        assert [h.key for h in idx.search(q, k=10, filter={"price": {"gte": 100}})] == ["sku-2"]
        with pytest.raises(SimsearchError, match="colour"):
            idx.search(q, k=3, filter="colour = 'red'")
        with pytest.raises(SimsearchError, match="column"):
            idx.search(q, k=3, filter="price < ")


def test_rerun_applies_attribute_changes_without_embedding_and_reembeds_changed_photos(shop):
    build(shop).close()
    rows = [dict(r) for r in shop["rows"]]
    rows[1]["price"] = "99"  # attribute only
    write_catalog(shop["catalog"], rows)
    shop["engine"].images = 0
    with build(shop) as idx:
        assert shop["engine"].images == 0 and idx.report.attributes_changed == 1 and idx.report.embedded == 0
        assert idx.item(idx.id_for_key("sku-2")).attributes["price"] == 99.0
    write_image(shop["photos"] / "p3.jpg", seed=40)  # one photo of sku-3 changes
    bump_mtime(shop["photos"] / "p3.jpg")
    with build(shop) as idx:
        assert shop["engine"].images == 1 and idx.report.updated == 1
        assert len(idx.item(idx.id_for_key("sku-3")).photos) == 2
    write_catalog(shop["catalog"], rows[:2])  # two items vanish: removed only with --prune
    with build(shop) as idx:
        assert len(idx) == 4 and idx.report.missing == 2
    with build(shop, prune=True) as idx:
        assert len(idx) == 2 and idx.id_for_key("sku-4") is None
    assert verify_index(shop["out"])[0] == []


def test_missing_photos_are_skipped_and_reported_not_fatal(shop):
    rows = [dict(r) for r in shop["rows"]] + [
        {"key": "sku-5", "image": "photos/gone.jpg", "category": "bags", "price": "1", "in_stock": "true"}
    ]
    rows[0]["image"] += "|photos/also-gone.jpg"
    write_catalog(shop["catalog"], rows)
    with build(shop) as idx:
        assert len(idx) == 4 and idx.id_for_key("sku-5") is None
        reasons = dict(idx.report.skipped)
        assert any("gone.jpg" in p for p in reasons) and len(idx.item(idx.id_for_key("sku-1")).photos) == 2
    with pytest.raises(SimsearchError, match="strict"):
        build(shop, strict=True)


def test_mean_pooling_scores_items_by_their_normalised_mean(tmp_path, make_color_index, tiny_backbone):
    from conftest import ColorEngine

    photos = tmp_path / "c"
    write_solid(photos / "red.png", (255, 0, 0))
    write_solid(photos / "green.png", (0, 255, 0))
    write_solid(photos / "blue.png", (0, 0, 255))
    write_solid(photos / "redish.png", (200, 40, 0))
    rows = [
        {"key": "mixed", "image": ["c/red.png", "c/green.png"]},
        {"key": "blue", "image": "c/blue.png"},
        {"key": "redish", "image": "c/redish.png"},
    ]
    cat = tmp_path / "items.jsonl"
    cat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    q = np.zeros(256, np.float32)
    q[0] = 1
    found = {}
    for pooling in ("max", "mean"):
        engine = ColorEngine(tiny_backbone)
        out = tmp_path / pooling
        simsearch.build_index(catalog=cat, out=out, engine=engine, backbone=tiny_backbone, item_pooling=pooling)
        with simsearch.open_index(out) as idx:
            found[pooling] = [(h.key, round(h.score, 3)) for h in idx.search(q, k=3)]
    assert found["max"][0] == ("mixed", 1.0)  # its red photo
    assert found["mean"][0][0] == "redish" and ("mixed", 0.707) in found["mean"]


def test_a_long_lived_reader_answers_from_memory_exactly_as_from_sqlite(shop, monkeypatch):
    """The snapshot's in-memory views (items of recent hits, the photo map ordered by item) give what SQLite
    gives: the first look-ups go to the database, later ones are answered without it."""
    from simsearch.store import reader

    idx = build(shop)
    snap = idx.snapshot
    ids = [int(i) for i in idx.ids()]
    first = {i: (idx.has_id(i), idx.item_vectors(i), snap.items([i])) for i in ids}
    hits = idx.search_vectors(idx.vectors()[1][:2], k=3)
    for _ in range(reader.MAP_AFTER_LOOKUPS):  # exhaust the look-ups answered from SQLite
        snap.items_of(np.array([0]))
        snap.has_item(ids[0])
    assert snap._photo_map is not None

    def no_sql(*a, **k):
        raise AssertionError("answered from SQLite")

    monkeypatch.setattr(snap.meta, "items", no_sql)  # every item was read above
    monkeypatch.setattr(snap.meta, "has_item", no_sql)
    monkeypatch.setattr(snap.meta, "items_of_photos", no_sql)
    for i in ids:
        has, vecs, items = first[i]
        assert idx.has_id(i) == has
        np.testing.assert_array_equal(idx.item_vectors(i), vecs)
        assert snap.items([i]) == items
    assert not idx.has_id(max(ids) + 1)
    assert idx.search_vectors(idx.vectors()[1][:2], k=3) == hits
    assert sorted(snap.photos_of(ids[:2]).tolist()) == snap.photos_of(ids[:2]).tolist()
    assert len(snap.photos_of(ids)) == idx.manifest.count  # every photo, each once


def test_photo_to_item_map_from_memory_matches_sqlite(shop, built_index):
    """A catalogue (several photos per item) and a folder index (photo i is item i, mapped without a search)
    map photo ids to items from memory exactly as SQLite does; unknown photo ids map to -1."""
    from simsearch.store import reader

    for idx in (build(shop), built_index):
        snap = reader.Snapshot.open(idx.path)
        n = int(snap.faiss.ntotal)
        probe = np.array([-1, 0, n - 1, n, n + 7, 2**40, *range(n)], dtype=np.int64)
        from_sql = snap.items_of(probe)  # the first look-ups: SQLite
        snap.photo_map()
        from_memory = snap.items_of(probe)
        np.testing.assert_array_equal(from_memory, from_sql)
        assert from_memory[0] == from_memory[3] == from_memory[4] == from_memory[5] == -1
        assert snap._identity == (idx is built_index)  # the folder index takes the identity path
        ids = [int(i) for i in idx.ids()]
        vectors = snap.item_vectors([*ids, -1, max(ids) + 1])
        assert sorted(vectors) == ids
        for item in snap.meta.items(ids):  # each item's photos, as SQLite lists them
            expected = np.vstack([snap.faiss.reconstruct(p.id) for p in item.photos])
            np.testing.assert_array_equal(vectors[item.id], expected)
            np.testing.assert_array_equal(snap.item_vectors([item.id])[item.id], expected)
            assert snap.has_item(item.id) and sorted(snap.photos_of([item.id]).tolist()) == [p.id for p in item.photos]
        assert not snap.has_item(-1) and not snap.has_item(max(ids) + 1) and snap.item_vectors([]) == {}
        snap.close()


def test_items_read_by_a_snapshot_are_kept_up_to_the_cache_size(built_index, monkeypatch):
    from simsearch.store import reader

    monkeypatch.setattr(reader, "ITEM_CACHE", 3)
    snap = reader.Snapshot.open(built_index.path)
    ids = [int(i) for i in built_index.ids()]
    truth = {it.id: it for it in snap.meta.items(ids)}
    for wanted in ([ids[0], ids[1]], [ids[2], 10**9, ids[0], ids[0]], ids[::-1], [ids[3], ids[1]], []):
        got = snap.items(wanted)
        assert [(it.id, it.key, it.photo_paths) for it in got] == [
            (truth[i].id, truth[i].key, truth[i].photo_paths) for i in wanted if i in truth
        ]
        assert len(snap._items) <= 3
    snap.close()
