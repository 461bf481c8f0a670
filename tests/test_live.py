"""Live writes: put, patch, delete through the journal, searched beside the generation, then compacted."""

from __future__ import annotations

import pytest
from conftest import color_vector, write_solid

import simsearch
from simsearch.compact import compact_index
from simsearch.index import verify_index


def keys(hits):
    return [h.key for h in hits]


def test_put_is_searchable_at_once_and_survives_compaction(colors, tmp_path):
    img = write_solid(tmp_path / "new" / "teal.png", (0, 128, 128))
    item = colors.put("sku-teal", [img], {"label": "teal", "price": 12.5, "tags": ["sale"]})
    assert item >= 1 << 40  # live ids come from their own range
    hits = colors.search(color_vector((0, 128, 128)), k=3)
    assert hits[0].key == "sku-teal" and hits[0].score > 0.999
    assert hits[0].attributes == {"label": "teal", "price": 12.5, "tags": ["sale"]}
    # a filter on an attribute only live items have
    assert keys(colors.search(color_vector((255, 0, 0)), k=5, filter={"label": "teal"})) == ["sku-teal"]
    r = compact_index(colors.path)
    assert r["folded"] == 1
    assert verify_index(colors.path)[0] == []
    with simsearch.open_index(colors.path) as reopened:
        assert reopened.manifest.delta_seq >= 1 and reopened.pending_writes() == 0
        assert reopened.id_for_key("sku-teal") == item
        assert reopened.manifest.attributes["price"] == "float"
        assert reopened.item(item).attributes["tags"] == ["sale"]
    # the open index switches to the compacted generation by itself and finds the item once
    colors.follow = True
    colors._checked = 0.0
    hits = colors.search(color_vector((0, 128, 128)), k=20)
    assert keys(hits).count("sku-teal") == 1


def test_patch_changes_attributes_without_embedding_and_delete_hides(colors):
    red = colors.id_for_key("red/r1.png")
    colors.patch("red/r1.png", {"label": "crimson", "in_stock": False})
    hits = colors.search(color_vector((255, 0, 0)), k=9, exclude_query=False)
    top = next(h for h in hits if h.key == "red/r1.png")
    assert top.id == red and top.label == "crimson" and top.attributes["in_stock"] is False
    assert keys(hits).count("red/r1.png") == 1
    assert "red/r1.png" in keys(colors.search(color_vector((255, 0, 0)), k=9, filter={"label": "crimson"}))
    assert "red/r1.png" not in keys(colors.search(color_vector((255, 0, 0)), k=9, filter={"label": "red"}))
    assert colors.delete(["red/r2.png", "red/r1.png"]) == 2
    left = keys(colors.search(color_vector((255, 0, 0)), k=9))
    assert "red/r1.png" not in left and "red/r2.png" not in left and len(left) == 7
    with pytest.raises(KeyError):
        colors.patch("red/r1.png", {"label": "x"})  # deleted
    compact_index(colors.path)
    assert verify_index(colors.path)[0] == []
    with simsearch.open_index(colors.path) as idx:
        assert idx.id_for_key("red/r1.png") is None and len(idx) == 7


def test_bad_writes_are_refused_and_change_nothing(colors):
    with pytest.raises(simsearch.SimsearchError, match="holds str values"):
        colors.patch("red/r1.png", {"label": 3})
    with pytest.raises(simsearch.SimsearchError, match="reserved"):
        colors.patch("red/r1.png", {"key": "x"})
    with pytest.raises(simsearch.SimsearchError, match="surrogate"):
        colors.patch("red/r1.png", {"label": "\ud800"})
    with pytest.raises(KeyError):
        colors.delete(["red/r1.png", "no-such-key"])
    assert colors.pending_writes() == 0
    assert len(colors.search(color_vector((255, 0, 0)), k=9)) == 9  # nothing was written
